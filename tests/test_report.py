"""The run report (b2diffurl/report.py): data read from a hand-written run folder, the PNG, errors."""

import json
import math
import sys

import numpy as np
import pytest

from b2diffurl.analysis.curves import main
from b2diffurl.analysis.run_data import collect


def write_lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def sample(stage, split_step):
    return {"time": 1.0, "stage": stage, "event": "sample", "split_step": split_step, "num_samples": 8,
            "num_groups": 2, "seconds": 1.0, "sampling_seconds": 0.5, "images_per_second": 16.0}


def select(stage, split_step, mean, std, low, high, positive, negative):
    return {"time": 2.0, "stage": stage, "event": "select", "split_step": split_step, "reward_mean": mean,
            "reward_std": std, "reward_max": high, "reward_min": low, "num_samples": 8,
            "num_selected": positive + negative, "num_positive": positive, "num_negative": negative,
            "num_nonfinite_rewards": 0}


def step(stage, split_step, loss, kl, clipfrac, grad_norm=0.1, skipped=False):
    return {"time": 3.0, "stage": stage, "event": "optimizer_step", "split_step": split_step, "epoch": 0,
            "loss": loss, "approx_kl": kl, "clipfrac": clipfrac, "grad_norm": grad_norm, "skipped": skipped}


def train(stage, split_step, steps):
    if steps == 0:
        return {"time": 4.0, "stage": stage, "event": "train", "split_step": split_step, "num_samples": 0,
                "skipped": True, "reason": "no samples selected"}
    return {"time": 4.0, "stage": stage, "event": "train", "split_step": split_step, "num_samples": 3,
            "skipped": False, "training_seconds": 1.0, "optimizer_steps": steps, "skipped_steps": 0}


def evaluation(stage, mean, ci95, diversity):
    return {"stage": stage, "results": {"lora": {"reward_mean": mean, "reward_ci95": ci95,
                                                 "diversity_mean": diversity, "num_images": 16}}}


@pytest.fixture()
def run(tmp_path):
    """Stages 0..2 with split steps 4, 6, 8; stage 1 selected nothing, so its training was skipped;
    stage 2 has a "nan" loss and a skipped (non-finite) optimiser step. Evaluations after stages 0
    and 2, and the base model."""
    run = tmp_path / "run"
    write_lines(run / "stage0" / "metrics.jsonl", [
        sample(0, 4), select(0, 4, 0.5, 0.1, 0.3, 0.7, 2, 1),
        step(0, 4, 0.25, 0.0, 0.0), step(0, 4, -0.75, 1e-6, 0.5), train(0, 4, 2)])
    write_lines(run / "stage1" / "metrics.jsonl", [
        sample(1, 6), select(1, 6, 0.55, 0.05, 0.45, 0.65, 0, 0), train(1, 6, 0)])
    write_lines(run / "stage2" / "metrics.jsonl", [
        sample(2, 8), select(2, 8, 0.6, "nan", 0.4, "inf", 1, 2),
        step(2, 8, "nan", 2e-6, 0.25), step(2, 8, 0.5, 3e-6, 0.0),
        step(2, 8, "nan", "nan", "nan", grad_norm="inf", skipped=True), train(2, 8, 3)])
    (run / "stage0" / "evaluation.json").write_text(json.dumps(evaluation(0, 0.52, 0.02, 0.3)))
    (run / "stage2" / "evaluation.json").write_text(json.dumps(evaluation(2, 0.61, 0.03, "nan")))
    (run / "evaluation_base.json").write_text(json.dumps(
        {"results": {"base": {"reward_mean": 0.5, "reward_ci95": 0.025, "diversity_mean": 0.35}}}))
    (run / "run_config.json").write_text(json.dumps({"sample.num_steps": 10, "reward.name": "colour_match"}))
    return run


def same(a, b):
    """Arrays equal, NaN matching NaN."""
    np.testing.assert_array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


def test_collect_per_stage(run):
    data = collect(str(run))
    same(data["stages"], [0, 1, 2])
    same(data["split_step"], [4, 6, 8])
    assert data["train_skipped"].tolist() == [False, True, False]
    same(data["select_stage"], [0, 1, 2])
    same(data["reward_mean"], [0.5, 0.55, 0.6])
    same(data["reward_std"], [0.1, 0.05, math.nan])  # "nan" in the file
    same(data["reward_min"], [0.3, 0.45, 0.4])
    same(data["reward_max"], [0.7, 0.65, math.nan])  # "inf" is not drawn either
    same(data["num_positive"], [2, 0, 1])
    same(data["num_negative"], [1, 0, 2])
    same(data["num_selected"], [3, 0, 3])
    same(data["images_sampled"], [8, 16, 24])  # the sample events' counts, summed
    same(data["reward_success_rate"], [math.nan] * 3)  # not a 0/1 reward
    assert (data["run"], data["num_steps"], data["reward"]) == ("run", 10, "colour_match")
    assert data["warnings"] == []


def test_collect_success_rates_of_a_binary_reward(run):
    for stage in (0, 2):
        path = run / f"stage{stage}" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for record in records:
            if record["event"] == "select":
                record.update(reward_successes=2, reward_success_rate=0.25, reward_success_ci95_low=0.07,
                              reward_success_ci95_high=0.59)
        write_lines(path, records)
        content = evaluation(stage, 0.3, 0.1, 0.2)
        content["results"]["lora"]["success"] = {"two objects": {"success_rate": 0.3, "ci95_low": 0.2,
                                                                 "ci95_high": 0.4, "num_images": 80}}
        (run / f"stage{stage}" / "evaluation.json").write_text(json.dumps(content))
    data = collect(str(run))
    same(data["reward_success_rate"], [0.25, math.nan, 0.25])  # stage 1's select has none
    same(data["eval_success"]["two objects"]["ci95_high"], [0.4, 0.4])


def test_collect_per_optimiser_step(run):
    data = collect(str(run))
    same(data["step"], [1, 2, 3, 4, 5])  # counted over the run; stage 1 has none
    same(data["step_stage"], [0, 0, 2, 2, 2])
    same(data["loss"], [0.25, -0.75, math.nan, 0.5, math.nan])
    same(data["approx_kl"], [0.0, 1e-6, 2e-6, 3e-6, math.nan])
    same(data["clipfrac"], [0.0, 0.5, 0.25, 0.0, math.nan])
    same(data["grad_norm"], [0.1, 0.1, 0.1, 0.1, math.nan])
    assert data["step_skipped"].tolist() == [False, False, False, False, True]
    same(data["stage_first_step"], [1, 3, 3])  # the skipped stage 1 starts where stage 2 does


def test_collect_evaluations(run):
    data = collect(str(run))
    same(data["eval_stage"], [0, 2])
    same(data["eval_reward_mean"], [0.52, 0.61])
    same(data["eval_reward_ci95"], [0.02, 0.03])
    same(data["eval_diversity_mean"], [0.3, math.nan])
    assert data["base"] == {"reward_mean": 0.5, "reward_ci95": 0.025, "diversity_mean": 0.35, "success": {}}
    assert data["eval_success"] == {}  # a continuous reward


def test_collect_without_evaluations_and_with_a_broken_one(run):
    (run / "stage0" / "evaluation.json").unlink()
    (run / "stage2" / "evaluation.json").write_text('{"stage": 2, "resu')  # half a file
    (run / "evaluation_base.json").unlink()
    data = collect(str(run))
    assert len(data["eval_stage"]) == 0 and data["base"] is None
    assert len(data["warnings"]) == 1 and "stage2" in data["warnings"][0]


def test_collect_base_from_a_stage_file(run):
    (run / "evaluation_base.json").unlink()
    content = evaluation(2, 0.61, 0.03, 0.2)
    content["results"]["base"] = {"reward_mean": 0.45, "reward_ci95": 0.01, "diversity_mean": 0.4}
    (run / "stage2" / "evaluation.json").write_text(json.dumps(content))
    assert collect(str(run))["base"] == {"reward_mean": 0.45, "reward_ci95": 0.01, "diversity_mean": 0.4, "success": {}}


def test_collect_of_an_empty_folder(tmp_path):
    data = collect(str(tmp_path))
    assert len(data["stages"]) == len(data["step"]) == len(data["eval_stage"]) == 0


def test_main_writes_a_png(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    main([str(run)])
    with Image.open(run / "report.png") as image:
        assert image.format == "PNG"
        assert 1200 <= image.width <= 2400 and 700 <= image.height <= 1400
        assert image.width > image.height
    assert str(run / "report.png") in capsys.readouterr().out

    # --out, and a run with no optimiser steps and no evaluations yet (empty panels that say so)
    for path in run.glob("**/evaluation*.json"):
        path.unlink()
    write_lines(run / "stage0" / "metrics.jsonl", [sample(0, 4), select(0, 4, 0.5, 0.1, 0.3, 0.7, 0, 0), train(0, 4, 0)])
    for stage in (1, 2):
        (run / f"stage{stage}" / "metrics.jsonl").unlink()
    out = tmp_path / "elsewhere" / "early.png"
    main([str(run), "--out", str(out)])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 1000


def test_main_without_matplotlib(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--out", str(run / "never.png")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: the report needs matplotlib: pip install matplotlib"
    assert not (run / "never.png").exists()


def test_main_on_a_folder_without_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no-such-run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
