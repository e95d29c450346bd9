"""Branch-based sampling: one shared trunk per prompt up to the branch point, then K branches.

Returns trajectories; writes nothing. Steps before the branch point are not trained in this
stage, so only x_b ... x_T and the log-probs of steps b ... T-1 are kept.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from b2diffurl.ddim import ddim_step_with_log_prob
from b2diffurl.guidance import guided_noise


@torch.no_grad()
def sample_branches(
    unet,
    scheduler,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    *,
    num_steps: int,
    branch_point: int,
    num_branches: int,
    eta: float,
    guidance_scale: float,
    latent_shape: tuple[int, int, int],
    generator: torch.Generator,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Sample B groups of K branches that share x_0 ... x_b.

    prompt_embeds [B, L, D]; negative_embeds [1, L, D]. Noise is drawn on `generator`'s device
    (use a CPU generator for results that do not depend on the GPU). Branches are group-major:
    row g*K + k is branch k of group g. Returns
      latents   [B*K, s+1, C, H, W]  x_b ... x_T, in `dtype`
      log_probs [B*K, s]             log π(x_{i+1} | x_i), fp32, element-averaged
      timesteps [B*K, s]             τ_b ... τ_{T-1}
      group     [B*K]                g, branch [B*K] k
    """
    device = prompt_embeds.device
    num_groups = prompt_embeds.shape[0]
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    assert len(timesteps) == num_steps and 0 <= branch_point < num_steps

    def draw(shape):
        return torch.randn(shape, generator=generator, device=generator.device).to(device, dtype)

    x = draw((num_groups, *latent_shape)) * scheduler.init_noise_sigma
    bar = tqdm(range(num_steps), desc="denoise", leave=False, disable=not progress)
    latents, log_probs = [], []
    for i in bar:
        if i == branch_point:  # fork: every prefix is copied K times, bit for bit
            x = x.repeat_interleave(num_branches, dim=0)
            prompt_embeds = prompt_embeds.repeat_interleave(num_branches, dim=0)
            latents.append(x)
        t = timesteps[i]
        eps = guided_noise(unet, x, t, prompt_embeds, negative_embeds, guidance_scale, chunk_size)
        x, log_prob = ddim_step_with_log_prob(scheduler, eps, t, x, eta, generator=generator)
        if i >= branch_point:
            latents.append(x)
            log_probs.append(log_prob)

    num_samples = num_groups * num_branches
    split_step = num_steps - branch_point
    return {
        "latents": torch.stack(latents, dim=1),
        "log_probs": torch.stack(log_probs, dim=1),
        "timesteps": timesteps[branch_point:].to(torch.long).expand(num_samples, split_step).clone(),
        "group": torch.arange(num_groups, device=device).repeat_interleave(num_branches),
        "branch": torch.arange(num_branches, device=device).repeat(num_groups),
    }
