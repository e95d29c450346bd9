"""A run folder read into plain arrays: what the report (curves.py) draws and the tables read.

`collect` reads stage{k}/metrics.jsonl (through `read_run_metrics`), stage{k}/evaluation.json,
evaluation_base.json and run_config.json; `read_evaluations` reads the evaluations alone.
Missing, non-numeric and non-finite values become NaN; files that cannot be read are skipped
with a warning. Needs numpy only.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from b2diffurl.logs import read_run_metrics
from b2diffurl.paths import BASE_EVALUATION_FILE, EVALUATION_FILE, RUN_CONFIG_FILE, stage_dirs

SELECT_FIELDS = ("reward_mean", "reward_std", "reward_min", "reward_max", "reward_success_rate",
                 "reward_success_ci95_low", "reward_success_ci95_high", "num_positive", "num_negative", "num_selected")
STEP_FIELDS = ("loss", "approx_kl", "clipfrac", "grad_norm")
EVAL_FIELDS = ("reward_mean", "reward_ci95", "diversity_mean")
SUCCESS_FIELDS = ("success_rate", "ci95_low", "ci95_high")


def _number(value) -> float:
    """A metric value as float; missing, non-numeric and non-finite ("nan", "inf") -> NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _read_json(path: str, warnings: list[str]) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        warnings.append(f"{path} cannot be read: {error}")
        return None


def _eval_field(result: dict, field: str) -> float:
    """A field of an evaluation result; with one image a prompt the per-prompt diversity is
    undefined and the diversity over all images stands in for it."""
    value = _number(result.get(field))
    if field == "diversity_mean" and not np.isfinite(value):
        value = _number(result.get("diversity_all"))
    return value


def read_evaluations(run_dir: str, warnings: list[str]) -> tuple[list[tuple[int, dict]], dict | None]:
    """(stage, LoRA results) of every stage{k}/evaluation.json in stage order, and the base
    model's results (or None); what cannot be read is skipped with a line in `warnings`."""
    rows, base = [], None
    for stage, folder in stage_dirs(run_dir):
        path = os.path.join(folder, EVALUATION_FILE)
        if not os.path.exists(path) or (content := _read_json(path, warnings)) is None:
            continue
        results = content.get("results", {}) if isinstance(content, dict) else {}
        if not isinstance(results.get("lora"), dict):
            warnings.append(f"{path} has no results.lora")
            continue
        rows.append((stage, results["lora"]))
        if base is None and isinstance(results.get("base"), dict):
            base = results["base"]
    base_path = os.path.join(run_dir, BASE_EVALUATION_FILE)
    if os.path.exists(base_path) and (content := _read_json(base_path, warnings)) is not None:
        results = content.get("results", {}) if isinstance(content, dict) else {}
        if isinstance(results.get("base"), dict):
            base = results["base"]  # the run-level file wins over a copy inside a stage's file
        else:
            warnings.append(f"{base_path} has no results.base")
    return rows, base


def _evaluations(run_dir: str, warnings: list[str]) -> tuple[dict, dict | None]:
    """Per-stage LoRA evaluation arrays, and the base model's results (or None)."""
    rows, base = read_evaluations(run_dir, warnings)
    evaluations = {"eval_stage": np.array([s for s, _ in rows], dtype=np.int64)}
    for field in EVAL_FIELDS:
        evaluations[f"eval_{field}"] = np.array([_eval_field(r, field) for _, r in rows], dtype=np.float64)
    # Success rates of a 0/1 reward, per prompt group: {group: {field: [E]}}, for the groups every evaluation has.
    groups = [g for g in (rows[0][1].get("success") or {}) if all(g in (r.get("success") or {}) for _, r in rows)] \
        if rows else []
    evaluations["eval_success"] = {
        group: {field: np.array([_number(r["success"][group].get(field)) for _, r in rows]) for field in SUCCESS_FIELDS}
        for group in groups}
    evaluations["eval_success_images"] = {group: _number(rows[-1][1]["success"][group].get("num_images"))
                                          for group in groups}
    if base is not None:
        base = {**{field: _eval_field(base, field) for field in EVAL_FIELDS},
                "success": {group: {field: _number(rate.get(field)) for field in SUCCESS_FIELDS}
                            for group, rate in (base.get("success") or {}).items()}}
    return evaluations, base


def collect(run_dir: str) -> dict:
    """Everything the report draws, as arrays. Keys:

    stages, split_step, train_skipped     per stage with any record: int, float, bool [S]
    select_stage, reward_*, num_*         per stage with a `select` event (the latest wins) [S']
    step, step_stage, loss, approx_kl,    per optimiser step, in run order; `step` counts 1, 2, ...
      clipfrac, grad_norm, step_skipped     over the whole run [M]
    stage_first_step                      per stage: `step` of its first optimiser step (or of the
                                            next stage's, if it had none) [S]
    images_sampled                        per stage: images sampled by its end [S]
    eval_stage, eval_reward_mean,         per stage with stage{k}/evaluation.json (LoRA results) [E]
      eval_reward_ci95, eval_diversity_mean
    eval_success                          {prompt group: {success_rate, ci95_low, ci95_high: [E]}} (0/1 rewards)
    eval_success_images                   {prompt group: images in the last evaluation}
    base                                  the base model's reward_mean, reward_ci95, diversity_mean and
                                            success ({group: {success_rate, ci95_low, ci95_high}}), or None
    run, num_steps, reward                run folder name, T and reward name from run_config.json (or None)
    warnings                              files that could not be read
    Non-finite and missing values are NaN.
    """
    warnings: list[str] = []
    split_step: dict[int, float] = {}
    train_skipped: dict[int, bool] = {}
    select: dict[int, dict] = {}
    sampled: dict[int, float] = {}
    steps: list[dict] = []
    for record in read_run_metrics(run_dir):
        stage = int(record["stage"])
        split_step[stage] = _number(record.get("split_step"))
        event = record.get("event")
        if event == "sample":
            sampled[stage] = _number(record.get("num_samples"))
        elif event == "select":
            select[stage] = record
        elif event == "optimizer_step":
            steps.append(record)
        elif event == "train":
            train_skipped[stage] = bool(record.get("skipped", False))
    stages = sorted(split_step)

    data: dict = {
        "stages": np.array(stages, dtype=np.int64),
        "split_step": np.array([split_step[s] for s in stages], dtype=np.float64),
        "train_skipped": np.array([train_skipped.get(s, False) for s in stages], dtype=bool),
        "select_stage": np.array(sorted(select), dtype=np.int64),
        # images sampled by the end of each stage (NaN from the first stage without a sample event)
        "images_sampled": np.cumsum([sampled.get(s, math.nan) for s in stages]).astype(np.float64),
    }
    for field in SELECT_FIELDS:
        data[field] = np.array([_number(select[s].get(field)) for s in sorted(select)], dtype=np.float64)

    data["step"] = np.arange(1, len(steps) + 1, dtype=np.int64)
    data["step_stage"] = np.array([int(r["stage"]) for r in steps], dtype=np.int64)
    for field in STEP_FIELDS:
        data[field] = np.array([_number(r.get(field)) for r in steps], dtype=np.float64)
    data["step_skipped"] = np.array([bool(r.get("skipped", False)) for r in steps], dtype=bool)
    # A stage's first step is one past the steps of all earlier stages.
    data["stage_first_step"] = np.array([int(np.sum(data["step_stage"] < s)) + 1 for s in stages], dtype=np.int64)

    evaluations, data["base"] = _evaluations(run_dir, warnings)
    data.update(evaluations)

    config_path = os.path.join(run_dir, RUN_CONFIG_FILE)
    config = (_read_json(config_path, warnings) if os.path.exists(config_path) else None) or {}
    data["run"] = os.path.basename(os.path.normpath(run_dir))
    data["num_steps"] = config.get("sample.num_steps")
    data["reward"] = config.get("reward.name")
    data["warnings"] = warnings
    return data
