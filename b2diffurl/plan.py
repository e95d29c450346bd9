"""Print the stage plan of a config, or one field of it (run_process.sh reads these).

    python -m b2diffurl.plan --config config/tiny.py             # table of all stages
    python -m b2diffurl.plan --config config/tiny.py layout       # "first_stage num_stages eval_every log_dir run_dir", then the table

first_stage is the first stage without a completion marker: where a rerun continues.
"""


from b2diffurl import cli
from b2diffurl.paths import run_dir
from b2diffurl.resume import first_incomplete_stage
from b2diffurl.stages import plan_stage


def main(config, field: str | None = None) -> None:
    if field not in (None, "layout"):
        raise cli.UserError(f"unknown argument {field!r}: the only one is layout")
    if field == "layout":
        print(first_incomplete_stage(config), config.stages.num_stages, config.eval.every,
              f"{config.log_dir}/{config.exp_name}", run_dir(config))
    print("stage split_step branch_point seed complete resume_from")
    for stage in range(config.stages.num_stages):
        plan = plan_stage(config, stage)
        print(plan.stage, plan.split_step, plan.branch_point, plan.seed, "yes" if plan.paths.is_complete() else "no",
              plan.resume_from or "-")


if __name__ == "__main__":
    cli.main(main, positional=True)
