#!/usr/bin/env bash
# One stage slice at reference size on one GPU: random-weight SD v1.4-architecture model,
# B = 8, K = 5, T = 20, s = 14, CFG 5, fp16; the three scripts as a user runs them.
# Prints the per-script wall time, a held-out evaluation and a generation from the stage's
# LoRA, the summary table and the plain diffusers pipeline's images/s. Run from the repository root (on the device tool: carry .wheels if diffusers /
# ml_collections are missing there).
#
#   bash tools/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
if [[ -d .wheels ]]; then python3 -m pip install --quiet --no-deps .wheels/*.whl; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
model=/tmp/sd-random
[[ -d $model ]] || python3 tools/build_sd_random.py "$model"
flags=(--config config/stage_process.py --config.pretrained.model "$model" --config.reward.name colour_match
  --config.prompt_file config/prompt/colour_fruit_train.json --config.sample.num_batches_per_stage 1
  --config.split_step 14 --config.save_path "$out/runs" --config.train.gradient_accumulation_steps 4
  --config.train.num_epochs 1)
for script in run_sample.py run_select.py run_train.py; do
  started=$(date +%s%N)
  python3 "$script" "${flags[@]}" 2>&1 | grep -v Processor
  echo "$script: $((($(date +%s%N) - started) / 1000000)) ms wall (process start and model load included)"
done
python3 -m b2diffurl.evaluate "${flags[@]}" --stage 0 --prompt-file config/prompt/colour_fruit_test.json \
  --num-images 4 --config.eval.max_prompts 10 2>&1 | grep -E "INFO|error"
python3 -m b2diffurl.generate "${flags[@]}" --lora "$out/runs/stage_process/stage0/checkpoints" \
  --prompt "a red apple" --num-images 4 --out "$out/generated" 2>&1 | grep -E "INFO|error"
python3 -m b2diffurl.summary "$out/runs/stage_process"
grep -E '"event": "(sample|train)"' "$out/runs/stage_process/stage0/metrics.jsonl"
python3 tools/bench_diffusers.py "$model" 40 40
