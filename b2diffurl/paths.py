"""The one place that builds run and stage paths (DESIGN.md section 5)."""

from __future__ import annotations

import dataclasses
import os

SAMPLE_FILE = "sample.pkl"  # every branch trajectory of the stage
SELECTED_FILE = "sample_stage.pkl"  # the selected trajectories with advantages
IMAGES_FILE = "images.pt"  # uint8 [N, H, W, 3] decoded images, in sample-file order
IMAGE_DIR = "images"  # PNGs named g{group}_b{branch}.png
CHECKPOINT_DIR = "checkpoints"  # LoRA (diffusers format) and optimiser state
METRICS_FILE = "metrics.jsonl"  # run level, one JSON object a line
HISTORY_FILE = "history.json"  # run level, per-prompt scores of the last H stages


def run_dir(config) -> str:
    """{save_path}/{exp_name}"""
    return os.path.join(config.save_path, config.exp_name)


@dataclasses.dataclass(frozen=True)
class StagePaths:
    """Files of stage `stage` of the run that `config` describes."""

    root: str

    @classmethod
    def of(cls, config, stage: int) -> "StagePaths":
        return cls(os.path.join(run_dir(config), f"stage{stage}"))

    @property
    def samples(self) -> str:
        return os.path.join(self.root, SAMPLE_FILE)

    @property
    def selected(self) -> str:
        return os.path.join(self.root, SELECTED_FILE)

    @property
    def images(self) -> str:
        return os.path.join(self.root, IMAGES_FILE)

    @property
    def image_dir(self) -> str:
        return os.path.join(self.root, IMAGE_DIR)

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.root, CHECKPOINT_DIR)


def image_name(group: int, branch: int) -> str:
    """PNG name from which group and branch can be read off."""
    return f"g{group:05d}_b{branch:02d}.png"
