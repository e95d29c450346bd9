"""Experiment tracking through accelerate's trackers: TensorBoard, Weights & Biases, both, or none.

`config.report_to` names them: "tensorboard" (the default: used where tensorboard is installed,
skipped where it is not), "wandb", "tensorboard,wandb", "all" or "none". TensorBoard writes
{run}/tensorboard/{exp_name}; W&B writes {run}/wandb and logs the whole run folder into one W&B
run, whose id is kept in {run}/tracking.json: each script of each stage, the evaluations and a
continued run all append to it (set WANDB_MODE=offline to log without an account and
`wandb sync` later). Every value is logged against the stage (TensorBoard's step; W&B's
`progress/stage`) and the images sampled so far (`progress/images_sampled`, W&B's x-axis).
Only the main process logs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid

import numpy as np

from b2diffurl.errors import UserError

log = logging.getLogger(__name__)
TRACKERS = ("tensorboard", "wandb")
TRACKING_FILE = "tracking.json"  # run level: the W&B run id that every script logs into


def requested_trackers(config) -> list[str]:
    """The trackers config.report_to names; UserError for a name that is not one."""
    value = config.report_to.strip().lower()
    if value in ("", "none"):
        return []
    if value == "all":
        return list(TRACKERS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise UserError(f"config.report_to = {config.report_to!r}: {unknown[0]!r} is not a tracker; use "
                        f"{', '.join(TRACKERS)}, a comma-separated list of them, 'all' or 'none'")
    return names


def check_trackers(config) -> None:
    """Refuse (UserError) W&B asked for without wandb installed; TensorBoard is optional."""
    if "wandb" in requested_trackers(config) and importlib.util.find_spec("wandb") is None:
        raise UserError("config.report_to asks for wandb, which is not installed: pip install wandb "
                        "(requirements-extras.txt), or set --config.report_to=tensorboard")


def trackers(config) -> list[str]:
    """The trackers to log to: those requested that are installed."""
    return [name for name in requested_trackers(config) if importlib.util.find_spec(name) is not None]


def images_sampled(run: str, through_stage: int) -> int:
    """Images sampled by stages 0..through_stage, from their metrics' sample events."""
    from b2diffurl.logs import read_run_metrics

    latest = {}  # a redone stage's last sample event counts
    for record in read_run_metrics(run):
        if record.get("event") == "sample" and int(record["stage"]) <= through_stage:
            latest[int(record["stage"])] = int(record["num_samples"])
    return sum(latest.values())


def _wandb_state(run: str) -> dict:
    """{"wandb_run_id", "wandb_step"} of the run folder, kept in {run}/tracking.json (made on first use)."""
    from b2diffurl.files import atomic_write_json, read_json

    path = os.path.join(run, TRACKING_FILE)
    if os.path.exists(path):
        return read_json(path)
    state = {"wandb_run_id": uuid.uuid4().hex[:8], "wandb_step": 0}
    atomic_write_json(state, path)
    return state


def track(accelerator, config, stage: int, scalars: dict, images: dict | None = None) -> None:
    """Log stage `stage`'s scalars (name -> number) and images (name -> HWC uint8) to every
    tracker of the accelerator, with the stage and the images sampled so far; main process only."""
    if not accelerator.log_with or not accelerator.is_main_process:
        return
    from b2diffurl.paths import run_dir

    run = run_dir(config)
    init_kwargs, wandb_state = {}, None
    if "wandb" in trackers(config):
        wandb_state = _wandb_state(run)
        init_kwargs["wandb"] = {"id": wandb_state["wandb_run_id"], "resume": "allow", "dir": run,
                                "name": config.exp_name, "settings": {"quiet": True}}  # no summary per script
    accelerator.init_trackers(config.exp_name, init_kwargs=init_kwargs)
    values = {name: float(value) for name, value in scalars.items()}
    values.update({"progress/stage": stage, "progress/images_sampled": images_sampled(run, stage)})
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            _log_wandb(tracker.tracker, config, values, images or {}, wandb_state["wandb_step"])
            _next_wandb_step(run, wandb_state)
        elif tracker.name == "tensorboard":
            tracker.log(values, step=stage)
            for tag, image in (images or {}).items():
                tracker.tracker.add_image(tag, np.asarray(image), stage, dataformats="HWC")
    accelerator.end_training()


def _next_wandb_step(run: str, state: dict) -> None:
    """Count the W&B record just logged: each script's resume of the run logs at a higher step,
    online (where W&B would know the step) and offline (where each start begins at 0)."""
    from b2diffurl.files import atomic_write_json

    atomic_write_json({**state, "wandb_step": state["wandb_step"] + 1}, os.path.join(run, TRACKING_FILE))


def _log_wandb(run, config, values: dict, images: dict, step: int) -> None:
    import wandb

    settings = config.to_dict()
    settings.pop("stage", None)  # changes from script to script
    run.config.update(settings, allow_val_change=True)
    run.define_metric("progress/images_sampled")
    run.define_metric("*", step_metric="progress/images_sampled")
    run.log({**values, **{tag: wandb.Image(np.asarray(image)) for tag, image in images.items()}}, step=step)

