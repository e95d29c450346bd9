"""The one place that builds run and stage paths (DESIGN.md section 5).

A stage folder is the unit of work: a stage is complete once its `COMPLETE` marker exists
(written last, by run_train.py); an incomplete stage folder is cleared and redone from the start.
"""

from __future__ import annotations

import dataclasses
import os
import re

SAMPLE_FILE = "sample.pkl"  # every branch trajectory of the stage
SELECTED_FILE = "sample_stage.pkl"  # the selected trajectories with advantages
IMAGES_FILE = "images.pt"  # uint8 [N, H, W, 3] decoded images, in sample-file order
IMAGE_DIR = "images"  # PNGs named g{group}_b{branch}.png
CHECKPOINT_DIR = "checkpoints"  # LoRA (diffusers format) and optimiser state
METRICS_FILE = "metrics.jsonl"  # one JSON object a line, this stage's events
HISTORY_FILE = "history.json"  # per-prompt scores of the last H stages, as of this stage
BEST_WORST_FILE = "best_worst.png"  # best and worst branch of some groups, with scores
COMPLETE_FILE = "COMPLETE"  # completion marker, written last
EVALUATION_FILE = "evaluation.json"  # held-out evaluation of this stage's LoRA
RUN_CONFIG_FILE = "run_config.json"  # run level: the settings a continuation must keep
BASE_EVALUATION_FILE = "evaluation_base.json"  # run level: the base model's held-out evaluation


def run_dir(config) -> str:
    """{save_path}/{exp_name}"""
    return os.path.join(config.save_path, config.exp_name)


@dataclasses.dataclass(frozen=True)
class StagePaths:
    """Files of one stage of a run."""

    root: str

    @classmethod
    def of(cls, config, stage: int) -> "StagePaths":
        return cls(os.path.join(run_dir(config), f"stage{stage}"))

    def _file(self, name: str) -> str:
        return os.path.join(self.root, name)

    samples = property(lambda self: self._file(SAMPLE_FILE))
    selected = property(lambda self: self._file(SELECTED_FILE))
    images = property(lambda self: self._file(IMAGES_FILE))
    image_dir = property(lambda self: self._file(IMAGE_DIR))
    checkpoint = property(lambda self: self._file(CHECKPOINT_DIR))
    metrics = property(lambda self: self._file(METRICS_FILE))
    history = property(lambda self: self._file(HISTORY_FILE))
    best_worst_grid = property(lambda self: self._file(BEST_WORST_FILE))
    evaluation = property(lambda self: self._file(EVALUATION_FILE))
    complete_marker = property(lambda self: self._file(COMPLETE_FILE))

    def is_complete(self) -> bool:
        return os.path.exists(self.complete_marker)


def stage_dirs(run: str) -> list[tuple[int, str]]:
    """(stage, folder) of every stage folder of a run, in stage order."""
    if not os.path.isdir(run):
        return []
    found = [(int(m.group(1)), os.path.join(run, name))
             for name in os.listdir(run) if (m := re.fullmatch(r"stage(\d+)", name))]
    return sorted(found)


def image_name(group: int, branch: int) -> str:
    """PNG name from which group and branch can be read off."""
    return f"g{group:05d}_b{branch:02d}.png"
