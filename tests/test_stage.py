"""Whole stages through the three scripts, run as a user runs them (subprocesses, tiny config)."""

import importlib.util
import os
import subprocess
import sys
import time

import torch
from conftest import REPO
from safetensors.torch import load_file

from b2diffurl.logs import read_run_metrics
from b2diffurl.stage.sample_file import load_samples


def _run(script, *flags, expect_rc=0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, script, *flags], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == expect_rc, result.stderr[-3000:]
    return result


def _flags(config, stage, *extra):
    return ["--config", "config/tiny_random.py", "--config.pretrained.model", config.pretrained.model,
            "--config.pretrained.build_tiny=False", "--config.save_path", config.save_path,
            "--config.stage", str(stage), *extra]


def _metrics(run_dir):
    return read_run_metrics(run_dir)


def test_two_stages_through_the_three_scripts(tiny_config):
    run_dir = os.path.join(tiny_config.save_path, "tiny_random")
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        _run(script, *_flags(tiny_config, 0))
    stage0 = os.path.join(run_dir, "stage0")
    samples = load_samples(os.path.join(stage0, "sample.pkl"))
    n = tiny_config.sample.batch_size * tiny_config.sample.num_batches_per_stage * tiny_config.num_branches
    assert len(samples["prompts"]) == n and samples["meta"]["split_step"] == 4
    assert samples["latents"].shape[1] == 5
    assert len(os.listdir(os.path.join(stage0, "images"))) == n
    selected = load_samples(os.path.join(stage0, "sample_stage.pkl"), selected=True)
    assert 0 < len(selected["prompts"]) <= 2 * n // tiny_config.num_branches
    assert os.path.exists(os.path.join(stage0, "COMPLETE")) and os.path.exists(os.path.join(stage0, "history.json"))
    lora0 = load_file(os.path.join(stage0, "checkpoints", "pytorch_lora_weights.safetensors"))
    events = [m["event"] for m in _metrics(run_dir)]
    assert events[:2] == ["sample", "select"] and "optimizer_step" in events and events[-1] == "train"
    assert os.path.exists(os.path.join(stage0, "best_worst.png"))
    if importlib.util.find_spec("tensorboard"):  # the optional extra: stage scalars and grids
        assert os.listdir(os.path.join(run_dir, "tensorboard", "tiny_random"))
    first_step = next(m for m in _metrics(run_dir) if m["event"] == "optimizer_step")
    assert first_step["approx_kl"] < 1e-9  # the first update starts from ratio 1

    # Stage 1 with thresholds nothing can pass: training is skipped, the LoRA carried forward.
    impossible = ["--config.eval.pos_threshold", "100", "--config.eval.neg_threshold", "-100"]
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        _run(script, *_flags(tiny_config, 1, *impossible))
    stage1 = os.path.join(run_dir, "stage1")
    assert load_samples(os.path.join(stage1, "sample.pkl"))["meta"]["split_step"] == 6  # the interval grew
    assert len(load_samples(os.path.join(stage1, "sample_stage.pkl"), selected=True)["prompts"]) == 0
    lora1 = load_file(os.path.join(stage1, "checkpoints", "pytorch_lora_weights.safetensors"))
    assert lora1.keys() == lora0.keys() and all(torch.equal(lora0[k], lora1[k]) for k in lora0)
    last = _metrics(run_dir)[-1]
    assert last["stage"] == 1 and last["event"] == "train" and last["skipped"] is True


def test_sd_config_without_weights_fails_fast_with_one_line():
    started = time.time()
    result = _run("run_sample.py", "--config", "config/stage_process.py", expect_rc=2)
    assert time.time() - started < 60
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "CompVis/stable-diffusion-v1-4" in lines[0] and "config/tiny.py" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_config_value_is_one_line_naming_the_key(tiny_config):
    result = _run("run_sample.py", *_flags(tiny_config, 0, "--config.sample.eta", "0"), expect_rc=2)
    assert "sample.eta" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tiny_config.save_path)
