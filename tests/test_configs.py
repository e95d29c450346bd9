"""The shipped configs are consistent, and the DDPO-style baseline preset is what it says."""

import os

import pytest
import torch
from conftest import REPO

from b2diffurl.cli import check_config
from b2diffurl.errors import UserError
from b2diffurl.stage.plan import plan_stage
from b2diffurl.stage.sample_file import load_samples
from config import (
    base,
    baseline,
    shapes,
    shapes_check,
    shapes_order,
    shapes_scale,
    stage_process,
    template2_colour_fruit,
    template3_object_place,
    tiny,
    tiny_random,
)


@pytest.mark.parametrize("module", [base, stage_process, baseline, template2_colour_fruit, template3_object_place,
                                    tiny, tiny_random, shapes, shapes_scale, shapes_check, shapes_order])
def test_config_passes_the_checks_and_plans_every_stage(module):
    config = module.get_config()
    check_config(config)
    plans = [plan_stage(config, k) for k in range(config.stages.num_stages)]
    splits = [p.split_step for p in plans]
    assert splits == sorted(splits) and splits[-1] <= config.sample.num_steps


def test_reference_run_matches_the_paper_settings():
    c = stage_process.get_config()
    assert (c.sample.num_steps, c.stages.split_step_min, c.stages.split_step_max, c.stages.num_stages) == (20, 14, 20, 100)
    assert (c.sample.batch_size, c.sample.num_batches_per_stage, c.num_branches, c.train.num_epochs) == (8, 32, 5, 2)
    assert (c.train.learning_rate, c.train.gradient_accumulation_steps, c.eval.history_cnt) == (1e-4, 64, 8)
    assert (c.train.batch_size, c.eval.pos_threshold, c.eval.neg_threshold) == (2, 0.5, -0.5)
    assert (c.prompt_file, c.eval.prompt_file) == ("config/prompt/template1_train.json", "config/prompt/template1_test.json")
    assert (c.mixed_precision, c.lora.rank, c.sample.guidance_scale, c.reward.name) == ("fp16", 4, 5.0, "clip_score")


@pytest.mark.parametrize("module, template", [(template2_colour_fruit, 2), (template3_object_place, 3)])
def test_template_presets_are_the_reference_run_on_the_papers_other_prompt_sets(module, template):
    config, reference = module.get_config(), stage_process.get_config()
    assert config.prompt_file == f"config/prompt/template{template}_train.json"
    assert config.eval.prompt_file == f"config/prompt/template{template}_test.json"
    assert os.path.exists(os.path.join(REPO, config.prompt_file)) and os.path.exists(os.path.join(REPO, config.eval.prompt_file))
    reference.exp_name, reference.prompt_file = config.exp_name, config.prompt_file
    reference.eval.prompt_file = config.eval.prompt_file
    assert config.to_dict() == reference.to_dict()


def test_baseline_is_ddpo_style_with_the_same_image_budget():
    b, ref = baseline.get_config(), stage_process.get_config()
    assert b.num_branches == 1 and b.eval.selection == "all"
    assert all(plan_stage(b, k).split_step == 20 and plan_stage(b, k).branch_point == 0 for k in range(100))
    images = lambda c: c.sample.batch_size * c.sample.num_batches_per_stage * c.num_branches
    assert images(b) == images(ref)


@pytest.mark.parametrize("key, value", [
    ("sample.eta", 0.0), ("num_branches", 0), ("sample.batch_size", 0), ("reward.name", "nope"),
    ("eval.selection", "nope"), ("eval.pos_threshold", -1.0), ("stages.split_step_max", 30),
    ("split_step", 0), ("mixed_precision", "fp8"), ("prompt_file", "config/prompt/missing.json"),
    ("unet_attention", "flash"),
])
def test_bad_values_are_user_errors_naming_the_key(key, value):
    config = tiny.get_config()
    group, _, name = key.rpartition(".")
    (config[group] if group else config)[name] = value
    with pytest.raises(UserError, match=key.split(".")[-1]):
        check_config(config)


def test_a_compiled_unet_is_refused_under_mixed_precision():
    config = tiny.get_config()
    config.compile_unet, config.mixed_precision = True, "no"
    check_config(config)
    config.mixed_precision = "bf16"
    with pytest.raises(UserError, match="compile_unet"):
        check_config(config)


@pytest.mark.parametrize("argv", [["plan", "--config", "config/tiny.py", "--config.train.fresh_optimizer", "True",
                                   "layout"],
                                  ["plan", "--config", "config/tiny.py", "--config.sample.save_png", "false"]])
def test_a_boolean_key_given_its_value_after_a_space_is_a_one_line_error(argv, capsys, monkeypatch):
    from b2diffurl import cli

    monkeypatch.setattr("sys.argv", argv)  # ml_collections finds the config file in sys.argv
    with pytest.raises(SystemExit) as exit_info:
        cli.run(cli.flag_values(), lambda config, *rest: None, positional=True)
    assert exit_info.value.code == 2
    assert "a boolean config key takes its value after '='" in capsys.readouterr().err


def test_baseline_stage_on_the_tiny_model_selects_every_sample(tiny_config, tmp_path):
    import json

    from b2diffurl.stage.sample import sample_stage
    from b2diffurl.stage.select import select_stage

    # Two prompts, so that each has several scores to normalise against (one score has no
    # sample standard deviation, and is never selected).
    (tmp_path / "two.json").write_text(json.dumps(["a red apple", "a blue plum"]))
    tiny_config.prompt_file = str(tmp_path / "two.json")
    tiny_config.num_branches = 1
    tiny_config.stages.split_step_min = tiny_config.stages.split_step_max = tiny_config.sample.num_steps
    tiny_config.eval.selection = "all"
    sample_stage(tiny_config)
    select_stage(tiny_config)
    paths = plan_stage(tiny_config).paths
    samples = load_samples(paths.samples)
    selected = load_samples(paths.selected, selected=True)
    assert samples["latents"].shape[1] == tiny_config.sample.num_steps + 1  # x_0 ... x_T: every step trained
    assert len(selected["prompts"]) == len(samples["prompts"]) == 8
    assert torch.equal(selected["group_id"], torch.arange(8))


def test_the_shapes_demo_runs_on_the_shipped_model_with_the_exact_reward():
    config = tiny.get_config()
    assert (config.reward.name, config.pretrained.model, config.pretrained.build_tiny) == (
        "shapes", "model/shapes-sd", False)
    assert os.path.exists(os.path.join(REPO, config.pretrained.model, "model_index.json"))  # shipped in git
    assert config.prompt_file.startswith("config/prompt/shapes/") and config.eval.prompt_file.endswith("test.json")


def test_the_shuffled_reward_control_permutes_each_stages_rewards(tiny_config):
    from b2diffurl.files import read_json
    from b2diffurl.stage.sample import sample_stage
    from b2diffurl.stage.select import select_stage

    histories = []
    for shuffle in (False, True):
        tiny_config.reward.shuffle = shuffle
        tiny_config.exp_name = f"shuffle_{shuffle}"
        sample_stage(tiny_config)
        select_stage(tiny_config)
        histories.append(read_json(plan_stage(tiny_config).paths.history)["scores"])
    plain, shuffled = ({p: v["0"] for p, v in h.items()} for h in histories)
    flat = lambda h: sorted(s for v in h.values() for s in v)
    assert flat(plain) == flat(shuffled)  # the same rewards ...
    assert plain != shuffled  # ... given to other samples
