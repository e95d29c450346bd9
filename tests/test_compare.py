"""b2diffurl.compare's pure parts: the baseline's image budget, the table and plot from run folders."""

import json
import os

import pytest

from b2diffurl import compare
from b2diffurl.shapes import HELD_OUT_TWO_OBJECTS
from config import baseline, shapes


def test_the_ddpo_baseline_samples_as_many_images_a_stage_without_branches():
    config = shapes.get_config()
    ddpo = shapes.get_config()
    ddpo.update_from_flattened_dict(baseline.ddpo_overrides(config))
    assert compare.images_per_stage(ddpo) == compare.images_per_stage(config) > 0
    assert ddpo.num_branches == 1 and ddpo.eval.selection == "all" and config.num_branches > 1
    assert ddpo.stages.split_step_min == ddpo.stages.split_step_max == config.sample.num_steps
    overrides = compare.run_overrides(config, "ddpo", 3, "out")
    assert overrides["exp_name"] == "ddpo_seed3" and overrides["seed"] == 3 and overrides["eval.every"] == 1
    assert "num_branches" not in compare.run_overrides(config, "b2diffurl", 3, "out")


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
    assert f"| b2diffurl | 2 | {2 * per_stage} | 2 | 0.410 | seeds 0.400, 0.420 | 0.1900 |" in text
    assert "| ddpo | 0 | 0 | 2 | 0.250 |" in text
    pytest.importorskip("matplotlib")
    compare.plot(rows, str(tmp_path / "compare.png"))
    assert (tmp_path / "compare.png").stat().st_size > 1000
