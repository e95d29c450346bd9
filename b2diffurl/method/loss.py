"""The clipped policy-gradient (PPO-clip) objective over DDIM log-probabilities, and diagnostics."""

from __future__ import annotations

import torch


def weighted_advantages(advantages: torch.Tensor, adv_clip_max: float, pos_weight: float,
                        neg_weight: float) -> torch.Tensor:
    """a = clip(A, -adv_clip_max, adv_clip_max) · (β⁺ if A > 0 else β⁻)."""
    weights = torch.where(advantages > 0, pos_weight, neg_weight).to(advantages.dtype)
    return advantages.clamp(-adv_clip_max, adv_clip_max) * weights


def clipped_pg_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                    clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = mean(max(-a·ratio, -a·clip(ratio, 1-ε, 1+ε))), ratio = exp(log π - log π_old).

    All inputs [N] (advantages already weighted). Returns the loss and detached diagnostics:
    approx_kl = ½·mean((log π - log π_old)²) and clipfrac = fraction of |ratio - 1| > ε.
    """
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    info = {
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
        "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
    }
    return loss, info
