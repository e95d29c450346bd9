#!/usr/bin/env bash
# Backward progressive B2-DiffuRL: for every stage k, sample -> select -> train.
#
#   bash run_process.sh [CONFIG | --config CONFIG] [--config.key value ...]
#
# CONFIG defaults to config/stage_process.py; the extra flags go to every script. The stage
# index is the only thing this loop decides: split step, seed, folders and the checkpoint to
# resume from are derived from it by b2diffurl.stage.plan.plan_stage. Each stage's output goes to
# log/{exp_name}/stage{k}.log as well as the terminal. The loop stops at the first failure.
# Rerunning the same command continues after the last completed stage (one with a COMPLETE
# marker); an interrupted stage is redone from its start, earlier stages are left untouched.
# Every eval.every stages and after the last, the stage's LoRA is evaluated on held-out prompts
# (stage{k}/evaluation.json); at the end the run's curves are drawn into {run}/report.png.
# Set PYTHON to run the scripts with another interpreter, and LAUNCH to run the three stage
# scripts under a launcher, for example on 8 GPUs:
#   LAUNCH="accelerate launch --multi_gpu --num_processes 8" bash run_process.sh
# (sampling is sharded over the processes, training uses DDP, selection runs on the main one;
# on a CPU-only machine the same command runs N CPU processes over gloo). On several nodes,
# every node runs this loop on the same (shared) run folder with its own MACHINE_RANK and
# accelerate's multi-machine LAUNCH (examples/slurm.sbatch); the nodes share the folder's lock
# by their job identity (B2DIFFURL_JOB_ID, else SLURM_JOB_ID). Machine rank 0 evaluates and
# draws the report while the others wait for it in the next stage's launch.
# A failing step stops the loop with its exit code (the README lists them) and a line naming
# the stage; SIGTERM stops it within seconds with 143; a second run on the same folder is
# refused while this one holds the folder's lock.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=config/stage_process.py
if [[ $# -gt 0 && $1 != -* ]]; then
  CONFIG=$1
  shift
elif [[ $# -gt 1 && $1 == --config ]]; then
  CONFIG=$2
  shift 2
fi
PYTHON=${PYTHON:-python}
LAUNCH=${LAUNCH:-$PYTHON}
MACHINE_RANK=${MACHINE_RANK:-0}
ARGS=(--config "$CONFIG" "$@")

# Checks the config and that the models can be had, before anything runs.
# Its first lines name the run's layout (first_stage=3, ...), an empty line, then the stage table.
plan=$($PYTHON -m b2diffurl.stage.plan "${ARGS[@]}" layout)
while IFS='=' read -r name value && [[ -n $name ]]; do
  case $name in
    first_stage | num_stages | eval_every | log_dir | run_dir) printf -v "$name" '%s' "$value" ;;
  esac
done <<<"$plan"
# One run per folder: the lock names this loop's process (and job); its scripts run under it.
# Machine rank 0 releases it, for every node of its job.
$PYTHON -m b2diffurl.stage.lock acquire "$run_dir" $$
if ((MACHINE_RANK == 0)); then
  trap '$PYTHON -m b2diffurl.stage.lock release "$run_dir" $$' EXIT
fi
export B2DIFFURL_LOCK_HOLDER=$$

mkdir -p "$log_dir"
machine=  # the logs of machine rank r > 0: stage{k}.machine{r}.log
((MACHINE_RANK == 0)) || machine=.machine$MACHINE_RANK
echo "${plan#*$'\n\n'}" | tee "$log_dir/plan$machine.txt"

# Each step runs in the background while the loop waits, so that a SIGTERM (pre-emption,
# scancel) is handled at once: passed on to the step, whose scripts remove what they had
# half-written and exit, then the loop stops with 143. The tee ignores SIGTERM so that a signal
# to the whole process group does not cut the step's last lines from the log.
step_pid=
on_sigterm() {
  trap '' TERM
  if [[ -n $step_pid ]]; then
    kill -TERM "$step_pid" 2>/dev/null || true
    wait "$step_pid" || true
  fi
  echo "=== stopped by SIGTERM in stage ${stage:-$first_stage}; rerun the same command to continue" >&2
  exit 143
}
trap on_sigterm TERM
run_step() { # run_step LOG_FILE WHAT COMMAND...: COMMAND's output to the terminal and LOG_FILE
  local log_file=$1 what=$2 status=0 before
  shift 2
  before=$(wc -l <"$log_file")
  "$@" > >(trap '' TERM; exec tee -a "$log_file") 2>&1 &
  step_pid=$!
  wait "$step_pid" || status=$?
  step_pid=
  if ((status != 0)); then
    # Under a launcher, the failing script's own exit code is in the launcher's report ("Root
    # Cause ... exitcode : N"), and its one-line reason is its "error: " line: report those.
    local output root reason
    output=$(tail -n +"$((before + 1))" "$log_file")
    root=$(sed -n '/Root Cause/,$s/^ *exitcode *: *\([0-9][0-9]*\).*/\1/p' <<<"$output")
    root=${root%%$'\n'*}
    reason=$(grep -m 1 '^error: ' <<<"$output" || true)
    if [[ -n $root && $root != 0 ]]; then status=$root; fi
    echo "=== stage $stage/$num_stages: $what failed with exit code $status (${reason:-the lines above say why});" \
      "stages before $stage are complete, rerun the same command to continue" | tee -a "$log_file" >&2
    exit "$status"
  fi
}

if ((first_stage >= num_stages)); then
  echo "=== all $num_stages stages are complete already"
elif ((first_stage > 0)); then
  echo "=== stages 0..$((first_stage - 1)) are complete; continuing at stage $first_stage"
fi

run_started=$SECONDS
for ((stage = first_stage; stage < num_stages; stage++)); do
  stage_started=$SECONDS
  log_file="$log_dir/stage$stage$machine.log"
  : >"$log_file"
  for script in run_sample.py run_select.py run_train.py; do
    echo "=== stage $stage/$num_stages: $script" | tee -a "$log_file"
    run_step "$log_file" "$script" $LAUNCH "$script" "${ARGS[@]}" --config.stage "$stage"
  done
  if ((MACHINE_RANK == 0 && eval_every > 0 && ((stage + 1) % eval_every == 0 || stage == num_stages - 1))); then
    echo "=== stage $stage/$num_stages: evaluation on held-out prompts" | tee -a "$log_file"
    run_step "$log_file" evaluation $PYTHON -m b2diffurl.analysis.evaluate "${ARGS[@]}" --stage "$stage"
  fi
  elapsed=$((SECONDS - run_started))
  remaining=$((elapsed * (num_stages - stage - 1) / (stage + 1 - first_stage)))
  echo "=== stage $stage done in $((SECONDS - stage_started))s; run ${elapsed}s, about ${remaining}s left" \
    | tee -a "$log_file"
done
echo "=== all $num_stages stages done ($((SECONDS - run_started))s this time); outputs and stage{k}/metrics.jsonl in $run_dir"
if ((MACHINE_RANK != 0)); then
  exit 0 # evaluation, summary and report are machine rank 0's
fi
$PYTHON -m b2diffurl.analysis.stage_table "$run_dir" | tee "$log_dir/summary.txt"
# The picture of the run needs matplotlib (requirements-extras.txt); the run does not.
$PYTHON -m b2diffurl.analysis.curves "$run_dir" || echo "(no report.png: see the line above)"
