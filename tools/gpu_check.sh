#!/usr/bin/env bash
# Reference-size figures on one GPU without downloading anything: a random-weight model with the
# SD v1.4 architecture (tools/build_sd_random.py; timings and memory are SD v1.4's, images noise).
#  1. python tools/bench.py at B = 8, K = 5, T = 20, s = 14, CFG, fp16: the branch sampler
#     against a plain StableDiffusionPipeline, the trainer against a bare LoRA UNet
#     forward+backward, and the trainer with every step of a batch in one UNet call
#     (train.steps_per_forward = s) against one step a call, timed alternately with warm-up
#     excluded (the scripts' memory is part 2).
#  2. One stage at the reference settings (config/stage_process.py, one sampling batch of
#     8 prompts x 5 branches, training batch 2) through the three scripts: peak GPU memory and
#     seconds of sampling (UNet chunk 80 latents, VAE decode chunk 8) and of training, then
#     training again with gradient checkpointing, again with train.steps_per_forward = 14, and
#     sampling again with a UNet chunk of 20 (for 24 GB cards).
# Run from the repository root; on the device tool, carry .wheels (diffusers, ml_collections and
# absl-py wheels) when the machine lacks them.
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

echo "=== 1. python tools/bench.py"
python3 tools/bench.py --model "$model" --mixed_precision fp16 --num_branches 5 --repeats 3 --noscripts 2>&1 \
  | grep -v -E "Processor|epoch" | tee "$out/bench.txt" || echo "(the benchmark failed; part 2 goes on)"

echo "=== 2. one reference stage through the scripts"
run=$out/runs/stage_process/stage0
flags=(--config config/stage_process.py --config.pretrained.model "$model" --config.reward.name colour_match
  --config.prompt_file config/prompt/extra/colour_fruit_train.json --config.sample.num_batches_per_stage 1
  --config.split_step 14 --config.save_path "$out/runs" --config.train.gradient_accumulation_steps 4
  --config.train.num_epochs 1 --config.report_to=none)
for script in run_sample.py run_select.py run_train.py; do
  python3 "$script" "${flags[@]}" 2>&1 | grep -E "INFO|error"
done
rm "$run/COMPLETE"
python3 run_train.py "${flags[@]}" --config.train.gradient_checkpointing=True 2>&1 | grep -E "INFO|error"
rm "$run/COMPLETE"
python3 run_train.py "${flags[@]}" --config.train.steps_per_forward 14 2>&1 | grep -E "INFO|error"
python3 run_sample.py "${flags[@]}" --config.exp_name chunk20 --config.sample.unet_chunk_size 20 2>&1 \
  | grep -E "INFO|error"
python3 - "$run/metrics.jsonl" "$out/runs/chunk20/stage0/metrics.jsonl" <<'PY' | tee "$out/memory.txt"
import json, sys
labels = iter(["sampling, UNet chunk 80", "training, batch 2", "training, batch 2, gradient checkpointing",
               "training, batch 2, steps_per_forward 14", "sampling, UNet chunk 20"])
for path in sys.argv[1:]:
    for line in open(path):
        m = json.loads(line)
        if m["event"] in ("sample", "train"):
            seconds = m.get("sampling_seconds", m.get("training_seconds"))
            print(f"{next(labels)}: peak {m['peak_gpu_memory_gb']} GiB, {seconds} s")
PY
