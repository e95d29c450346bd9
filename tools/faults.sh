#!/usr/bin/env bash
# Every fault of a long run, made for real against config/tiny_random.py (2 stages, a fresh run
# folder each), and what the user gets: the exit code, the line they see, whether the complete
# stage 0 is byte-identical afterwards, whether rerunning the same command (once the cause is
# removed) completes the run, and the seconds from the fault to the exit. Prints a Markdown table
# (docs/reliability.md holds one as printed). About 10 minutes on 2 CPU cores.
#
#   bash tools/faults.sh [WORK_DIR [FAULT ...]]
#
# FAULT names the rows to make (default all): kill term disk small reward twice damaged untrained rank.
set -uo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/b2diffurl_faults}
faults=" ${*:2} "
want() { [[ $faults == "  " || $faults == *" $1 "* ]]; }
rm -rf "$work" && mkdir -p "$work"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PYTHON=${PYTHON:-python}
LAUNCH2="$PYTHON -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"

flags() { # flags NAME: the run's flags, its folders under $work/NAME
  echo --config config/tiny_random.py --config.save_path "$work/$1" --config.log_dir "$work/$1/log" \
    --config.stages.num_stages 2 --config.eval.every 0 --config.report_to=none
}
run_of() { echo "$work/$1/tiny_random"; }
digest() { (cd "$1" 2>/dev/null && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
stage0() { # stage0 NAME: stage 0 complete, by hand
  local script
  for script in run_sample.py run_select.py run_train.py; do
    $PYTHON "$script" $(flags "$1") --config.stage 0 >"$work/$1.stage0.log" 2>&1 || { echo "stage 0 of $1 failed" >&2; exit 1; }
  done
}
said() { # said LOG: the line the user saw (the error line, else the loop's)
  local line
  line=$(tr '\r' '\n' <"$1" | grep -a -m1 '^error:' || tr '\r' '\n' <"$1" | grep -a -m1 -E '^=== (stage .* failed|stopped)' ||
    echo "(none)")
  line=${line//|/\\|}
  echo "${line//$work/WORK}" | cut -c1-260
}
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }
rerun() { # rerun NAME [ENV...]: the same command, without the fault
  env "${@:2}" bash run_process.sh $(flags "$1") >"$work/$1.rerun.log" 2>&1 && echo yes || echo "no (see $1.rerun.log)"
}
wait_for() { # wait_for SECONDS TEST...: poll until TEST holds
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}
training_in() { [[ -f $1/metrics.jsonl ]] && grep -q optimizer_step "$1/metrics.jsonl"; }
rank_pid() { # rank_pid RANK MARKER: pid of the launched worker of RANK with MARKER in its environment
  local environ
  for environ in /proc/[0-9]*/environ; do
    if tr '\0' '\n' <"$environ" 2>/dev/null | grep -qx "$2" &&
      tr '\0' '\n' <"$environ" 2>/dev/null | grep -qx "LOCAL_RANK=$1"; then
      basename "$(dirname "$environ")"
      return 0
    fi
  done
  return 1
}
signal_during() { # signal_during NAME SIGNAL TARGET WHEN [ENV...]: run_process.sh, SIGNAL to TARGET
  # (loop: its own process; group: its process group; rank1: the worker of rank 1) once WHEN
  # (training: stage 1 logged an optimiser step; sampling: stage 1 exists) holds. Sets code, took.
  local name=$1 sig=$2 target=$3 when=$4 stage1 pid fired
  stage1="$(run_of "$name")/stage1"
  setsid env "${@:5}" B2DIFFURL_FAULT_RUN="$name" bash run_process.sh $(flags "$name") >"$work/$name.log" 2>&1 &
  pid=$!
  if [[ $when == training ]]; then wait_for 600 training_in "$stage1"; else wait_for 600 test -d "$stage1"; fi
  case $target in
    loop) kill -"$sig" "$pid" ;;
    group) kill -"$sig" -- -"$pid" ;;
    rank1)
      local worker=
      wait_for 120 eval 'worker=$(rank_pid 1 B2DIFFURL_FAULT_RUN='"$name"')'
      kill -"$sig" "$worker"
      ;;
  esac
  fired=$SECONDS
  wait "$pid"
  code=$?
  took=$((SECONDS - fired))
}

echo "| fault | exit code | the line the user saw | stage 0 intact | rerun completed | seconds to stop |"
echo "|---|---|---|---|---|---|"

# 1. SIGKILL (the OOM killer, a node lost) while stage 1 trains.
if want kill; then
stage0 kill && before=$(digest "$(run_of kill)/stage0")
signal_during kill KILL group training
row "SIGKILL of the whole job while stage 1 trains" "$code" "$(said "$work/kill.log")" \
  "$([[ $(digest "$(run_of kill)/stage0") == "$before" ]] && echo yes || echo NO)" "$(rerun kill)" "$took"
fi

# 2. SIGTERM (pre-emption, scancel) to run_process.sh while stage 1 trains.
if want term; then
stage0 term && before=$(digest "$(run_of term)/stage0")
signal_during term TERM loop training
leftover=$(find "$(run_of term)" -name '.tmp*' | wc -l)
row "SIGTERM to run_process.sh while stage 1 trains ($leftover partial files left)" "$code" "$(said "$work/term.log")" \
  "$([[ $(digest "$(run_of term)/stage0") == "$before" ]] && echo yes || echo NO)" "$(rerun term)" "$took"
fi

# 3. The disk fills while stage 1 writes its selection (injected ENOSPC).
if want disk; then
stage0 disk && before=$(digest "$(run_of disk)/stage0")
started=$SECONDS
B2DIFFURL_FAIL_WRITE=sample_stage.pkl bash run_process.sh $(flags disk) >"$work/disk.log" 2>&1
code=$?
row "full disk writing stage 1's sample_stage.pkl (injected ENOSPC)" "$code" "$(said "$work/disk.log")" \
  "$([[ $(digest "$(run_of disk)/stage0") == "$before" ]] && echo yes || echo NO)" "$(rerun disk)" "$((SECONDS - started))"
fi

# 4. A real small filesystem: the run does not fit (a mounted tmpfs, where the machine allows it).
if want small; then
mkdir -p "$work/small"
if mount -t tmpfs -o size=512k tmpfs "$work/small" 2>/dev/null; then
  started=$SECONDS
  bash run_process.sh $(flags small) >"$work/small.log" 2>&1
  code=$?
  mount -o remount,size=64m "$work/small"
  row "a 512 KiB filesystem: stage 0 would not fit (then grown to 64 MiB)" "$code" "$(said "$work/small.log")" "n/a" \
    "$(rerun small)" "$((SECONDS - started))"
  umount "$work/small"
else
  row "a small filesystem" "-" "(cannot mount a tmpfs here: skipped)" "-" "-" "-"
fi
fi

# 5. The reward raises on its 2nd call (a remote scorer down), in stage 1's selection.
if want reward; then
cat >"$work/remote_scorer.py" <<'EOF'
import os
calls = 0
def score(images, prompts):
    global calls
    calls += 1
    if calls == int(os.environ.get("FAIL_ON_CALL", "0")):
        raise ConnectionError("scorer unreachable")
    return images.reshape(len(images), -1).mean(axis=1) / 255.0
EOF
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
reward="--config.reward.name remote_scorer:score --config.reward.batch_size 8"
for script in run_sample.py run_select.py run_train.py; do
  $PYTHON "$script" $(flags reward) $reward --config.stage 0 >>"$work/reward.stage0.log" 2>&1
done
before=$(digest "$(run_of reward)/stage0")
started=$SECONDS
FAIL_ON_CALL=2 bash run_process.sh $(flags reward) $reward >"$work/reward.log" 2>&1
code=$?
rerun_ok=$(bash run_process.sh $(flags reward) $reward >"$work/reward.rerun.log" 2>&1 && echo yes || echo no)
row "the reward raises on its 2nd call of stage 1" "$code" "$(said "$work/reward.log")" \
  "$([[ $(digest "$(run_of reward)/stage0") == "$before" ]] && echo yes || echo NO)" "$rerun_ok" "$((SECONDS - started))"
fi

# 6. A second run_process.sh on the same folder while the first runs.
if want twice; then
bash run_process.sh $(flags twice) >"$work/twice.first.log" 2>&1 &
first=$!
wait_for 120 test -f "$(run_of twice)/.lock"
started=$SECONDS
bash run_process.sh $(flags twice) >"$work/twice.log" 2>&1
code=$?
took=$((SECONDS - started))
wait "$first" && first_ok=yes || first_ok=no
row "a second run_process.sh on the same folder" "$code" "$(said "$work/twice.log")" "n/a" \
  "$first_ok (the first run)" "$took"
fi

# 7. Stage 0's LoRA cut short (a machine crash, a disk error): recover by deleting stage 0.
if want damaged; then
stage0 damaged
lora="$(run_of damaged)/stage0/checkpoints/pytorch_lora_weights.safetensors"
truncate -s $(($(stat -c %s "$lora") / 3)) "$lora"
started=$SECONDS
bash run_process.sh $(flags damaged) >"$work/damaged.log" 2>&1
code=$?
took=$((SECONDS - started))
rm -rf "$(run_of damaged)/stage0"
row "stage 0's LoRA file truncated (recovery: delete stage0, rerun)" "$code" "$(said "$work/damaged.log")" "n/a" \
  "$(rerun damaged)" "$took"
fi

# 8. Every optimiser step skipped, stage after stage (NaN advantages injected into the selection).
if want untrained; then
nan_selection() {
  $PYTHON - "$1" <<'EOF'
import sys, torch
from b2diffurl.stage.sample_file import load_samples, save_samples
record = load_samples(sys.argv[1], selected=True)
record["advantages"] = torch.full_like(record["advantages"], float("nan"))
save_samples(record, sys.argv[1], selected=True)
EOF
}
started=$SECONDS
for stage in 0 1; do
  for script in run_sample.py run_select.py; do
    $PYTHON "$script" $(flags untrained) --config.stage "$stage" >>"$work/untrained.stages.log" 2>&1
  done
  nan_selection "$(run_of untrained)/stage$stage/sample_stage.pkl"
  $PYTHON run_train.py $(flags untrained) --config.stage "$stage" >"$work/untrained.log" 2>&1
  code=$?
done
row "stages 0 and 1 skip every optimiser step (NaN advantages injected)" "$code" "$(said "$work/untrained.log")" \
  "n/a" "$(rerun untrained)" "$((SECONDS - started))"
fi

# 9. One of two processes of accelerate launch killed while stage 1 samples.
if want rank; then
stage0 rank && before=$(digest "$(run_of rank)/stage0")
signal_during rank KILL rank1 sampling LAUNCH="$LAUNCH2"
row "rank 1 of 2 (accelerate launch) killed while stage 1 samples" "$code" "$(said "$work/rank.log")" \
  "$([[ $(digest "$(run_of rank)/stage0") == "$before" ]] && echo yes || echo NO)" "$(rerun rank LAUNCH="$LAUNCH2")" "$took"
fi
