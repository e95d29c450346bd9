"""Two processes under `accelerate launch` on CPU (gloo): sharded sampling, DDP training.

The stage is run once by one process (in the test's own) and once by two, all with one thread so
that the arithmetic is the same: the two shards together must hold exactly the one-process
samples, and training must end with the same LoRA on both processes and (up to the order in
which gradients are summed) the one-process LoRA.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from b2diffurl.logs import read_metrics
from b2diffurl.stage.sample_file import concatenate, load_samples

SCRIPTS = ("run_sample.py", "run_select.py", "run_train.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir, tmp_path_factory):
    """The reference: two stages of the tiny config as _loop_flags sets it, in this process with
    one thread (as the launched processes have). Returns (a copy of the run folder as stage 0
    left it, the run folder)."""
    from conftest import make_tiny_config, run_two_stages

    folder = str(tmp_path_factory.mktemp("one_process"))
    config = make_tiny_config(tiny_model_dir, folder)
    config.report_to, config.sample.save_png, config.train.gradient_accumulation_steps = "none", False, 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_two_stages(config, folder)
    finally:
        torch.set_num_threads(threads)


def _run_stage(tiny_config, save_path, launcher):
    flags = [*_loop_flags(tiny_config, save_path, os.path.join(save_path, "log")), "--config.stage", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    logs = ""
    for script in SCRIPTS:
        result = subprocess.run([*launcher, script, *flags], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        logs += result.stderr
    return os.path.join(save_path, "tiny_random", "stage0"), logs


def _lora(stage):
    return load_file(os.path.join(stage, "checkpoints", "pytorch_lora_weights.safetensors"))


@pytest.mark.slow
def test_two_processes_shard_sampling_and_train_with_synchronised_gradients(tiny_config, tmp_path, one_process_run):
    one = os.path.join(one_process_run[1], "stage0")
    two, logs = _run_stage(tiny_config, str(tmp_path / "two"), LAUNCH)

    # Sampling: one shard a process, together exactly the one-process samples.
    assert not os.path.exists(os.path.join(two, "sample.pkl"))
    shards = [load_samples(os.path.join(two, f"sample.{rank}-of-2.pkl")) for rank in range(2)]
    assert all(len(shard["prompts"]) == len(shards[0]["prompts"]) > 0 for shard in shards)
    assert set(shards[0]["group_id"].tolist()).isdisjoint(shards[1]["group_id"].tolist())
    joined = concatenate(shards)
    single = load_samples(os.path.join(one, "sample.pkl"))
    order = torch.argsort(joined["group_id"] * single["meta"]["num_branches"] + joined["branch_id"])
    assert len(joined["prompts"]) == len(single["prompts"])
    assert [joined["prompts"][i] for i in order] == single["prompts"]
    assert torch.equal(joined["latents"][order], single["latents"])
    assert torch.equal(joined["log_probs"][order], single["log_probs"])
    sample_event = read_metrics(os.path.join(two, "metrics.jsonl"))[0]
    assert sample_event["event"] == "sample" and sample_event["num_samples"] == len(single["prompts"])
    assert sample_event["num_processes"] == 2

    # Selection read both shards: the same selection as one process.
    selected = {name: load_samples(os.path.join(stage, "sample_stage.pkl"), selected=True) for name, stage in
                (("one", one), ("two", two))}
    assert selected["one"]["prompts"] == selected["two"]["prompts"]
    assert torch.equal(selected["one"]["advantages"], selected["two"]["advantages"])

    # Training: DDP, every process ends with the same LoRA (checked in run_train.py across the
    # processes), equal to the one-process LoRA up to summation order, and moved from the start.
    assert "the LoRA weights of all 2 processes are identical" in logs
    train_event = [m for m in read_metrics(os.path.join(two, "metrics.jsonl")) if m["event"] == "train"][-1]
    assert train_event["num_processes"] == 2 and train_event["optimizer_steps"] > 0
    lora_one, lora_two = _lora(one), _lora(two)
    assert lora_one.keys() == lora_two.keys()
    for key in lora_one:
        torch.testing.assert_close(lora_two[key], lora_one[key], rtol=1e-3, atol=1e-5)
    difference = max((lora_two[k] - lora_one[k]).abs().max().item() for k in lora_one if "lora.up" in k)
    assert max(lora_two[k].abs().max().item() for k in lora_two if "lora.up" in k) > 100 * difference
    assert os.path.exists(os.path.join(two, "COMPLETE"))


def _process_of_rank(rank: int, marker: str) -> int | None:
    """The pid of the launched worker of `rank` whose environment holds `marker`, if running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in environ and f"LOCAL_RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_dead_rank_ends_the_launch_and_the_rerun_completes(tiny_config, tmp_path, one_process_run):
    import signal
    import time

    from b2diffurl.paths import StagePaths

    marker = f"B2DIFFURL_TEST_RUN={tmp_path.name}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", marker.split("=")[0]: marker.split("=")[1],
           "LAUNCH": " ".join(LAUNCH)}
    flags = _loop_flags(tiny_config, tiny_config.save_path, tiny_config.log_dir, "--config.eval.every", "0",
                        "--config.process_timeout", "30")
    tiny_config.stages.num_stages = 2
    shutil.copytree(one_process_run[0], os.path.join(tiny_config.save_path, "tiny_random"))  # stage 0 is complete
    stage1 = StagePaths.of(tiny_config, 1)
    for when in ("sampling", "training"):  # stage 1 dies in sampling; the rerun's stage 1 dies in training
        process = subprocess.Popen(["bash", "run_process.sh", *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline, killed = time.time() + 600, None
        while process.poll() is None and time.time() < deadline and killed is None:
            ready = (os.path.exists(stage1.root) if when == "sampling" else
                     os.path.exists(stage1.metrics) and "optimizer_step" in open(stage1.metrics).read())
            pid = _process_of_rank(1, marker) if ready else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = time.time()
            time.sleep(0.05)
        assert killed is not None, "the worker of rank 1 was never seen"
        output, _ = process.communicate(timeout=120)
        seconds = time.time() - killed
        assert process.returncode != 0 and seconds < 90, (process.returncode, seconds, output[-3000:])
        failed = [line for line in output.splitlines() if line.startswith("=== stage 1/2:") and "failed" in line]
        assert failed and ("run_sample.py" if when == "sampling" else "run_train.py") in failed[0], output[-3000:]
        assert StagePaths.of(tiny_config, 0).is_complete() and not stage1.is_complete()
    result = subprocess.run(["bash", "run_process.sh", *flags], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0 and "continuing at stage 1" in result.stdout, result.stderr[-3000:]
    assert "interrupted; clearing" in result.stdout  # the dead attempt's shards are gone, not mixed in
    assert len(load_samples(stage1.samples.replace("sample.pkl", "sample.0-of-2.pkl"))["prompts"]) == 16


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machines(tiny_config, out: str, job: str, save_paths: tuple[str, str]) -> list[subprocess.Popen]:
    """Two "machines" on this host, as on a cluster: one run_process.sh per machine rank, each with
    accelerate's multi-machine launch (one process a machine, gloo over the loopback address), the
    same job identity and (unless `save_paths` differ) one run folder."""
    port = _free_port()
    processes = []
    for rank, save_path in enumerate(save_paths):
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                  "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MACHINE_RANK": str(rank),
               "B2DIFFURL_JOB_ID": job, "LAUNCH": " ".join(launch)}
        flags = _loop_flags(tiny_config, save_path, os.path.join(out, "log"), *EVALUATED)
        processes.append(subprocess.Popen(["bash", "run_process.sh", *flags], cwd=REPO, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return processes


def _loop_flags(tiny_config, save_path: str, log_dir: str, *extra: str) -> list[str]:
    """The scripts' flags for two stages of the session's tiny model in `save_path`, as
    one_process_run makes them. 16 selected samples in batches of 4, 3 batches an optimiser
    step: groups of 3 and 1 batches, so that some process of two runs a padding (weight-0)
    pass in every step."""
    return ["--config", "config/tiny_random.py", "--config.pretrained.model", tiny_config.pretrained.model,
            "--config.pretrained.build_tiny=False", "--config.save_path", save_path, "--config.log_dir", log_dir,
            "--config.stages.num_stages", "2", "--config.report_to=none", "--config.sample.save_png=False",
            "--config.train.gradient_accumulation_steps", "3", *extra]


EVALUATED = ("--config.eval.every", "2", "--config.eval.max_prompts", "4")


@pytest.mark.slow
def test_two_machines_run_one_loop_each_on_a_shared_folder_as_one_process_would(tiny_config, tmp_path,
                                                                               one_process_run):
    import time

    from b2diffurl.paths import LOCK_FILE

    one = one_process_run[1]
    shared = str(tmp_path / "two")
    machines = _machines(tiny_config, str(tmp_path), "job-17", (shared, shared))
    run = os.path.join(shared, "tiny_random")
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(run, LOCK_FILE)) and time.time() < deadline:
        time.sleep(0.2)
    # A second job on the same folder, while the two machines hold it: refused with the lock's line.
    other_flags = _loop_flags(tiny_config, shared, str(tmp_path / "other"), *EVALUATED)
    other = subprocess.run(["bash", "run_process.sh", *other_flags],
                           cwd=REPO, env={**os.environ, "B2DIFFURL_JOB_ID": "job-18"}, capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 5 and "error: run folder" in other.stderr and "job job-17" in other.stderr, other.stderr
    outputs = [process.communicate(timeout=900)[0] for process in machines]
    assert [process.returncode for process in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    # Machine rank 0 evaluated and drew the report; rank 1 waited for it in the launches.
    assert "evaluation on held-out prompts" in outputs[0] and "evaluation" not in outputs[1]
    assert os.path.exists(os.path.join(run, "stage1", "evaluation.json")) and not os.path.exists(
        os.path.join(run, LOCK_FILE))
    assert os.path.exists(os.path.join(str(tmp_path), "log", "tiny_random", "stage1.machine1.log"))

    for stage in (0, 1):
        single = load_samples(os.path.join(one, f"stage{stage}", "sample.pkl"))
        joined = concatenate([load_samples(os.path.join(run, f"stage{stage}", f"sample.{rank}-of-2.pkl"))
                              for rank in range(2)])
        order = torch.argsort(joined["group_id"] * single["meta"]["num_branches"] + joined["branch_id"])
        assert [joined["prompts"][i] for i in order] == single["prompts"]
        if stage == 0:  # the same policy: the same samples, bit for bit
            assert torch.equal(joined["latents"][order], single["latents"])
            assert torch.equal(joined["log_probs"][order], single["log_probs"])
        else:  # from LoRAs equal up to the order of gradient sums
            torch.testing.assert_close(joined["latents"][order], single["latents"], rtol=1e-3, atol=1e-4)
        chosen = [load_samples(os.path.join(folder, f"stage{stage}", "sample_stage.pkl"), selected=True)
                  for folder in (one, run)]
        assert chosen[0]["prompts"] == chosen[1]["prompts"]
        if stage == 0:
            assert torch.equal(chosen[1]["advantages"], chosen[0]["advantages"])
        else:  # rewards of images that differ by ~1e-4, normalised within a prompt's few samples
            torch.testing.assert_close(chosen[1]["advantages"], chosen[0]["advantages"], rtol=0, atol=5e-3)
        lora_one, lora_two = (_lora(os.path.join(folder, f"stage{stage}"))
                              for folder in (one, run))
        for key in lora_one:
            torch.testing.assert_close(lora_two[key], lora_one[key], rtol=1e-3, atol=1e-5)


def test_a_machine_that_cannot_see_the_shared_folder_is_refused(tiny_config, tmp_path):
    machines = _machines(tiny_config, str(tmp_path), "job-19", (str(tmp_path / "shared"), str(tmp_path / "local")))
    outputs = [process.communicate(timeout=600)[0] for process in machines]
    for process, output in zip(machines, outputs):
        last = output.strip().splitlines()[-1]
        assert process.returncode == 6, output[-3000:]
        assert "failed with exit code 6 (error: " in last and "is not the same for every process" in last, last
