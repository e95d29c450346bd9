"""Backward progressive training: which steps stage k trains.

Stage k trains the last s_k of the T denoising steps (the interval [T - s_k, T)), and s_k
grows stage by stage from s_min to s_max: the last steps are trained first, and the trained
interval extends towards the start of the trajectory.
"""


def split_step_for_stage(stage: int, num_stages: int, split_step_min: int, split_step_max: int) -> int:
    """s_k = s_min + floor(k * (s_max - s_min + 1) / N): grows from s_min towards s_max."""
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in 0..{num_stages - 1}, got {stage}")
    if not 1 <= split_step_min <= split_step_max:
        raise ValueError(f"need 1 <= split_step_min <= split_step_max, got {split_step_min}, {split_step_max}")
    return split_step_min + (stage * (split_step_max - split_step_min + 1)) // num_stages
