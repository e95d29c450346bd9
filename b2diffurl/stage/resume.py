"""Continuing a run: which stage comes next, and refusing a config that would not continue it.

Torch-free, so that run_process.sh can ask it cheaply through `python -m b2diffurl.stage.plan`.
"""

from __future__ import annotations

import os

from b2diffurl.files import atomic_write_json, read_json
from b2diffurl.paths import RUN_CONFIG_FILE, StagePaths, run_dir

# Settings that define a run: changing one midway would mix incompatible stages.
CONTINUATION_KEYS = (
    "pretrained.model", "pretrained.revision", "sample.num_steps", "sample.eta", "sample.guidance_scale",
    "num_branches", "seed", "lora.rank", "lora.alpha", "lora.target_modules", "stages.num_stages",
    "stages.split_step_min", "stages.split_step_max", "reward.name", "reward.components", "reward.model",
    "reward.aesthetic_weights", "reward.shuffle", "eval.selection",
)


def setting(config, key: str):
    """config's value at a dotted key ("train.learning_rate"); a tuple as a list."""
    value = config
    for part in key.split("."):
        value = value[part]
    return list(value) if isinstance(value, (tuple, list)) else value


def first_incomplete_stage(config) -> int:
    """The first stage without a completion marker (num_stages when all are done)."""
    stage = 0
    while stage < config.stages.num_stages and StagePaths.of(config, stage).is_complete():
        stage += 1
    return stage


def check_continuation(config, record: bool = True) -> None:
    """Refuse (UserError) a config whose run-defining settings differ from those the run was
    made with; with `record`, write them down on the run's first use."""
    from b2diffurl.errors import UserError

    path = os.path.join(run_dir(config), RUN_CONFIG_FILE)
    current = {key: setting(config, key) for key in CONTINUATION_KEYS}
    if not os.path.exists(path):
        if record:
            atomic_write_json(current, path)
        return
    recorded = read_json(path)
    changed = [key for key in CONTINUATION_KEYS if key in recorded and recorded[key] != current[key]]
    if changed:
        key = changed[0]
        raise UserError(
            f"config.{key} = {current[key]!r} but run {run_dir(config)} was made with {recorded[key]!r} "
            f"({len(changed)} such setting(s); see {path}); continue with the same settings or set a new exp_name"
        )
