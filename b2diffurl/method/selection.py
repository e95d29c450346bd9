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


SELECTIONS = {"best_worst": select_best_worst, "all": select_all}
