"""Branch-based sampling: one shared trunk per prompt up to the branch point, then K branches.

Returns trajectories; writes nothing. Steps before the branch point are not trained in this
stage, so only x_b ... x_T and the log-probs of steps b ... T-1 are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from b2diffurl.method.ddim import ddim_step, ddim_step_with_log_prob, standard_normal
from b2diffurl.method.guidance import guided_noise


def latent_shape(unet) -> tuple[int, int, int]:
    """(C, H, W) of the latents `unet` denoises."""
    return unet.config.in_channels, unet.config.sample_size, unet.config.sample_size


def sub_seed(seed: int, index: int, wide: bool = False) -> int:
    """The seed of item `index` (a sampling batch, a generated image) of something seeded with
    `seed`, well mixed: nearby seeds and indices give unrelated noise. 32 bits, or 63 if `wide`."""
    sequence = np.random.SeedSequence([seed, index])
    return int(sequence.generate_state(1, np.uint64)[0] >> 1) if wide else int(sequence.generate_state(1)[0])


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
    generator: torch.Generator | list[torch.Generator],
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    with_log_probs: bool = True,
) -> dict[str, torch.Tensor]:
    """Sample B groups of K branches that share x_0 ... x_b.

    prompt_embeds [B, L, D]; negative_embeds [1, L, D]. Noise is drawn on `generator`'s device
    (use a CPU generator for results that do not depend on the GPU); a list of B generators
    draws each group's noise from its own (only without branches: K = 1). `with_log_probs=False`
    (generation) allows eta = 0 and returns no log_probs. Branches are group-major:
    row g*K + k is branch k of group g. Returns
      latents   [B*K, s+1, C, H, W]  x_b ... x_T, in `dtype`
      log_probs [B*K, s]             log π(x_{i+1} | x_i), fp32, element-averaged
      timesteps [B*K, s]             τ_b ... τ_{T-1}
      group_id  [B*K]                g, branch_id [B*K] k (the sample file's names)
    """
    device = prompt_embeds.device
    num_groups = prompt_embeds.shape[0]
    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    assert len(timesteps) == num_steps and 0 <= branch_point < num_steps

    def draw(shape):
        return standard_normal(shape, generator, device).to(dtype)

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
        if with_log_probs:
            x, log_prob = ddim_step_with_log_prob(scheduler, eps, t, x, eta, generator=generator)
        else:
            x, log_prob = ddim_step(scheduler, eps, t, x, eta, generator=generator), None
        if i >= branch_point:
            latents.append(x)
            log_probs.append(log_prob)

    num_samples = num_groups * num_branches
    split_step = num_steps - branch_point
    out = {
        "latents": torch.stack(latents, dim=1),
        "timesteps": timesteps[branch_point:].to(torch.long).expand(num_samples, split_step).clone(),
        "group_id": torch.arange(num_groups, device=device).repeat_interleave(num_branches),
        "branch_id": torch.arange(num_branches, device=device).repeat(num_groups),
    }
    if with_log_probs:
        out["log_probs"] = torch.stack(log_probs, dim=1)
    return out


@torch.no_grad()
def decode_images(vae, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """uint8 images [N, H, W, 3] from final latents [N, C, h, w], decoded `chunk_size` at a time."""
    images = []
    for chunk in latents.split(chunk_size or len(latents)):
        decoded = vae.decode(chunk.to(vae.dtype) / vae.config.scaling_factor).sample
        decoded = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        images.append(decoded.permute(0, 2, 3, 1).cpu())
    return torch.cat(images)
