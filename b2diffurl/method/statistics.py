"""Per-prompt score history, and the normalisation it gives.

A = (r - mean_p) / (std_p + 1e-8), with mean and sample standard deviation (n - 1) over prompt
p's scores pooled from this stage and the H stages before it (stages stage-H ... stage: up to
H + 1 in all), as the authors' release computes them. A prompt with a single pooled score has
no sample standard deviation: its advantage is NaN, so selection never picks it (the release
gets NaN there too). The state is a plain dict, saved as JSON by the caller.
Idea adapted from ddpo-pytorch's per-prompt stat tracker, with a window counted in stages.
"""

from __future__ import annotations

import math

import numpy as np

EPSILON = 1e-8


def new_history(history_cnt: int) -> dict:
    """An empty history that pools each stage with its `history_cnt` (H) predecessors."""
    return {"history_cnt": history_cnt, "scores": {}}


def record_stage(history: dict, stage: int, prompts: list[str], scores: list[float]) -> dict:
    """A new history with this stage's finite scores (replacing any earlier record of the
    same stage, so a redone stage does not count twice) and stages before stage - H dropped."""
    keep_from = stage - history["history_cnt"]
    scores_by_prompt: dict[str, dict[str, list[float]]] = {}
    for prompt, per_stage in history["scores"].items():
        kept = {k: v for k, v in per_stage.items() if keep_from <= int(k) < stage}
        if kept:
            scores_by_prompt[prompt] = kept
    for prompt, score in zip(prompts, scores):
        if math.isfinite(score):
            scores_by_prompt.setdefault(prompt, {}).setdefault(str(stage), []).append(float(score))
    return {"history_cnt": history["history_cnt"], "scores": scores_by_prompt}


def normalise(history: dict, prompts: list[str], scores: list[float]) -> np.ndarray:
    """Advantages [N] of `scores` against each prompt's pooled history (NaN for non-finite scores)."""
    advantages = np.full(len(scores), np.nan)
    pooled = {p: np.concatenate([np.asarray(v) for v in history["scores"].get(p, {}).values()] or [np.zeros(0)])
              for p in set(prompts)}
    for i, (prompt, score) in enumerate(zip(prompts, scores)):
        pool = pooled[prompt]
        if math.isfinite(score) and pool.size > 1:
            advantages[i] = (score - pool.mean()) / (pool.std(ddof=1) + EPSILON)
    return advantages
