"""The one place that builds run and stage paths.

A stage folder is the unit of work: a stage is complete once its `COMPLETE` marker exists
(written last, by run_train.py); an incomplete stage folder is cleared and redone from the start.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

SAMPLE_FILE = "sample.pkl"  # every branch trajectory of the stage (one process)
SAMPLE_SHARD = "sample.{rank}-of-{num}.pkl"  # rank's part of it, when N processes sample (accelerate launch)
IMAGES_SHARD = "images.{rank}-of-{num}.pt"  # rank's decoded images
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
LOCK_FILE = ".lock"  # run level: host and process id of the run working on the folder (stage/lock.py)


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

    def shard(self, rank: int, num_processes: int) -> tuple[str, str]:
        """(sample file, images file) that process `rank` of `num_processes` writes: sample.pkl
        and images.pt for one process, sample.{rank}-of-{N}.pkl and images.{rank}-of-{N}.pt else."""
        if num_processes == 1:
            return self.samples, self.images
        names = (SAMPLE_SHARD, IMAGES_SHARD)
        return tuple(self._file(name.format(rank=rank, num=num_processes)) for name in names)

    def sample_shards(self) -> list[tuple[str, str]]:
        """The (sample file, images file) pairs sampling left, in rank order. Raises
        FileNotFoundError naming what is missing when no file or not every rank's is there."""
        if os.path.exists(self.samples):
            return [(self.samples, self.images)]
        found = glob.glob(self._file(SAMPLE_SHARD.format(rank="*", num="*")))
        counts = {int(m.group(1)) for f in found if (m := re.search(r"-of-(\d+)\.pkl$", f))}
        if len(counts) != 1:
            what = "no sample file" if not counts else f"shards of runs with {sorted(counts)} processes"
            raise FileNotFoundError(f"{self.root} holds {what} (did run_sample.py finish?)")
        num = counts.pop()
        shards = [self.shard(rank, num) for rank in range(num)]
        missing = [os.path.basename(f) for f, _ in shards if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{self.root} lacks {', '.join(missing)}: sampling did not finish on every process")
        return shards


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
