"""The single classifier-free-guided noise prediction, used for sampling and for training."""

from __future__ import annotations

import torch


def guided_noise(
    unet,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    guidance_scale: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """ε̂ = ε(x, t, ∅) + w·(ε(x, t, c) − ε(x, t, ∅)).

    latents [N, C, H, W]; timesteps long [N] or scalar; prompt_embeds [N, L, D];
    negative_embeds [N, L, D] or [1, L, D] (the empty prompt). The conditional and
    unconditional halves run in one UNet call, at most `chunk_size` latents (2·chunk_size rows)
    at a time. Returns ε̂ [N, C, H, W] in the UNet's output dtype.
    """
    n = latents.shape[0]
    timesteps = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(n)
    negative_embeds = negative_embeds.expand(n, -1, -1)
    chunk_size = chunk_size or n
    outputs = []
    for start in range(0, n, chunk_size):
        rows = slice(start, start + chunk_size)
        x = latents[rows]
        eps_uncond, eps_cond = unet(
            torch.cat([x, x]),
            torch.cat([timesteps[rows], timesteps[rows]]),
            encoder_hidden_states=torch.cat([negative_embeds[rows], prompt_embeds[rows]]),
        ).sample.chunk(2)
        outputs.append(eps_uncond + guidance_scale * (eps_cond - eps_uncond))
    return torch.cat(outputs)
