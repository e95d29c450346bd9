#!/usr/bin/env bash
# examples/slurm.sbatch through a real Slurm, on a one-node cluster made on this machine.
#
#   sudo apt-get install slurmctld slurmd slurm-client munge   # Debian's packages (root)
#   bash tools/slurm_check.sh [WORK_DIR]
#
# Starts munged, slurmctld and slurmd with a configuration of their own in WORK_DIR (default
# /tmp/b2diffurl-slurm; /etc/slurm is not touched), runs the tiny config for two stages in one
# process (the reference), then submits the example with two tasks on the one node (machine
# ranks 0 and 1, one CPU process each, gloo over the loopback address), requeues the job with
# `scontrol requeue` while stage 1 runs, as a pre-emption would, and waits for it to finish.
# Prints the job's output and compares the run with the reference: the selected prompts and
# the final LoRA (up to the order in which gradients are summed), as the two-machine test does.
# Slurm cannot put two nodes on one host from Debian's build (no --enable-multiple-slurmd), so
# the two machine ranks share the node; on a cluster each is a node.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/b2diffurl-slurm}
PYTHON=${PYTHON:-python}
for tool in munged slurmctld slurmd sbatch scontrol; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 2; }
done
rm -rf "$WORK" && mkdir -p "$WORK"/{state,spool,log}
export SLURM_CONF=$WORK/slurm.conf
host=$(hostname -s)
cat >"$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
ReturnToService=2
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
pgrep -x munged >/dev/null || { mkdir -p /run/munge && chown munge:munge /run/munge && su -s /bin/sh munge -c munged; }
pkill -x slurmctld || true
pkill -x slurmd || true
sleep 1
slurmctld -c -i
slurmd
trap 'pkill -x slurmd || true; pkill -x slurmctld || true' EXIT
for _ in $(seq 30); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo

tiny=(--config.stages.num_stages 2 --config.sample.save_png=False --config.report_to=none
      --config.eval.every 2 --config.eval.max_prompts 4)
echo "=== the reference: one process"
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 bash run_process.sh config/tiny_random.py --config.save_path "$WORK/one" \
  --config.log_dir "$WORK/one-log" "${tiny[@]}" >"$WORK/one.out" 2>&1

echo "=== the example: two machine ranks on the one node, through sbatch"
export CONFIG=config/tiny_random.py SHARED=$WORK/shared GPUS_PER_NODE=1 FLAGS="${tiny[*]}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
job=$(sbatch --parsable --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 --time=30 \
  --output="$WORK/job-%j.out" examples/slurm.sbatch)
echo "submitted job $job"
run=$SHARED/runs/tiny_random
for _ in $(seq 600); do [[ -e $run/stage1/sample.0-of-2.pkl || -e $run/stage1/COMPLETE ]] && break; sleep 1; done
echo "=== pre-empting job $job in stage 1: scontrol requeue"
scontrol requeue "$job"
for _ in $(seq 1200); do
  state=$(scontrol show job "$job" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  [[ $state == COMPLETED || $state == FAILED || $state == CANCELLED || $state == TIMEOUT ]] && break
  sleep 2
done
echo "=== job $job: $state"
cat "$WORK/job-$job.out"
"$PYTHON" - "$WORK/one/tiny_random" "$run" <<'EOF'
import os
import sys

import torch
from safetensors.torch import load_file

from b2diffurl.stage.sample_file import load_samples

one, two = sys.argv[1:]
for stage in (0, 1):
    chosen = [load_samples(os.path.join(run, f"stage{stage}", "sample_stage.pkl"), selected=True) for run in (one, two)]
    assert chosen[0]["prompts"] == chosen[1]["prompts"], f"stage {stage}: another selection"
    lora = [load_file(os.path.join(run, f"stage{stage}", "checkpoints", "pytorch_lora_weights.safetensors"))
            for run in (one, two)]
    worst = max((lora[1][key] - lora[0][key]).abs().max().item() for key in lora[0])
    for key in lora[0]:
        torch.testing.assert_close(lora[1][key], lora[0][key], rtol=1e-3, atol=1e-5)
    print(f"stage {stage}: the same {len(chosen[0]['prompts'])} selected samples; LoRA equal to the "
          f"one-process run within 1e-3 relative (largest difference {worst:.1e})")
EOF
[[ $state == COMPLETED ]]
