"""Branch-based sampling: one shared trunk per prompt up to the branch point, then K branches.

Returns trajectories; writes nothing. Steps before the branch point are not trained in this
stage, so only x_b ... x_T and the log-probs of steps b ... T-1 are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from b2diffurl.ddim import ddim_step, ddim_step_with_log_prob, standard_normal
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
      group     [B*K]                g, branch [B*K] k
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
        "group": torch.arange(num_groups, device=device).repeat_interleave(num_branches),
        "branch": torch.arange(num_branches, device=device).repeat(num_groups),
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


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a generation seeded with `seed` (well mixed: nearby seeds
    and indices give unrelated noise)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def generate_images(pipe, prompts: list[str], num_images_per_prompt: int, *, num_steps: int, eta: float,
                    guidance_scale: float, seed: int, batch_size: int, chunk_size: int | None = None,
                    decode_chunk_size: int | None = None, progress: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Images for every prompt from the pipeline's current UNet (LoRA included), no branching.

    Returns uint8 images [P·n, H, W, 3] and their prompts (each prompt n times in a row). Image
    i draws all its noise from its own generator, seeded by image_seed(seed, i), so it does not
    depend on the batch size: two models (or two runs with different B·K) evaluated on the same
    prompts with the same seed get the same noise for every image and compare image by image.
    `StableDiffusionPipeline` called with the same list of generators gives the same images
    (exactly so with eta = 0).
    """
    from b2diffurl.prompts import encode_prompts

    expanded = [p for p in prompts for _ in range(num_images_per_prompt)]
    unet = pipe.unet
    latent_shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    images = []
    starts = range(0, len(expanded), batch_size)
    for start in tqdm(starts, desc="generate", leave=False, disable=not progress or len(starts) < 2):
        batch = expanded[start : start + batch_size]
        embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, batch)
        generator = [torch.Generator().manual_seed(image_seed(seed, start + i)) for i in range(len(batch))]
        out = sample_branches(unet, pipe.scheduler, embeds, negative, num_steps=num_steps, branch_point=0,
                              num_branches=1, eta=eta, guidance_scale=guidance_scale, latent_shape=latent_shape,
                              generator=generator, chunk_size=chunk_size, dtype=unet.dtype, with_log_probs=False)
        images.append(decode_images(pipe.vae, out["latents"][:, -1], decode_chunk_size))
    return torch.cat(images), expanded


def generate_with_config(pipe, accelerator, config, prompts: list[str], num_images_per_prompt: int, *, seed: int,
                         eta: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """generate_images with a run's sampling settings (T, w, eta unless given, B·K latents a batch,
    the UNet and decode chunk sizes, the LoRA merged if sample.merge_lora) under the accelerator's
    autocast: what generate and evaluate use."""
    from b2diffurl.pipeline import lora_merged

    with accelerator.autocast(), lora_merged(pipe.unet, config.sample.merge_lora):
        return generate_images(
            pipe, prompts, num_images_per_prompt, num_steps=config.sample.num_steps,
            eta=config.sample.eta if eta is None else eta, guidance_scale=config.sample.guidance_scale, seed=seed,
            batch_size=config.sample.batch_size * config.num_branches, chunk_size=config.sample.unet_chunk_size,
            decode_chunk_size=config.sample.decode_chunk_size, progress=True,
        )
