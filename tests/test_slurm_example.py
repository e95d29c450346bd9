"""examples/slurm.sbatch's own logic, without a cluster: the batch script runs under bash with
Slurm's variables set and `srun` / `scontrol` replaced by stand-ins (srun runs the task body once
per task, with its SLURM_PROCID), and run_process.sh by one that records what it was given. The
launch line each node builds must parse as accelerate's multi-machine launch, with the main
node's address, and a loop stopped by SIGTERM (143) must requeue the job. tools/slurm_check.sh
runs the same script through a real one-node Slurm (docs/performance.md)."""

import os
import shlex
import subprocess

import pytest
from accelerate.commands.launch import launch_command_parser

from b2diffurl.files import REPO

EXAMPLE = os.path.join(REPO, "examples", "slurm.sbatch")

SRUN = """#!/bin/bash
# srun [OPTIONS] bash -c BODY: BODY once a task, in parallel, SLURM_PROCID set; the worst exit code
while [[ $1 == --* ]]; do shift; done
pids=()
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do SLURM_PROCID=$rank "$@" & pids+=($!); done
worst=0
for pid in "${pids[@]}"; do wait "$pid" || { code=$?; ((code > worst)) && worst=$code; }; done
exit $worst
"""
SCONTROL = """#!/bin/bash
case $1 in
  show) printf 'gpu-node-17\\ngpu-node-18\\n' ;;
  requeue) echo "$2" >>"$SHARED/requeued" ;;
esac
"""
RUN_PROCESS = """#!/bin/bash
{ echo "MACHINE_RANK=$MACHINE_RANK"; echo "LAUNCH=$LAUNCH"; echo "ARGS=$*"; } >"$SHARED/task$MACHINE_RANK"
exit $LOOP_EXIT
"""


def _submit(tmp_path, loop_exit: int) -> tuple[subprocess.CompletedProcess, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "run_process.sh").write_text(RUN_PROCESS)
    shared = tmp_path / "shared"
    shared.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-node-[17-18]", "SLURM_NTASKS": "2", "SLURM_GPUS_ON_NODE": "8",
           "SHARED": str(shared), "FLAGS": "--config.stages.num_stages 4", "LOOP_EXIT": str(loop_exit)}
    result = subprocess.run(["bash", EXAMPLE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return result, str(shared)


def test_each_node_launches_its_machine_rank_of_one_multi_machine_run(tmp_path):
    result, shared = _submit(tmp_path, loop_exit=0)
    assert result.returncode == 0, result.stderr
    assert "2 machines x 8 processes, main gpu-node-17:24242" in result.stdout
    for rank in (0, 1):
        with open(os.path.join(shared, f"task{rank}")) as f:
            task = dict(line.rstrip("\n").split("=", 1) for line in f)
        assert task["MACHINE_RANK"] == str(rank)
        command = shlex.split(task["LAUNCH"])
        assert command[:2] == ["accelerate", "launch"]
        launch = launch_command_parser().parse_args([*command[2:], "run_sample.py"])
        assert (launch.num_machines, launch.machine_rank, launch.num_processes) == (2, rank, 16)
        assert (launch.main_process_ip, launch.main_process_port) == ("gpu-node-17", 24242)
        assert launch.multi_gpu and launch.rdzv_conf == "timeout=3600"
        assert task["ARGS"] == (f"config/stage_process.py --config.save_path {shared}/runs --config.log_dir "
                                f"{shared}/log --config.stages.num_stages 4")
    assert not os.path.exists(os.path.join(shared, "requeued"))


@pytest.mark.parametrize("loop_exit", [143, 5])
def test_a_loop_stopped_by_sigterm_requeues_the_job_and_a_failure_does_not(tmp_path, loop_exit):
    result, shared = _submit(tmp_path, loop_exit=loop_exit)
    assert result.returncode == loop_exit
    requeued = os.path.join(shared, "requeued")
    if loop_exit == 143:
        assert open(requeued).read() == "4242\n" and "requeued to continue" in result.stdout
    else:
        assert not os.path.exists(requeued)


def test_the_batch_options_ask_for_the_signal_before_the_kill_and_for_requeueing():
    with open(EXAMPLE) as f:
        options = [line.split(None, 1)[1].strip() for line in f if line.startswith("#SBATCH")]
    assert "--requeue" in options and "--ntasks-per-node=1" in options
    assert any(option.startswith("--signal=TERM@") for option in options)  # the steps, not the batch shell (B:)
