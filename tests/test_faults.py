"""Real faults: jobs killed with SIGKILL partway and resumed, bad input, bad data, non-finite numbers."""

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from b2diffurl.logs import read_run_metrics
from b2diffurl.models import rewards
from b2diffurl.stage.plan import plan_stage
from b2diffurl.stage.sample import sample_stage
from b2diffurl.stage.sample_file import load_samples
from b2diffurl.stage.select import select_stage
from b2diffurl.stage.train import train_stage

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _flags(config, *extra):
    return ["--config", "config/tiny_random.py", "--config.pretrained.model", config.pretrained.model,
            "--config.pretrained.build_tiny=False", "--config.save_path", config.save_path,
            "--config.log_dir", config.log_dir, "--config.stages.num_stages", "2", *extra]


# For loops whose test is about something else: the held-out evaluation (a script start and
# 128 images) is left to the tests of evaluation (test_generate) and of the loop's end (test_tracking).
NO_EVALUATION = ("--config.eval.every", "0")


def _tree_digest(folder):
    """{relative path: sha256} of every file below `folder`."""
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _run_until_killed(command, should_kill, timeout=300, sig=signal.SIGKILL, group=True, env=None):
    """Run `command` in its own process group; once should_kill(output) holds, send `sig` to the
    group (or, `group=False`, to the command's own process only) and wait for it to end.
    Returns (output, exit code, seconds from the signal to the end); fails if the command
    finished before the signal."""
    process = subprocess.Popen(command, cwd=REPO, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    output = []
    reader = threading.Thread(target=lambda: output.extend(iter(lambda: process.stdout.read(64), b"")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if should_kill(b"".join(output).decode(errors="replace")):
            sent = time.time()
            os.killpg(process.pid, sig) if group else process.send_signal(sig)
            try:
                code = process.wait(timeout=60)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            seconds = time.time() - sent
            reader.join(timeout=10)
            return b"".join(output).decode(errors="replace"), code, seconds
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("the command ended before the fault: " + b"".join(output).decode(errors="replace")[-2000:])


def _partial_files(folder):
    """Temporary files and folders (the atomic writes' .tmp-*) left anywhere below `folder`."""
    return [os.path.join(root, name) for root, dirs, names in os.walk(folder) for name in dirs + names
            if name.startswith(".tmp")]


def _comparable(records):
    """Metrics without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "seconds", "sampling_seconds", "images_per_second",
                                                        "training_seconds")} for r in records]


def _assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.slow
def test_killed_scripts_resume_to_the_uninterrupted_result(tiny_config, two_stage_run):
    ref_run = two_stage_run[1]  # the uninterrupted run, in this process (the library code the scripts call)
    process = ["bash", "run_process.sh", *_flags(tiny_config, *NO_EVALUATION)]
    run = os.path.join(tiny_config.save_path, "tiny_random")
    stage1 = os.path.join(run, "stage1")
    # Fault 1: killed while sampling stage 1 (after stage 0 completed).
    _run_until_killed(process, lambda out: "stage 1: split step" in out)
    stage0_files = _tree_digest(os.path.join(run, "stage0"))
    assert os.path.exists(os.path.join(run, "stage0", "COMPLETE"))
    # Fault 2: the rerun continues at stage 1 and is killed while selecting.
    output, _, _ = _run_until_killed(process, lambda out: "stage 1: scoring" in out)
    assert "which is gone; taking the lock over" in output  # the SIGKILLed loop could not let its lock go
    assert os.path.exists(os.path.join(stage1, "sample.pkl")) and not os.path.exists(os.path.join(stage1, "COMPLETE"))
    # Fault 3: SIGTERM to run_process.sh (pre-emption) while training, after some optimiser
    # steps were logged: the loop and its script stop within seconds with 143, leaving no partial file.
    metrics1 = os.path.join(stage1, "metrics.jsonl")
    output, code, seconds = _run_until_killed(
        process, lambda out: os.path.exists(metrics1) and "optimizer_step" in open(metrics1).read(),
        sig=signal.SIGTERM, group=False)
    assert code == 143 and seconds < 20, (code, seconds, output[-2000:])
    assert "error: stage 1, run_train.py: stopped by SIGTERM" in output and "stopped by SIGTERM in stage 1" in output
    assert not os.path.exists(os.path.join(stage1, "COMPLETE")) and not _partial_files(run)
    assert not os.path.exists(os.path.join(run, ".lock"))  # the loop let its lock go
    # The last rerun finishes.
    result = subprocess.run(process, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing at stage 1" in result.stdout

    assert _tree_digest(os.path.join(run, "stage0")) == stage0_files  # earlier stages never touched
    for stage in ("stage0", "stage1"):
        _assert_same_stage(run, ref_run, stage)
    assert _comparable(read_run_metrics(run)) == _comparable(read_run_metrics(ref_run))


BAD_INPUTS = [  # (flags, text the one error line must contain)
    (["--config.split_step", "11"], "split_step"),
    (["--config.stages.split_step_min", "8", "--config.stages.split_step_max", "4"], "split_step_min"),
    (["--config.num_branches", "0"], "num_branches"),
    (["--config.sample.eta", "0"], "sample.eta"),
    (["--config.sample.eta", "-1"], "sample.eta"),
    (["--config.eval.pos_threshold", "-0.8"], "pos_threshold"),
    (["--config.sample.batch_size", "0"], "sample.batch_size"),
    (["--config.train.batch_size", "0"], "train.batch_size"),
    (["--config.reward.name", "beauty"], "reward.name"),
    (["--config.prompt_file", "PROMPTS/missing.json"], "does not exist"),
    (["--config.prompt_file", "PROMPTS/empty.json"], "non-empty JSON list"),
    (["--config.prompt_file", "PROMPTS/numbers.json"], "not non-empty strings"),
    (["--config.prompt_file", "PROMPTS/broken.json"], "not valid JSON"),
    (["--config.resume_from", "/no/such/checkpoint"], "resume_from"),
    (["--config.no_such_key", "1"], "no_such_key"),
    (["--config.sample.decode_chunk_size", "0"], "decode_chunk_size"),
    pytest.param(["--config.train.use_8bit_adam=True"], "bitsandbytes", marks=pytest.mark.skipif(
        importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")),
]


@pytest.mark.parametrize("flags, message", BAD_INPUTS,
                         ids=[" ".join(getattr(case, "values", case)[0]) for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_config, tmp_path, flags, message):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "empty.json").write_text("[]")
    (prompts / "numbers.json").write_text('["a red apple", 7]')
    (prompts / "broken.json").write_text('["a red apple",')
    flags = [f.replace("PROMPTS", str(prompts)) for f in flags]
    run = os.path.join(tiny_config.save_path, "tiny_random")
    os.makedirs(os.path.join(run, "stage0"))
    with open(os.path.join(run, "stage0", "sample.pkl"), "w") as f:
        f.write("a file a previous attempt left")
    before = _tree_digest(tiny_config.save_path)
    result = subprocess.run([sys.executable, "run_sample.py", *_flags(tiny_config, *flags)], cwd=REPO, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert _tree_digest(tiny_config.save_path) == before


def test_a_truncated_sample_file_is_refused_with_one_line(tiny_config):
    tiny_config.stages.num_stages = 2
    sample_stage(tiny_config)
    path = plan_stage(tiny_config).paths.samples
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    result = subprocess.run([sys.executable, "run_select.py", *_flags(tiny_config)], cwd=REPO, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot be read as a sample file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sample_file_from_another_setting_is_refused(tiny_config):
    sample_stage(tiny_config)
    tiny_config.split_step = 3  # the sample file was made with s = 4
    with pytest.raises(Exception, match="split_step"):
        select_stage(tiny_config)


def test_non_finite_rewards_are_dropped_and_counted(tiny_config, monkeypatch):
    def half_nan(reward_config, device):
        colour = rewards.colour_match(reward_config, device)
        return lambda images, prompts: np.where(np.arange(len(images)) % 2 == 0, np.nan, colour(images, prompts))

    monkeypatch.setitem(rewards.REWARDS, "half_nan", half_nan)
    tiny_config.reward.name = "half_nan"
    tiny_config.reward.batch_size = 64
    tiny_config.eval.pos_threshold = tiny_config.eval.neg_threshold = 0.0  # select in every group
    sample_stage(tiny_config)
    select_stage(tiny_config)
    select = [m for m in read_run_metrics(os.path.join(tiny_config.save_path, "tiny_random")) if m["event"] == "select"][0]
    assert select["num_nonfinite_rewards"] == 16 and np.isfinite(select["reward_mean"])
    selected = load_samples(plan_stage(tiny_config).paths.selected, selected=True)
    assert len(selected["prompts"]) > 0 and torch.isfinite(selected["rewards"]).all()
    assert (selected["branch_id"] % 2 == 1).all()  # the NaN-scored (even) branches are never selected


def test_continuing_a_run_with_a_run_defining_setting_changed_is_refused(tiny_config):
    tiny_config.stages.num_stages = 2  # as _flags says
    sample_stage(tiny_config)  # the run now exists, made with T = 10
    run = os.path.join(tiny_config.save_path, "tiny_random")
    before = _tree_digest(run)
    result = subprocess.run([sys.executable, "run_sample.py", *_flags(tiny_config, "--config.sample.num_steps", "12")],
                            cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and "sample.num_steps" in result.stderr and "new exp_name" in result.stderr
    assert _tree_digest(run) == before
    # a shuffled-reward control is another run, not a continuation of this one
    result = subprocess.run([sys.executable, "-m", "b2diffurl.stage.plan", *_flags(tiny_config, "--config.reward.shuffle=True")],
                            cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and "reward.shuffle" in result.stderr
    # settings that do not define the run (here the learning rate) may change between stages
    result = subprocess.run([sys.executable, "-m", "b2diffurl.stage.plan", *_flags(tiny_config, "--config.train.learning_rate",
                                                                             "0.001")], cwd=REPO, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _one_error_line(result, code, *parts):
    """The command failed with `code` and one `error:` line holding every one of `parts`."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(part in errors[0] for part in parts), result.stderr[-3000:]
    return errors[0]


def _script(tiny_config, script, stage, *extra, env=None):
    return subprocess.run([sys.executable, script, *_flags(tiny_config, "--config.stage", str(stage), *extra)],
                          cwd=REPO, env=env or ENV, capture_output=True, text=True)


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused(tiny_config):
    process = ["bash", "run_process.sh", *_flags(tiny_config, *NO_EVALUATION)]
    first = subprocess.Popen(process, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock_file = os.path.join(tiny_config.save_path, "tiny_random", ".lock")
    deadline = time.time() + 120
    while not os.path.exists(lock_file) and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(process, cwd=REPO, env=ENV, capture_output=True, text=True)
    by_hand = _script(tiny_config, "run_select.py", 0)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    line = _one_error_line(second, 5, f"in use by process {first.pid} on host")
    assert "wait for it to end" in line
    _one_error_line(by_hand, 5, "in use by process")
    assert "all 2 stages done" in output and not os.path.exists(lock_file)


def test_a_failing_reward_stops_selection_naming_it_and_the_rerun_completes(tiny_config, tmp_path):
    module = tmp_path / "remote_scorer.py"
    module.write_text(
        "import os\n"
        "import numpy as np\n"
        "calls = 0\n"
        "def score(images, prompts):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls == int(os.environ.get('FAIL_ON_CALL', '0')):\n"
        "        raise ConnectionError('scorer unreachable')\n"
        "    return images.reshape(len(images), -1).mean(axis=1) / 255.0\n")
    env = {**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ENV.get('PYTHONPATH', '')}", "FAIL_ON_CALL": "2"}
    reward = ["--config.reward.name", "remote_scorer:score", "--config.reward.batch_size", "8"]
    tiny_config.stages.num_stages = 2
    tiny_config.reward.name = "remote_scorer:score"  # the run is made with it
    sample_stage(tiny_config)
    stage0 = plan_stage(tiny_config).paths
    before = _tree_digest(stage0.root)
    result = _script(tiny_config, "run_select.py", 0, *reward, env=env)
    _one_error_line(result, 4, "stage 0, run_select.py: reward remote_scorer:score failed on batch 2 of 4",
                    "ConnectionError: scorer unreachable")
    assert _tree_digest(stage0.root) == before  # nothing of the selection was written
    result = _script(tiny_config, "run_select.py", 0, *reward, "--config.reward.retries", "1", env=env)
    assert result.returncode == 0 and "retry 1 of 1" in result.stderr, result.stderr[-3000:]
    assert os.path.exists(stage0.selected) and os.path.exists(stage0.history)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


@pytest.mark.parametrize("damaged, script", [
    ("stage0/checkpoints/pytorch_lora_weights.safetensors", "run_sample.py"),
    ("stage0/checkpoints/optimizer.pt", "run_train.py"),
    ("stage0/history.json", "run_select.py"),
    ("run_config.json", "run_sample.py"),
])
def test_a_damaged_file_of_an_earlier_stage_is_one_line_naming_it(tiny_config, two_stage_run, damaged, script):
    tiny_config.stages.num_stages = 2
    shutil.copytree(two_stage_run[0], os.path.join(tiny_config.save_path, "tiny_random"))
    tiny_config.stage = 1
    if script != "run_sample.py":
        sample_stage(tiny_config)
    if script == "run_train.py":
        select_stage(tiny_config)
    run = os.path.join(tiny_config.save_path, "tiny_random")
    _truncate(os.path.join(run, damaged))
    result = _script(tiny_config, script, 1)
    recovery = "delete it and rerun" if damaged == "run_config.json" else "stage0 and the stage folders after it"
    _one_error_line(result, 2, os.path.join(run, damaged), recovery)
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def two_stage_run(tiny_model_dir, tmp_path_factory):
    """A two-stage run of the tiny config (as _flags sets it), in this process: (a copy of its
    run folder as stage 0 left it, its run folder after stage 1). Tests that need a completed
    stage 0 start from the copy, and a rerun after a fault must end where this uninterrupted run did."""
    from conftest import make_tiny_config, run_two_stages

    folder = str(tmp_path_factory.mktemp("two_stage_run"))
    return run_two_stages(make_tiny_config(tiny_model_dir, folder), folder)


def _assert_same_stage(run, reference, stage):
    """Stage `stage` of `run` holds the same samples, selection, LoRA and marker as `reference`'s."""
    for name in ("sample.pkl", "sample_stage.pkl"):
        _assert_same_tensors(torch.load(os.path.join(run, stage, name), weights_only=True),
                             torch.load(os.path.join(reference, stage, name), weights_only=True))
    lora = "checkpoints/pytorch_lora_weights.safetensors"
    _assert_same_tensors(load_file(os.path.join(run, stage, lora)), load_file(os.path.join(reference, stage, lora)))
    for name in ("history.json", "images.pt", "COMPLETE"):
        with open(os.path.join(run, stage, name), "rb") as f, open(os.path.join(reference, stage, name), "rb") as g:
            assert f.read() == g.read(), (stage, name)


STAGE_STEPS = {"run_sample.py": sample_stage, "run_select.py": select_stage, "run_train.py": train_stage}


@pytest.mark.parametrize("script, file", [
    ("run_sample.py", "sample.pkl"), ("run_sample.py", "images.pt"), ("run_select.py", "history.json"),
    ("run_select.py", "sample_stage.pkl"), ("run_train.py", "checkpoints"), ("run_train.py", "metrics.jsonl"),
    ("run_train.py", "README.md"), ("run_train.py", "COMPLETE"),
])
def test_a_full_disk_in_any_script_is_one_line_and_the_rerun_completes(tiny_config, two_stage_run, script, file):
    after_stage0, reference = two_stage_run
    tiny_config.stages.num_stages = 2
    run = os.path.join(tiny_config.save_path, "tiny_random")
    shutil.copytree(after_stage0, run)
    stage0 = _tree_digest(os.path.join(run, "stage0"))
    tiny_config.stage = 1
    steps = list(STAGE_STEPS)
    for earlier in steps[: steps.index(script)]:
        STAGE_STEPS[earlier](tiny_config)
    result = _script(tiny_config, script, 1, env={**ENV, "B2DIFFURL_FAIL_WRITE": file})
    _one_error_line(result, 3, f"stage 1, {script}: cannot write", file, "free")
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(run, "stage1", "COMPLETE")) and not _partial_files(run)
    if file != "metrics.jsonl":
        assert not os.path.exists(os.path.join(run, "stage1", file))
    assert _tree_digest(os.path.join(run, "stage0")) == stage0
    if file == "COMPLETE":  # the loop's rerun, once: it continues at the failed stage
        result = subprocess.run(["bash", "run_process.sh", *_flags(tiny_config, *NO_EVALUATION)], cwd=REPO, env=ENV,
                                capture_output=True, text=True)
        assert result.returncode == 0 and "continuing at stage 1" in result.stdout, result.stderr[-3000:]
    else:  # the failed script and those after it, rerun (the same library code the scripts call)
        for rerun in steps[steps.index(script):]:
            STAGE_STEPS[rerun](tiny_config)
    assert _tree_digest(os.path.join(run, "stage0")) == stage0
    _assert_same_stage(run, reference, "stage1")  # as if the disk had never filled


def test_stages_that_skip_every_optimiser_step_are_flagged_then_stop_the_run(tiny_config):
    from b2diffurl.errors import UntrainedStageError
    from b2diffurl.stage.sample_file import save_samples

    tiny_config.stages.num_stages = 3
    for stage in range(2):
        tiny_config.stage = stage
        sample_stage(tiny_config)
        select_stage(tiny_config)
        paths = plan_stage(tiny_config).paths
        selected = load_samples(paths.selected, selected=True)
        selected["advantages"] = torch.full_like(selected["advantages"], float("nan"))  # every loss non-finite
        save_samples(selected, paths.selected, selected=True)
        if stage == 0:
            train_stage(tiny_config)
        else:
            with pytest.raises(UntrainedStageError, match="stage 1 was skipped .* since 0 \\(2 in a row"):
                train_stage(tiny_config)
    run = os.path.join(tiny_config.save_path, "tiny_random")
    assert os.path.exists(os.path.join(run, "stage0", "COMPLETE"))
    assert not os.path.exists(os.path.join(run, "stage1", "COMPLETE"))
    assert not os.path.exists(os.path.join(run, "stage1", "checkpoints"))
    from b2diffurl.analysis.stage_table import stage_table

    assert stage_table(read_run_metrics(run))[0]["train"] == "UNTRAINED"


def test_sigterm_to_a_script_run_by_hand_is_a_prompt_exit_143_without_partial_files(tiny_config):
    command = [sys.executable, "run_sample.py", *_flags(tiny_config, "--config.sample.num_batches_per_stage", "8")]
    output, code, seconds = _run_until_killed(command, lambda out: "stage 0 sample:  " in out and "1/8" in out,
                                              sig=signal.SIGTERM, group=False)
    assert code == 143 and seconds < 20, (code, seconds, output[-2000:])
    assert "error: stage 0, run_sample.py: stopped by SIGTERM" in output and "Traceback" not in output
    run = os.path.join(tiny_config.save_path, "tiny_random")
    assert not _partial_files(run) and not os.path.exists(os.path.join(run, ".lock"))
    assert not os.path.exists(os.path.join(run, "stage0", "sample.pkl"))
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
