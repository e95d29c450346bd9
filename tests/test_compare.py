"""b2diffurl.analysis.compare's pure parts: the baseline's image budget, the table and plot from run folders."""

import json
import os

import pytest

from b2diffurl.analysis import compare
from b2diffurl.world.shapes import HELD_OUT_TWO_OBJECTS
from config import baseline, shapes


def test_the_ddpo_baseline_samples_as_many_images_a_stage_in_batches_as_large_without_branches():
    config = shapes.get_config()
    ddpo = shapes.get_config()
    ddpo.update_from_flattened_dict(baseline.ddpo_overrides(config))
    assert compare.images_per_stage(ddpo) == compare.images_per_stage(config) > 0
    assert ddpo.sample.batch_size * ddpo.num_branches == config.sample.batch_size * config.num_branches
    assert ddpo.num_branches == 1 and ddpo.eval.selection == "all" and config.num_branches > 1
    assert ddpo.stages.split_step_min == ddpo.stages.split_step_max == config.sample.num_steps
    overrides = compare.run_overrides(config, "ddpo", 3, "out")
    assert overrides["exp_name"] == "ddpo_seed3" and overrides["seed"] == 3
    assert "num_branches" not in compare.run_overrides(config, "b2diffurl", 3, "out")
    control = compare.run_overrides(config, "b2diffurl_control", 3, "out")
    assert control["reward.shuffle"] is True and control["exp_name"] == "b2diffurl_control_seed3"
    assert "num_branches" not in control


def test_each_ablation_removes_one_half_of_the_full_method():
    from config import shapes_ablation

    config = shapes_ablation.get_config()
    full = compare.schedule(compare.run_config(config, "b2diffurl", 0, "out"))
    assert full["split_steps"] == [7, 7, 7, 8, 8, 9, 9, 10, 10] and full["num_branches"] == 8
    branch = compare.schedule(compare.run_config(config, "branch", 0, "out"))
    assert branch["split_steps"] == [10] * 9 and branch["num_branches"] == 8 and branch["selection"] == "best_worst"
    progressive = compare.schedule(compare.run_config(config, "progressive_control", 0, "out"))
    assert progressive["split_steps"] == full["split_steps"] and progressive["num_branches"] == 1
    assert progressive["selection"] == "all"
    ddpo = compare.schedule(compare.run_config(config, "ddpo", 0, "out"))
    assert ddpo["split_steps"] == [10] * 9 and ddpo["num_branches"] == 1
    for entry in (branch, progressive, ddpo):  # the same images a stage, in sampling batches as large
        assert (entry["images_per_stage"], entry["sampling_batch"]) == (full["images_per_stage"], full["sampling_batch"])
    study = compare.STUDIES["ablation"]
    assert study[:2] == [("b2diffurl", 0), ("ddpo", 0)] and len(set(study)) == len(study) == 18
    assert {seed for run, seed in study if run == "ddpo_control"} == {0, 1, 2}
    assert {seed for run, seed in study if run == "branch"} == {0, 1} and ("progressive_control", 0) in study
    assert compare.plan_of("", ["ddpo", "branch"], [0, 1]) == [("ddpo", 0), ("branch", 0), ("ddpo", 1), ("branch", 1)]


def _evaluation(path, key, rate, diversity):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    success = {HELD_OUT_TWO_OBJECTS: {"success_rate": rate, "ci95_low": rate - 0.05, "ci95_high": rate + 0.05,
                                      "num_images": 312}}
    with open(path, "w") as f:
        json.dump({"results": {key: {"success": success, "diversity_all": diversity, "reward_mean": rate}}}, f)


def test_rows_table_and_plot_from_the_runs_evaluations(tmp_path):
    out = str(tmp_path)
    for method, rates in (("b2diffurl", [0.3, 0.4]), ("ddpo", [0.3, 0.32])):
        for seed in (0, 1):
            run = os.path.join(out, f"{method}_seed{seed}")
            _evaluation(os.path.join(run, "evaluation_base.json"), "base", 0.25, 0.2)
            for stage, rate in enumerate(rates):
                _evaluation(os.path.join(run, f"stage{stage}", "evaluation.json"), "lora", rate + 0.02 * seed, 0.19)
    config = shapes.get_config()
    config.sample.num_batches_per_stage = 2
    rows = compare.collect(out, config, [0, 1])
    per_stage = config.sample.batch_size * 2 * config.num_branches  # the ddpo run: 2K batches of 1 branch
    b2 = [r for r in rows if r["method"] == "b2diffurl" and r["seed"] == 1]
    assert [(r["stages"], r["images"], r["success_rate"]) for r in b2] == [
        (0, 0, 0.25), (1, per_stage, pytest.approx(0.32)), (2, 2 * per_stage, pytest.approx(0.42))]
    ddpo = [r for r in rows if r["method"] == "ddpo" and r["seed"] == 0]
    assert [r["images"] for r in ddpo] == [0, per_stage, 2 * per_stage]
    text = compare.table(rows)
    assert f"| b2diffurl | 2 | {2 * per_stage} | 2 | 0.410 | seeds 0.400, 0.420 | – | – | – | – | – | – | – | 0.1900 |" in text
    assert "| ddpo | 0 | 0 | 2 | 0.250 |" in text
    pytest.importorskip("matplotlib")
    compare.plot(rows, str(tmp_path / "compare.png"))
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_paired_counts_against_the_base_and_the_results_file(tmp_path):
    from conftest import REPO

    from b2diffurl.models.prompts import load_prompts
    from b2diffurl.world.shapes import prompt_groups

    captions = load_prompts(os.path.join(REPO, "config", "prompt", "shapes", "test.json"))
    two = [c for c in captions if HELD_OUT_TWO_OBJECTS in prompt_groups(c)][:3]
    one = [c for c in captions if HELD_OUT_TWO_OBJECTS not in prompt_groups(c)][:1]
    prompts = two + one

    def write(path, key, scores):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rate = sum(s == 1.0 for s in scores[:3]) / 3
        success = {HELD_OUT_TWO_OBJECTS: {"success_rate": rate, "ci95_low": 0.0, "ci95_high": 1.0, "num_images": 3}}
        with open(path, "w") as f:
            json.dump({"results": {key: {"success": success, "diversity_all": 0.1, "reward_mean": rate,
                                         "prompts": prompts, "scores": scores}}}, f)

    outcomes = {HELD_OUT_TWO_OBJECTS: {"order_accuracy": 0.5, "order_right": 1, "order_of": 2, "modes": {}}}
    for method, after in (("b2diffurl", [1.0, 1.0, 0.0, 0.0]), ("b2diffurl_control", [1.0, 0.0, 0.0, 1.0]),
                          ("ddpo", [0.0, 1.0, 1.0, 0.0]), ("ddpo_control", [0.0, 0.0, 1.0, 0.0])):
        run = os.path.join(str(tmp_path), f"{method}_seed0")
        write(os.path.join(run, "evaluation_base.json"), "base", [0.0, 0.0, 1.0, 1.0])
        write(os.path.join(run, "stage0", "evaluation.json"), "lora", after)
    with open(os.path.join(str(tmp_path), "b2diffurl_seed0", "evaluation_base.json")) as f:
        content = json.load(f)
    content["results"]["base"]["outcomes"] = outcomes
    with open(os.path.join(str(tmp_path), "b2diffurl_seed0", "evaluation_base.json"), "w") as f:
        json.dump(content, f)
    config = shapes.get_config()
    rows = compare.collect(str(tmp_path), config, [0])
    last = {r["method"]: r for r in rows if r["stages"] == 1}
    # the one-object caption (right before, wrong after) is not a held-out two-object image
    assert (last["b2diffurl"]["gained"], last["b2diffurl"]["lost"]) == (2, 1)
    assert (last["b2diffurl_control"]["gained"], last["b2diffurl_control"]["lost"]) == (1, 1)
    # against the control's images on the same noise: one right only after training, none only after the control
    assert (last["b2diffurl"]["gained_vs_control"], last["b2diffurl"]["lost_vs_control"]) == (1, 0)
    assert "gained_vs_control" not in last["b2diffurl_control"]
    # against ddpo's: the first image right only after b2diffurl, the third only after ddpo
    assert (last["b2diffurl"]["gained_vs_ddpo"], last["b2diffurl"]["lost_vs_ddpo"]) == (1, 1)
    # each method against its own control: ddpo's against ddpo_control's
    assert (last["ddpo"]["gained_vs_control"], last["ddpo"]["lost_vs_control"]) == (1, 0)
    assert "gained_vs_ddpo" not in last["ddpo"] and "gained_vs_ddpo" not in last["b2diffurl_control"]
    assert "| b2diffurl | 1 |" in compare.table(rows) and "| 2 / 1 | 0.33 | 1 / 0 | 1.00 | 1 / 1 | 0.00 |" in compare.table(rows)

    def second(run, base_scores, lora_scores):  # evaluate --lora --out: base and LoRA on the second noise
        write(os.path.join(str(tmp_path), f"{run}_seed0", compare.SECOND_EVALUATION_FILE), "base", base_scores)
        path = os.path.join(str(tmp_path), f"{run}_seed0", compare.SECOND_EVALUATION_FILE)
        with open(path) as f:
            content = json.load(f)
        write(path, "lora", lora_scores)
        with open(path) as f:
            content["results"]["lora"] = json.load(f)["results"]["lora"]
        with open(path, "w") as f:
            json.dump(content, f)

    assert compare.second_noise(str(tmp_path), config, "b2diffurl", 0) == {}
    second("b2diffurl", [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0])
    second("b2diffurl_control", [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    entry = compare.second_noise(str(tmp_path), config, "b2diffurl", 0)
    assert entry["seed"] == compare.SECOND_NOISE and (entry["base_success"], entry["final_success"]) == (0.0, 1.0)
    assert (entry["gained"], entry["lost"], entry["gained_vs_control"], entry["lost_vs_control"]) == (3, 0, 2, 0)
    assert "gained_vs_control" not in compare.second_noise(str(tmp_path), config, "b2diffurl_control", 0)

    per_stage = compare.images_per_stage(config)
    stage0 = os.path.join(str(tmp_path), "b2diffurl_seed0", "stage0")
    with open(os.path.join(stage0, "metrics.jsonl"), "w") as f:
        for record in ({"event": "sample", "seconds": 10.0}, {"event": "select", "reward_mean": 0.25, "num_samples": 8,
                                                               "num_positive": 2, "num_negative": 1,
                                                               "num_contrast_positive_only": 1},
                       {"event": "train", "training_seconds": 5.0}):
            f.write(json.dumps({"time": 0.0, "stage": 0, **record}) + "\n")
    log = compare.training_log(os.path.join(str(tmp_path), "b2diffurl_seed0"), per_stage)
    assert log[0] == {"stage": 0, "images": 0, "sampling_seconds": 10.0, "train_success": 0.25, "samples": 8,
                      "positive": 2, "negative": 1, "training_seconds": 5.0,
                      **dict.fromkeys(compare.CONTRAST), "contrast_positive_only": 1}

    configs = {(m, 0): {"overrides": {"method": m}, "num_branches": 3, "split_steps": [9]} for m in compare.RUNS}
    second = {("b2diffurl", 0): {"final_success": 0.5}}
    runs = compare.results(rows, configs, {("b2diffurl", 0): log}, second)["runs"]
    assert [(r["method"], r["control"]) for r in runs] == [("b2diffurl", False), ("b2diffurl", True), ("ddpo", False),
                                                           ("ddpo", True)]
    assert runs[0]["second_noise"] == {"final_success": 0.5} and "second_noise" not in runs[1]
    assert (runs[0]["num_branches"], runs[0]["split_steps"]) == (3, [9])
    first = runs[0]
    assert (first["base_success"], first["final_success"], first["n"], first["gained"], first["lost"]) == (
        pytest.approx(1 / 3), pytest.approx(2 / 3), 3, 2, 1)
    assert (first["gained_vs_control"], first["lost_vs_control"]) == (1, 0) and "lost_vs_control" not in runs[1]
    assert (first["gained_vs_ddpo"], first["lost_vs_ddpo"]) == (1, 1)
    assert first["base_order_accuracy"] == 0.5 and "final_order_accuracy" not in first
    assert (first["train_success"], first["selected_positive"], first["selected_negative"]) == ([0.25], 2, 1)
    assert (first["sampling_seconds"], first["training_seconds"]) == (10.0, 5.0)
    assert (first["contrast_positive_only"], first["contrast_both"]) == (1, 0)
    assert first["images"] == per_stage and first["config"] == {"overrides": {"method": "b2diffurl"}}
    pytest.importorskip("matplotlib")
    compare.plot(rows, str(tmp_path / "compare.png"), {("b2diffurl", 0): log})
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_the_kept_record_rebuilds_the_rows_and_holds_only_the_last_complete_checkpoint(tmp_path):
    out, dest = str(tmp_path / "out"), str(tmp_path / "kept")
    run = os.path.join(out, "b2diffurl_seed0")
    _evaluation(os.path.join(run, "evaluation_base.json"), "base", 0.25, 0.2)
    for stage, rate in enumerate([0.3, 0.4]):
        folder = os.path.join(run, f"stage{stage}")
        _evaluation(os.path.join(folder, "evaluation.json"), "lora", rate, 0.19)
        os.makedirs(os.path.join(folder, "checkpoints"))
        for name in ("sample.pkl", "images.pt", "metrics.jsonl", "history.json", "COMPLETE", "checkpoints/optimizer.pt"):
            with open(os.path.join(folder, name), "w") as f:
                f.write(f"stage {stage}")
    os.makedirs(os.path.join(run, "stage2", "checkpoints"))  # an unfinished stage: no marker
    with open(os.path.join(run, "stage2", "checkpoints", "optimizer.pt"), "w") as f:
        f.write("partial")
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write("| table |")

    copied = compare.keep(out, dest)
    assert "compare.md" in copied and "b2diffurl_seed0/stage1/checkpoints/optimizer.pt" in copied
    assert not any(name.endswith((".pkl", ".pt")) and "checkpoints" not in name for name in copied)
    assert "b2diffurl_seed0/stage0/checkpoints/optimizer.pt" not in copied  # only the last complete stage's
    assert "b2diffurl_seed0/stage2/checkpoints/optimizer.pt" not in copied
    assert "b2diffurl_seed0/stage1/history.json" in copied and "b2diffurl_seed0/stage0/history.json" not in copied
    with open(os.path.join(dest, "b2diffurl_seed0", "stage0", "metrics.jsonl")) as f:
        assert f.read() == "stage 0"
    config = shapes.get_config()
    assert compare.collect(dest, config, [0]) == compare.collect(out, config, [0])
