"""Print the stage plan of a config, or one field of it (run_process.sh reads these).

    python -m b2diffurl.plan --config config/tiny.py             # table of all stages
    python -m b2diffurl.plan --config config/tiny.py layout       # "num_stages log_dir run_dir"
"""

import sys

from b2diffurl import cli
from b2diffurl.paths import run_dir
from b2diffurl.stages import plan_stage


def main(config, field: str | None = None) -> None:
    if field == "layout":
        print(config.stages.num_stages, f"{config.log_dir}/{config.exp_name}", run_dir(config))
    elif field is None:
        print("stage split_step branch_point seed resume_from")
        for stage in range(config.stages.num_stages):
            plan = plan_stage(config, stage)
            print(plan.stage, plan.split_step, plan.branch_point, plan.seed, plan.resume_from or "-")
    else:
        raise cli.UserError(f"unknown argument {field!r}: the only one is layout")


if __name__ == "__main__":
    cli.main(main, positional=True)
