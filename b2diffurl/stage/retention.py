"""What a run keeps on disk: the bulky files of each stage, the run's expected footprint, and the
free-space check before a stage starts.

A stage's sample files (`sample.pkl` or its shards, `images.pt` or its shards, `images/`,
`sample_stage.pkl`) are read by that stage's own scripts only: once it is complete, no later
stage, evaluation, report or continuation needs them. `keep_sample_files` says which complete
stages keep them: "all", "last" (the latest complete stage only, to look at: the default) or
"none". Everything else (checkpoints, history.json, metrics.jsonl, best_worst.png, COMPLETE,
evaluation.json) is always kept. Torch-free: the stage plan prints the footprint.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil

from b2diffurl.errors import DiskSpaceError
from b2diffurl.files import existing_folder, free_space, human_size
from b2diffurl.paths import (
    CHECKPOINT_DIR,
    IMAGE_DIR,
    IMAGES_FILE,
    IMAGES_SHARD,
    SAMPLE_FILE,
    SAMPLE_SHARD,
    SELECTED_FILE,
    StagePaths,
    run_dir,
    stage_dirs,
)

log = logging.getLogger(__name__)
KEEP_CHOICES = ("all", "last", "none")
MARGIN = 1.2  # the free space a stage needs, as a multiple of its estimated size


def sample_files(stage_root: str) -> list[str]:
    """The bulky files and folders of a stage that exist."""
    names = [SAMPLE_FILE, IMAGES_FILE, IMAGE_DIR, SELECTED_FILE]
    found = [os.path.join(stage_root, name) for name in names if os.path.exists(os.path.join(stage_root, name))]
    for pattern in (SAMPLE_SHARD, IMAGES_SHARD):
        found += sorted(glob.glob(os.path.join(stage_root, pattern.format(rank="*", num="*"))))
    return found


def size_on_disk(path: str) -> int:
    """Bytes of a file, or of every file below a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def sweep(config, through_stage: int) -> int:
    """Remove the sample files of the complete stages up to `through_stage` that
    config.keep_sample_files does not keep; returns the bytes freed."""
    if config.keep_sample_files == "all":
        return 0
    complete = [(stage, folder) for stage, folder in stage_dirs(run_dir(config))
                if stage <= through_stage and StagePaths(folder).is_complete()]
    if config.keep_sample_files == "last":
        complete = complete[:-1]
    freed = 0
    for _, folder in complete:
        for path in sample_files(folder):
            freed += size_on_disk(path)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if freed:
        log.info("removed %s of sample files of complete stages (keep_sample_files = %r)", human_size(freed),
                 config.keep_sample_files)
    return freed


def _model_config(config, folder: str) -> dict | None:
    """{folder}/config.json of the base model, from its local folder or the HF cache; None if
    neither has it (a tiny model not built yet)."""
    model = config.pretrained.model
    path = os.path.join(model, folder, "config.json")
    if not os.path.isdir(model):
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model, f"{folder}/config.json", revision=config.pretrained.revision,
                                   local_files_only=True)
        except Exception:
            return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stage_footprint(config) -> dict | None:
    """Estimated bytes of one stage's files at the largest split step, by kind; None if the
    model's configs cannot be read. The checkpoint's size is measured on the latest complete
    stage (None before there is one)."""
    unet, vae = _model_config(config, "unet"), _model_config(config, "vae")
    if unet is None or vae is None:
        return None
    latent = unet["in_channels"] * unet["sample_size"] ** 2
    pixels = (unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)) ** 2 * 3
    n = config.sample.batch_size * config.sample.num_batches_per_stage * config.num_branches
    s = config.stages.split_step_max if config.split_step < 0 else config.split_step
    itemsize = 2 if config.mixed_precision in ("fp16", "bf16") else 4
    per_sample = (s + 1) * latent * itemsize + s * (4 + 8) + 16  # latents, log-probs, timesteps, ids
    selected = min(1.0, 2 / config.num_branches) if config.eval.selection == "best_worst" else 1.0
    checkpoints = [os.path.join(folder, CHECKPOINT_DIR) for _, folder in stage_dirs(run_dir(config))
                   if StagePaths(folder).is_complete() and os.path.isdir(os.path.join(folder, CHECKPOINT_DIR))]
    return {"sample_files": n * per_sample, "images": n * pixels,
            "pngs": n * pixels if config.sample.save_png else 0,  # PNG of a generated image: about its raw size
            "selected": int(selected * n * (per_sample + 8)),
            "checkpoint": size_on_disk(checkpoints[-1]) if checkpoints else None}


def describe_footprint(config) -> str:
    """One line for the stage plan: a stage's files, what the run keeps, and the free space."""
    footprint = stage_footprint(config)
    if footprint is None:
        return "footprint: unknown until the model's configs can be read"
    bulk = footprint["sample_files"] + footprint["images"] + footprint["pngs"] + footprint["selected"]
    checkpoint = footprint["checkpoint"]
    stages = config.stages.num_stages
    kept = {"all": stages, "last": 1, "none": 0}[config.keep_sample_files]
    total = bulk * (kept if kept == stages else kept + 1) + (checkpoint or 0) * stages
    return (f"footprint: sample files {human_size(bulk)} a stage, checkpoint "
            f"{human_size(checkpoint) if checkpoint else '(measured after stage 0)'} a stage; keep_sample_files = "
            f"{config.keep_sample_files!r}: about {human_size(total)} at most for {stages} stages; "
            f"{free_space(run_dir(config))}")


def check_free_space(config, stage_root: str) -> None:
    """Refuse (DiskSpaceError) to start a stage whose files would not fit in the free space."""
    footprint = stage_footprint(config)
    if footprint is None:
        return
    needed = MARGIN * sum(size or 0 for size in footprint.values())
    folder = existing_folder(run_dir(config))
    if shutil.disk_usage(folder).free < needed:
        raise DiskSpaceError(f"{stage_root} needs about {human_size(needed)} and {folder} has {free_space(folder)}; free "
                             "some space (keep_sample_files = 'none' keeps least) and rerun the same command")
