"""Which samples are trained: best and worst branch of each group, or all (the DDPO baseline)."""

from __future__ import annotations

import numpy as np


def select_best_worst(group_id: np.ndarray, advantages: np.ndarray, pos_threshold: float,
                      neg_threshold: float) -> np.ndarray:
    """Indices (sorted) of, per group, the branch with the highest A if A >= ρ⁺ and the branch
    with the lowest A if A < ρ⁻. A group gives 0, 1 or 2 samples; non-finite A are ignored."""
    if pos_threshold < neg_threshold:  # a branch could be selected as both best and worst
        raise ValueError(f"pos_threshold {pos_threshold} < neg_threshold {neg_threshold}")
    chosen = []
    for group in np.unique(group_id):
        members = np.flatnonzero((group_id == group) & np.isfinite(advantages))
        if members.size == 0:
            continue
        best = members[np.argmax(advantages[members])]
        worst = members[np.argmin(advantages[members])]
        if advantages[best] >= pos_threshold:
            chosen.append(best)
        if advantages[worst] < neg_threshold:
            chosen.append(worst)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def select_all(group_id: np.ndarray, advantages: np.ndarray, pos_threshold: float,
               neg_threshold: float) -> np.ndarray:
    """Every sample with a finite advantage (DDPO-style baseline; thresholds unused)."""
    return np.flatnonzero(np.isfinite(advantages)).astype(np.int64)


CONTRAST = ("contrast_groups", "contrast_both", "contrast_positive_only", "contrast_negative_only", "contrast_neither")


def contrast_census(group_id: np.ndarray, rewards: np.ndarray, advantages: np.ndarray,
                    chosen: np.ndarray) -> dict[str, int]:
    """How the selection used the groups whose branches' rewards differ (a contrast to learn
    from): how many there are, and in how many it trained both sides, only the positive side
    (A > 0), only the negative side, or neither. With a 0/1 reward and a prompt whose success
    rate p is at most 0.2 a failure's A = -sqrt(p / (1 - p)) is >= -0.5, so only successes
    are selected from its groups."""
    picked = np.zeros(len(group_id), dtype=bool)
    picked[chosen] = True
    counts = dict.fromkeys(CONTRAST, 0)
    for group in np.unique(group_id):
        members = np.flatnonzero((group_id == group) & np.isfinite(rewards))
        if members.size == 0 or rewards[members].max() == rewards[members].min():
            continue
        counts["contrast_groups"] += 1
        positive = bool((picked[members] & (advantages[members] > 0)).any())
        negative = bool((picked[members] & ~(advantages[members] > 0)).any())
        side = {(True, True): "both", (True, False): "positive_only", (False, True): "negative_only",
                (False, False): "neither"}[positive, negative]
        counts[f"contrast_{side}"] += 1
    return counts


SELECTIONS = {"best_worst": select_best_worst, "all": select_all}
