"""The faults of a long run on a shared box: a full disk, a failing reward, SIGTERM, two runs on
one folder, damaged files, stages that do not train. Unit tests here; the same faults on real
processes are in test_faults.py."""

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from b2diffurl import files
from b2diffurl.errors import (
    DamagedFileError,
    DiskSpaceError,
    RewardError,
    RunLockedError,
    UntrainedStageError,
    UserError,
    exit_code,
)
from b2diffurl.logs import append_metrics, read_metrics
from b2diffurl.models.rewards import score_images
from b2diffurl.stage import lock


def _listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture()
def small_filesystem(tmp_path):
    """A real 64 KiB filesystem (tmpfs), where the machine lets the test mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield str(mount)
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_raises_one_error_naming_the_file_and_leaves_nothing(small_filesystem):
    path = os.path.join(small_filesystem, "sample.pkl")
    with pytest.raises(DiskSpaceError, match=r"cannot write .*sample\.pkl: .*\(0\.\d MiB free\)"):
        files.atomic_torch_save(torch.zeros(100_000), path)  # 400 kB into 64 KiB
    assert _listing(small_filesystem) == []
    files.atomic_write_json({"fits": True}, path)  # and a write that fits still works
    assert _listing(small_filesystem) == ["sample.pkl"]


def test_an_injected_write_failure_by_name_and_by_count(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_writes", 0)
    monkeypatch.setenv("B2DIFFURL_FAIL_WRITE", "history.json")
    files.atomic_write_json({}, str(tmp_path / "other.json"))
    with pytest.raises(DiskSpaceError, match="history.json.*injected"):
        files.atomic_write_json({}, str(tmp_path / "history.json"))
    monkeypatch.setenv("B2DIFFURL_FAIL_WRITE", "4")  # the 4th write of the process: the 2nd from here
    files.atomic_write_json({}, str(tmp_path / "a.json"))
    with pytest.raises(DiskSpaceError, match="b.json"):
        files.atomic_write_json({}, str(tmp_path / "b.json"))
    assert _listing(tmp_path) == ["a.json", "other.json"]
    assert exit_code(DiskSpaceError()) == 3


def test_a_failed_metrics_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    append_metrics(path, stage=0, event="sample")
    with open(path, "rb") as f:
        before = f.read()
    monkeypatch.setenv("B2DIFFURL_FAIL_WRITE", "metrics.jsonl")
    with pytest.raises(DiskSpaceError):
        append_metrics(path, stage=0, event="select")
    with open(path, "rb") as f:
        assert f.read() == before
    assert [r["event"] for r in read_metrics(path)] == ["sample"]


def test_written_files_get_the_permissions_open_would_give(tmp_path):
    previous = os.umask(0o022)
    try:
        files.atomic_write_json({}, str(tmp_path / "a.json"))
        append_metrics(str(tmp_path / "m.jsonl"), stage=0, event="x")
    finally:
        os.umask(previous)
    assert oct(os.stat(tmp_path / "a.json").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "m.jsonl").st_mode & 0o777) == oct(0o644)


def test_a_damaged_json_file_names_itself_and_the_way_back(tmp_path):
    stage = tmp_path / "run" / "stage3"
    stage.mkdir(parents=True)
    (stage / "history.json").write_text('{"scores": [1, 2')
    with pytest.raises(DamagedFileError, match=r"history\.json is damaged .*delete .*stage3 and the stage folders after"):
        files.read_json(str(stage / "history.json"))
    (tmp_path / "run" / "run_config.json").write_text("\x00\x00")
    with pytest.raises(DamagedFileError, match="run_config.json is damaged .*delete it and rerun"):
        files.read_json(str(tmp_path / "run" / "run_config.json"))
    assert exit_code(DamagedFileError()) == 2 and isinstance(DamagedFileError(), UserError)


def _colour_reward(images, prompts):
    return images.reshape(len(images), -1).mean(axis=1) / 255.0


class _Flaky:
    """A reward that raises on its calls numbered in `failing` (1-based)."""

    def __init__(self, failing):
        self.failing, self.calls = set(failing), 0

    def __call__(self, images, prompts):
        self.calls += 1
        if self.calls in self.failing:
            raise TimeoutError("the scorer did not answer")
        return _colour_reward(images, prompts)


def test_a_reward_that_raises_names_itself_and_the_batch(caplog):
    images = np.random.default_rng(0).integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(RewardError, match=r"reward pkg\.mod:score failed on batch 3 of 5 \(images 4\.\.5\): "
                                          r"TimeoutError: the scorer did not answer"):
        score_images(_Flaky([3]), images, ["p"] * 10, batch_size=2, name="reward pkg.mod:score")
    assert "Traceback" in caplog.text  # the reward's own traceback is logged: it is the user's code
    assert exit_code(RewardError()) == 4
    # a passing failure is retried
    flaky = _Flaky([2, 3])
    np.testing.assert_allclose(score_images(flaky, images, ["p"] * 10, 4, retries=2, retry_wait=0),
                               _colour_reward(images, None))
    assert flaky.calls == 5


@pytest.mark.parametrize("output, message", [
    (lambda n: np.zeros(n + 1), r"shape \(4,\) for 3 images"),
    (lambda n: np.zeros((n, 2)), r"shape \(3, 2\) for 3 images"),
    (lambda n: ["good"] * n, "non-numbers"),
    (lambda n: None, r"shape \(\)"),
])
def test_a_reward_that_returns_the_wrong_thing_is_refused(output, message):
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(RewardError, match=message):
        score_images(lambda im, pr: output(len(im)), images, ["p"] * 3, batch_size=8, name="reward r")


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_run_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
    run = str(tmp_path / "run")
    lock.acquire(run)
    holder = lock.read_holder(run)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    lock.acquire(run)  # the holder again: fine
    parent = os.getppid()  # a live process that is not this one
    with pytest.raises(RunLockedError, match=rf"in use by process {os.getpid()} on host {socket.gethostname()}"):
        lock.acquire(run, parent)
    assert exit_code(RunLockedError()) == 5
    lock.release(run, parent)  # not the holder: nothing happens
    assert lock.read_holder(run)["pid"] == os.getpid()
    lock.release(run)
    assert lock.read_holder(run) is None

    dead = _dead_pid()
    lock.acquire(run, dead)
    lock.acquire(run)  # its holder is gone: taken over, with a warning
    assert lock.read_holder(run)["pid"] == os.getpid() and f"process {dead}" in caplog.text
    lock.release(run)

    with open(os.path.join(run, ".lock"), "w") as f:  # held on another machine: never taken over
        json.dump({"host": "gpu-node-7", "pid": dead, "since": 0}, f)
    with pytest.raises(RunLockedError, match="host gpu-node-7.*delete"):
        lock.acquire(run)
    assert not [name for name in os.listdir(run) if name.startswith(".tmp")]


def test_a_script_under_run_process_uses_its_lock_and_refuses_anothers(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    lock.acquire(run, os.getppid())  # run_process.sh, say
    monkeypatch.setenv(lock.HOLDER_VARIABLE, str(os.getppid()))
    with lock.run_lock(run):
        assert lock.read_holder(run)["pid"] == os.getppid()
    assert lock.read_holder(run)["pid"] == os.getppid()  # still run_process.sh's
    monkeypatch.delenv(lock.HOLDER_VARIABLE)
    with pytest.raises(RunLockedError):  # the same script by hand, while the loop runs
        with lock.run_lock(run):
            pass


def test_the_nodes_of_one_job_share_the_lock_and_another_job_is_refused(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(lock.JOB_VARIABLE, "4242")
    lock.acquire(run, os.getppid())  # machine rank 0's run_process.sh
    assert lock.read_holder(run)["job"] == "4242"
    lock.acquire(run, os.getpid())  # machine rank 1's, in the same job: shares it
    assert lock.read_holder(run)["pid"] == os.getppid()
    monkeypatch.setenv(lock.HOLDER_VARIABLE, str(os.getpid()))  # a script started by machine rank 1's loop
    with lock.run_lock(run):
        pass
    monkeypatch.delenv(lock.HOLDER_VARIABLE)
    monkeypatch.setenv(lock.JOB_VARIABLE, "4343")  # another job on the same folder
    with pytest.raises(RunLockedError, match="in use by .*job 4242"):
        lock.acquire(run, os.getpid())
    monkeypatch.delenv(lock.JOB_VARIABLE)  # no job at all
    with pytest.raises(RunLockedError, match="job 4242"):
        lock.acquire(run, os.getpid())
    lock.release(run, os.getpid())  # neither the holder nor its job: nothing happens
    assert lock.read_holder(run)["pid"] == os.getppid()

    with open(os.path.join(run, ".lock"), "w") as f:  # the same Slurm job, requeued onto another node
        json.dump({"host": "gpu-node-7", "pid": _dead_pid(), "since": 0, "job": "4242"}, f)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lock.acquire(run, os.getpid())
    assert lock.read_holder(run)["host"] == "gpu-node-7"
    lock.release(run, os.getpid())  # machine rank 0 of the job releases it for every node
    assert lock.read_holder(run) is None


def test_the_lock_command_exits_5_with_one_line(tmp_path):
    run = str(tmp_path / "run")
    lock.acquire(run)
    result = subprocess.run([sys.executable, "-m", "b2diffurl.stage.lock", "acquire", run, str(os.getppid())],
                            capture_output=True, text=True)
    assert result.returncode == 5 and result.stderr.startswith("error: run folder") and result.stderr.count("\n") == 1


def test_untrained_streaks_stop_the_run(tmp_path):
    from config import tiny_random

    from b2diffurl.paths import StagePaths
    from b2diffurl.stage.train import _refuse_untrained_streak

    config = tiny_random.get_config()
    config.save_path = str(tmp_path)
    config.train.max_untrained_stages = 2
    for stage, untrained in ((0, False), (1, True)):
        files.atomic_write_json({"untrained": untrained}, StagePaths.of(config, stage).complete_marker)
    _refuse_untrained_streak(config, 1, 4)  # one in a row: a warning
    with pytest.raises(UntrainedStageError, match=r"4 optimiser steps of stage 2 .*since 1 \(2 in a row"):
        _refuse_untrained_streak(config, 2, 4)
    config.train.max_untrained_stages = 3
    _refuse_untrained_streak(config, 2, 4)


def test_errno_of_an_injected_fault_is_enospc(tmp_path, monkeypatch):
    monkeypatch.setenv("B2DIFFURL_FAIL_WRITE", "x.json")
    with pytest.raises(OSError) as caught:
        files._injected_fault(str(tmp_path / "x.json"))
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.parametrize("keep", ["last", "none"])
def test_complete_stages_drop_their_sample_files_and_the_run_goes_on(tiny_config, keep):
    from b2diffurl.analysis.evaluate import evaluate
    from b2diffurl.stage import retention
    from b2diffurl.paths import StagePaths
    from b2diffurl.stage.sample import sample_stage
    from b2diffurl.stage.select import select_stage
    from b2diffurl.stage.train import train_stage

    tiny_config.keep_sample_files = "all"
    tiny_config.stages.num_stages = 3
    tiny_config.sample.save_png = True
    sample_stage(tiny_config)
    stage0 = StagePaths.of(tiny_config, 0)
    estimate = retention.stage_footprint(tiny_config)  # at the largest split step; stage 0 has the smallest
    select_stage(tiny_config)
    measured = {name: retention.size_on_disk(path) for name, path in (("sample_files", stage0.samples), ("images", stage0.images),
                                                                ("selected", stage0.selected), ("pngs", stage0.image_dir))}
    assert measured["images"] == pytest.approx(estimate["images"], rel=0.05)  # + torch.save's own bytes
    assert 0.3 < measured["sample_files"] / estimate["sample_files"] <= 1.0
    assert 0.3 < measured["pngs"] / estimate["pngs"] <= 1.5
    train_stage(tiny_config)
    tiny_config.keep_sample_files = keep
    for stage in (1, 2):
        tiny_config.stage = stage
        sample_stage(tiny_config)
        select_stage(tiny_config)
        train_stage(tiny_config)
    kept = {stage: bool(retention.sample_files(StagePaths.of(tiny_config, stage).root)) for stage in range(3)}
    assert kept == {0: False, 1: False, 2: keep == "last"}
    for stage in range(3):  # what evaluation, reports and continuation read stays
        paths = StagePaths.of(tiny_config, stage)
        for path in (paths.checkpoint, paths.history, paths.metrics, paths.best_worst_grid, paths.complete_marker):
            assert os.path.exists(path), path
    assert "keep_sample_files = " in retention.describe_footprint(tiny_config)
    report = evaluate(tiny_config, stage=2, num_images=1, with_base=False)
    assert report["results"]


def test_a_stage_that_would_not_fit_is_refused_before_it_starts(tiny_config, small_filesystem):
    from b2diffurl.stage import retention

    tiny_config.save_path = small_filesystem
    with pytest.raises(DiskSpaceError, match=r"stage0 needs about 0\.\d MiB and .*small has 0\.\d MiB free"):
        retention.check_free_space(tiny_config, os.path.join(small_filesystem, "tiny_random", "stage0"))
