"""The tools researchers track runs with: W&B (offline) and TensorBoard logs, the model card
beside every LoRA, and the report's success rates, on a short quickstart run (config/tiny.py,
fewer images) whose stage 0 is run by hand and whose stage 1 run_process.sh continues."""

import glob
import importlib.util
import os
import re
import struct
import subprocess
import sys

import pytest
from conftest import REPO

QUICK = ["--config.save_path", None, "--config.log_dir", None, "--config.stages.num_stages=2",
         "--config.sample.num_batches_per_stage=4", "--config.sample.save_png=False", "--config.eval.max_prompts=16",
         "--config.eval.every=1", "--config.report_to=tensorboard,wandb"]


def _wandb_records(path: str) -> list:
    """The protobuf records of a W&B transaction log (run-*.wandb): a 7-byte file header, then
    LevelDB-style blocks of 32 KiB holding records (crc32, length, type) that may span blocks."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        room = 32768 - offset % 32768
        if room < 7:  # the rest of a block too short for a header is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if length == 0 and kind == 0:
            break
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _history(run_dir: str) -> tuple[set, list[dict]]:
    """(the run ids, every history row) of the W&B logs under {run}/wandb, in time order."""
    ids, rows = set(), []
    for path in sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))):
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                rows.append({"/".join(item.nested_key) or item.key: item.value_json for item in record.history.item})
    return ids, rows


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A two-stage run of config/tiny.py: stage 0 by its three scripts, then run_process.sh
    (which continues at stage 1, evaluates it and draws the report). Returns the run folder."""
    if importlib.util.find_spec("wandb") is None or importlib.util.find_spec("tensorboard") is None:
        pytest.skip("wandb and tensorboard (requirements-extras.txt) are not installed")
    root = tmp_path_factory.mktemp("quick")
    flags = ["--config", "config/tiny.py", *QUICK]
    flags[flags.index("--config.save_path") + 1] = str(root / "runs")
    flags[flags.index("--config.log_dir") + 1] = str(root / "log")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        result = subprocess.run([sys.executable, script, *flags, "--config.stage=0"], cwd=REPO, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        # 32 groups: a stage with no contrasting group (the model draws alike in all K branches) skips training
        assert "training skipped" not in result.stderr, result.stderr[-3000:]
    result = subprocess.run(["bash", "run_process.sh", *flags], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing at stage 1" in result.stdout
    return str(root / "runs" / "tiny")


@pytest.mark.slow  # the quick run they share
def test_wandb_logs_every_stage_of_a_continued_run_into_one_run(quick_run):
    import json

    run_id = json.load(open(os.path.join(quick_run, "tracking.json")))["wandb_run_id"]
    ids, rows = _history(quick_run)
    assert ids == {run_id}  # 3 scripts by hand, then 3 scripts and the evaluation under run_process.sh
    assert [int(row["_step"]) for row in rows] == list(range(7))  # one record each, steps rising across resumes
    logged = {}
    for row in rows:
        stage = int(json.loads(row["progress/stage"]))
        for key, value in row.items():
            logged.setdefault(key, {})[stage] = json.loads(value)
    for key in ("reward/mean", "reward/max", "reward/success_rate", "reward/success_ci95_low",
                "reward/success_ci95_high", "selection/selected", "selection/positive", "train/loss",
                "train/approx_kl", "train/clipfrac", "train/grad_norm", "sample/images_per_second",
                "progress/images_sampled"):
        assert set(logged[key]) == {0, 1}, key
    assert logged["progress/images_sampled"] == {0: 4 * 8 * 4, 1: 2 * 4 * 8 * 4}  # batches x prompts x K
    assert 0 <= logged["reward/success_ci95_low"][1] <= logged["reward/success_rate"][1] \
        <= logged["reward/success_ci95_high"][1] <= 1
    assert set(logged["eval/success/two_objects_held-out/success_rate"]) == {1}  # the evaluation of the last stage
    assert "eval_base/reward_mean" in logged and set(logged["best_worst/_type"]) == {0, 1}  # the grid of each stage
    files = glob.glob(os.path.join(quick_run, "wandb", "offline-run-*", "files", "media", "images", "best_worst*"))
    assert len(files) == 2  # the grid of each stage


@pytest.mark.slow  # the quick run they share
def test_tensorboard_logs_the_same_scalars_against_the_stage(quick_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(quick_run, "tensorboard", "tiny")).Reload()
    tags = events.Tags()["scalars"]
    for tag in ("reward/success_rate", "train/loss", "selection/selected", "progress/images_sampled",
                "eval/success/two_objects_held-out/success_rate"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    assert [e.value for e in events.Scalars("progress/images_sampled")][-1] == 2 * 4 * 8 * 4
    assert "best_worst" in events.Tags()["images"]


@pytest.mark.slow  # the quick run they share
def test_every_lora_has_a_model_card_that_loads_in_plain_diffusers(quick_run, tmp_path):
    from huggingface_hub import ModelCard

    for stage in (0, 1):
        card = ModelCard.load(os.path.join(quick_run, f"stage{stage}", "checkpoints", "README.md"))
        assert card.data.library_name == "diffusers" and card.data.base_model == "model/shapes-sd"
        assert {"lora", "text-to-image", "reinforcement-learning"} <= set(card.data.tags)
        assert f"stage {stage} of 2" in card.text and "images sampled by the run so far: " in card.text
        assert "bash run_process.sh config/tiny.py" in card.text and not re.search(r"--config\.stage[= ]", card.text)
    assert "| success: two objects, held-out | 0." in card.text  # stage 1 was evaluated: its result and the base's
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert "load_lora_weights" in snippet
    out = tmp_path / "snippet"
    out.mkdir()
    script = snippet.replace('"model/', f'"{REPO}/model/').replace('image.save("sample.png")',
                                                                   f'image.save("{out}/sample.png")')
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    assert Image.open(out / "sample.png").size == (32, 32)


@pytest.mark.slow  # the quick run they share
def test_the_report_draws_success_rates_with_intervals_in_the_unit_range(quick_run):
    from b2diffurl.analysis.run_data import collect

    data = collect(quick_run)
    low, high = data["reward_success_ci95_low"], data["reward_success_ci95_high"]
    assert len(low) == 2 and (0 <= low).all() and (low <= data["reward_success_rate"]).all() and (high <= 1).all()
    rate = data["eval_success"]["two objects, held-out"]
    assert 0 <= rate["ci95_low"][0] <= rate["success_rate"][0] <= rate["ci95_high"][0] <= 1
    assert list(data["images_sampled"]) == [128, 256]
    assert os.path.exists(os.path.join(quick_run, "report.png"))


def test_report_to_is_checked_before_anything_loads(tiny_config):
    result = subprocess.run([sys.executable, "run_sample.py", "--config", "config/tiny_random.py",
                             "--config.report_to=tensorboard,mlflow"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "'mlflow' is not a tracker" in result.stderr
