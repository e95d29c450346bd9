"""The clipped policy-gradient (PPO-clip) objective over DDIM log-probabilities, and diagnostics."""

from __future__ import annotations

import torch


def weighted_advantages(advantages: torch.Tensor, adv_clip_max: float, pos_weight: float,
                        neg_weight: float) -> torch.Tensor:
    """a = clip(A, -adv_clip_max, adv_clip_max) · (β⁺ if A > 0 else β⁻)."""
    weights = torch.where(advantages > 0, pos_weight, neg_weight).to(advantages.dtype)
    return advantages.clamp(-adv_clip_max, adv_clip_max) * weights


def clipped_pg_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                    clip_range: float, weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = mean(max(-a·ratio, -a·clip(ratio, 1-ε, 1+ε))), ratio = exp(log π - log π_old).

    All inputs [N] (advantages already weighted). `weights` [N], if given, multiply each term
    before the mean (the step weighting of `step_weights`; None: the paper's plain mean).
    Returns the loss and detached diagnostics: approx_kl = ½·mean((log π - log π_old)²) and
    clipfrac = fraction of |ratio - 1| > ε.
    """
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    terms = torch.maximum(unclipped, clipped)
    loss = (terms if weights is None else terms * weights).mean()
    info = {
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
        "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
    }
    return loss, info


STEP_WEIGHTINGS = ("uniform", "std")


def step_weights(stds: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-step weights of the loss, [M, s] from each sample's step standard deviations σ_i [M, s].

    "uniform" (the paper): every step 1. "std" (a variant, not the paper's method): step i
    weighted σ_i / mean σ over the sample's interval. The gradient of a step's log-prob is
    (x_{i+1} - μ_i)/σ_i² · ∇μ_i = z/σ_i · ∇μ_i, so the plain mean hands the early, noisy steps
    (σ large), where a scene's layout is set, a small share of the update; weighting by σ_i
    removes that 1/σ_i factor. The weights average 1 over the interval, so the loss keeps its scale.
    """
    if weighting == "uniform":
        return torch.ones_like(stds)
    if weighting == "std":
        return stds / stds.mean(dim=1, keepdim=True)
    raise ValueError(f"step weighting {weighting!r} is not one of {STEP_WEIGHTINGS}")
