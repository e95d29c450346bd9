"""Step 2 of a stage (run_select.py): reward, per-prompt normalisation and selection.

Reads:  stage{k}/sample.pkl and images.pt (or the shards of N sampling processes),
        stage{k-1}/history.json (the per-prompt scores of earlier stages; none for stage 0).
Writes: stage{k}/sample_stage.pkl (the selected trajectories with their advantages and
        rewards), history.json (this stage's scores added), best_worst.png, and a `select`
        line in metrics.jsonl.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from b2diffurl.grids import best_worst_grid, save_grid
from b2diffurl.models.metrics import wilson_interval
from b2diffurl.errors import SampleFileError
from b2diffurl.files import atomic_write_json, read_json
from b2diffurl.logs import append_metrics
from b2diffurl.method.selection import SELECTIONS, contrast_census
from b2diffurl.method.statistics import new_history, normalise, record_stage
from b2diffurl.models.rewards import build_reward, score_images
from b2diffurl.stage.context import begin, make_accelerator, stage_meta
from b2diffurl.paths import StagePaths
from b2diffurl.stage.plan import StagePlan
from b2diffurl.stage.sample_file import concatenate, load_samples, save_samples, subset
from b2diffurl.tracking import track

log = logging.getLogger(__name__)


def select_stage(config) -> None:
    """Score every branch image, normalise per prompt, select -> sample_stage.pkl, history.json."""
    accelerator = make_accelerator(config)
    plan = begin(config, accelerator)
    if plan is None or not accelerator.is_main_process:  # launched on N processes: the main one scores
        return
    stage_paths = plan.paths
    record, images = _load_stage_samples(config, plan)
    reward = build_reward(config.reward, accelerator.device)
    log.info("stage %d: scoring %d images with %s", plan.stage, len(images), config.reward.name)
    scores = score_images(reward, images, record["prompts"], config.reward.batch_size,
                          name=f"reward {config.reward.name}", retries=config.reward.retries)
    if config.reward.shuffle:  # the control run: what the update does to the model without signal
        scores = np.random.default_rng(plan.seed).permutation(scores)
    finite = np.isfinite(scores)
    if not finite.all():
        log.warning("stage %d: %d non-finite rewards dropped", plan.stage, int((~finite).sum()))

    history = record_stage(_previous_history(config, plan), plan.stage, record["prompts"], scores.tolist())
    advantages = normalise(history, record["prompts"], scores.tolist())
    select = SELECTIONS[config.eval.selection]
    chosen = select(record["group_id"].numpy(), advantages, config.eval.pos_threshold, config.eval.neg_threshold)
    selected = subset(record, torch.from_numpy(chosen),
                      advantages=torch.from_numpy(advantages[chosen]).float(),
                      rewards=torch.from_numpy(scores[chosen]).float())
    atomic_write_json(history, stage_paths.history)
    grid = None
    if finite.any():
        grid = best_worst_grid(images, record["group_id"].numpy(), record["branch_id"].numpy(), scores, advantages,
                               max_groups=8, scale=max(1, 128 // images.shape[1]))
        save_grid(grid, stage_paths.best_worst_grid)
    save_samples(selected, stage_paths.selected, selected=True)

    positive = int((advantages[chosen] > 0).sum())
    finite_scores = scores[finite] if finite.any() else np.full(1, np.nan)
    reward_stats = {"mean": finite_scores.mean(), "std": finite_scores.std(), "max": finite_scores.max(),
                    "min": finite_scores.min()}
    if finite.any() and np.isin(finite_scores, (0.0, 1.0)).all():  # a 0/1 reward: its success rate and interval
        successes = int(finite_scores.sum())
        low, high = wilson_interval(successes, len(finite_scores))
        reward_stats.update(successes=successes, success_rate=successes / len(finite_scores), success_ci95_low=low,
                            success_ci95_high=high)
    counts = {"selected": len(chosen), "positive": positive, "negative": len(chosen) - positive,
              **contrast_census(record["group_id"].numpy(), scores, advantages, chosen)}
    append_metrics(stage_paths.metrics, stage=plan.stage, event="select", split_step=plan.split_step,
                   **{f"reward_{k}": v for k, v in reward_stats.items()}, num_samples=len(scores),
                   **{f"num_{k}": v for k, v in counts.items()}, num_nonfinite_rewards=int((~finite).sum()))
    track(accelerator, config, plan.stage,
          {**{f"reward/{k}": v for k, v in reward_stats.items()}, **{f"selection/{k}": v for k, v in counts.items()}},
          images={"best_worst": grid} if grid is not None else None)
    log.info("stage %d: reward mean %.4f, selected %d of %d (%d positive)", plan.stage, reward_stats["mean"],
             len(chosen), len(scores), positive)


def _load_stage_samples(config, plan: StagePlan) -> tuple[dict, np.ndarray]:
    """Every branch sample of the stage and its decoded images, from however many shards."""
    try:
        shards = plan.paths.sample_shards()
    except FileNotFoundError as error:
        raise SampleFileError(str(error)) from None
    records, images = [], []
    for samples_path, images_path in shards:
        records.append(load_samples(samples_path, expect=stage_meta(config, plan)))
        try:
            images.append(torch.load(images_path, weights_only=True).numpy())
        except Exception as error:
            raise SampleFileError(f"{images_path} cannot be read as decoded images: {error}") from None
        if len(images[-1]) != len(records[-1]["prompts"]):
            raise SampleFileError(f"{images_path} holds {len(images[-1])} images for {len(records[-1]['prompts'])} "
                                  "samples")
    return concatenate(records), np.concatenate(images)


def _previous_history(config, plan: StagePlan) -> dict:
    """The per-prompt history as the previous stage left it (empty for the first stage)."""
    previous = StagePaths.of(config, plan.stage - 1).history if plan.stage > 0 else None
    if previous is None or not os.path.exists(previous):
        return new_history(config.eval.history_cnt)
    return {**read_json(previous), "history_cnt": config.eval.history_cnt}
