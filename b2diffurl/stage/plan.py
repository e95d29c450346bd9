"""The stage plan: everything a stage's scripts derive from the stage index, and the command
that prints it for run_process.sh.

    python -m b2diffurl.stage.plan --config config/tiny.py           # the table of all stages
    python -m b2diffurl.stage.plan --config config/tiny.py layout    # the run's layout, then the table

`layout` prints one `name=value` line each for first_stage (the first stage without a
completion marker: where a rerun continues), num_stages, eval_every, log_dir and run_dir, then
an empty line. Torch-free, so that run_process.sh asks it cheaply.
"""

from __future__ import annotations

import dataclasses

from b2diffurl.errors import UserError
from b2diffurl.method.curriculum import split_step_for_stage
from b2diffurl.paths import StagePaths, run_dir
from b2diffurl.stage.resume import first_incomplete_stage


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


def layout(config) -> dict:
    """What run_process.sh needs to know of a run, by name."""
    return {"first_stage": first_incomplete_stage(config), "num_stages": config.stages.num_stages,
            "eval_every": config.eval.every, "log_dir": f"{config.log_dir}/{config.exp_name}", "run_dir": run_dir(config)}


def print_plan(config, field: str | None = None) -> None:
    """The table of every stage's plan; with field "layout", the run's layout before it."""
    if field not in (None, "layout"):
        raise UserError(f"unknown argument {field!r}: the only one is layout")
    if field == "layout":
        print("".join(f"{name}={value}\n" for name, value in layout(config).items()))
    print("stage split_step branch_point seed complete resume_from")
    for stage in range(config.stages.num_stages):
        plan = plan_stage(config, stage)
        print(plan.stage, plan.split_step, plan.branch_point, plan.seed, "yes" if plan.paths.is_complete() else "no",
              plan.resume_from or "-")
    from b2diffurl.stage.retention import describe_footprint

    print(describe_footprint(config))


if __name__ == "__main__":
    from b2diffurl import cli

    cli.run(cli.flag_values(), print_plan, positional=True)
