"""Backward progressive curriculum: stage index -> split step, branch point, seed, resume.

Pure and torch-free, so that run_process.sh can ask it cheaply (`python -m b2diffurl.plan`).
"""

from __future__ import annotations

import dataclasses

from b2diffurl.paths import StagePaths


def split_step_for_stage(stage: int, num_stages: int, split_step_min: int, split_step_max: int) -> int:
    """s_k = s_min + floor(k * (s_max - s_min + 1) / N): grows from s_min towards s_max."""
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in 0..{num_stages - 1}, got {stage}")
    if not 1 <= split_step_min <= split_step_max:
        raise ValueError(f"need 1 <= split_step_min <= split_step_max, got {split_step_min}, {split_step_max}")
    return split_step_min + (stage * (split_step_max - split_step_min + 1)) // num_stages


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Everything a script derives from the stage index."""

    stage: int
    split_step: int  # s: steps T-s ... T-1 are trained
    branch_point: int  # b = T - s: the step index where trajectories fork
    seed: int  # seed + stage
    paths: StagePaths  # this stage's files
    resume_from: str | None  # LoRA checkpoint folder to start from; None: a new LoRA


def plan_stage(config, stage: int | None = None) -> StagePlan:
    """The plan of `stage` (default `config.stage`) of the run `config` describes."""
    stage = config.stage if stage is None else stage
    num_steps = config.sample.num_steps
    curriculum = config.stages
    if config.split_step > 0:
        split_step = config.split_step
    else:
        split_step = split_step_for_stage(
            stage, curriculum.num_stages, curriculum.split_step_min, curriculum.split_step_max
        )
    if not 1 <= split_step <= num_steps:
        raise ValueError(f"split_step must be in 1..sample.num_steps={num_steps}, got {split_step}")
    if stage > 0:
        resume_from = StagePaths.of(config, stage - 1).checkpoint
    else:
        resume_from = config.resume_from or None
    return StagePlan(
        stage=stage,
        split_step=split_step,
        branch_point=num_steps - split_step,
        seed=config.seed + stage,
        paths=StagePaths.of(config, stage),
        resume_from=resume_from,
    )
