"""Side-by-side speed, file-size and memory figures.

    python tools/bench.py                          # tiny model built here, CPU or GPU
    python tools/bench.py --repeats 3              # a quicker, noisier look
    python tools/bench.py --notiny --lab_repeats 2 # the lab stage's figures only (about 30 min on 2 CPU cores)
    python tools/bench.py --model /tmp/sd-random --mixed_precision fp16 --num_branches 5

Every ratio is measured in this one run, against a reference measured right beside it:
- sample_ratio: our stage sampling (B prompts, K branches, T steps, CFG, log-probs, decoding
  and file writing) over a plain StableDiffusionPipeline making B·K images, same model, steps,
  guidance and eta. unet_eval_ratio = (B·b + B·K·s) / (B·K·T) is the floor prefix sharing allows.
- train_ratio: seconds per trained (sample, step) pair in the trainer over a bare LoRA UNet
  forward+backward with CFG on the same shapes; train_all_steps_speedup: the trainer's pairs per
  second with train.steps_per_forward = s (every step of a batch in one UNet call) over 1.
- sample_file_ratio: bytes of sample.pkl per branch sample over the original layout's
  2·T latents per sample in the same dtype.
- peak_rss_mb_*: peak resident memory of each of the three scripts on one stage (and their
  peak GPU memory on a GPU).
- lab_stage_ratio: one stage of config/shapes_scale.py (run_sample.py, run_select.py and
  run_train.py as subprocesses, interpreter starts included, the evaluation apart) with the
  fastest correct CPU candidate (FAST: bf16 frozen models, classic attention, the LoRA
  unmerged while sampling) over the same stage with the lab configs' settings (TODAY: fp32,
  SDPA, merged); same model, prompts and noise. Each side's seconds per script are printed.
  Before it, lab_logprob_*: the largest difference between the log-probs sampling stores and
  training's recomputation, and the spread of the PPO ratio before the first update, per
  precision (`--lab_batches 0` skips the stage; its log-prob figures are cheap).
The two sides of a ratio are timed alternately, --repeats times each after one warm-up; a ratio
is the median of the per-pair ratios, and their spread (max - min) is printed too.
Without --model the benchmark builds the tiny model with 64-pixel images (16x16 latents), so
that the UNet's work, not per-call interpreter overhead, dominates on a CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the package

GUIDANCE, ETA = 5.0, 1.0
PROMPTS = ["a red apple", "a blue plum", "a green pear", "a yellow lemon", "a purple grape", "a black tomato",
           "a white onion", "an orange carrot"]


def _prompts() -> list[str]:
    """B prompts (the list repeated as needed)."""
    return [PROMPTS[i % len(PROMPTS)] for i in range(BATCH.value)]


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _paired_times(ours, reference, repeats: int) -> dict:
    """Time `ours` and `reference` alternately, `repeats` times each after one warm-up call of
    each, so that the machine's slow and fast spells fall on both alike. Returns the median
    seconds of each, and the median and spread (max - min) of the per-pair ratios."""
    ours(), reference()
    pairs = []
    for _ in range(repeats):
        pair = []
        for fn in (ours, reference):
            _synchronize()
            started = time.perf_counter()
            fn()
            _synchronize()
            pair.append(time.perf_counter() - started)
        pairs.append(pair)
    ratios = [a / b for a, b in pairs]
    logging.getLogger(__name__).info("pair ratios: %s", " ".join(f"{r:.3f}" for r in ratios))
    return {"ours": statistics.median(a for a, _ in pairs), "reference": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_spread": max(ratios) - min(ratios)}


def _overrides(model_dir: str, save_path: str) -> dict:
    """Config overrides (dotted keys) of the benchmark's stage, shared by the in-process figures
    and the scripts."""
    b, k = BATCH.value, BRANCHES.value
    return {"pretrained.model": model_dir, "pretrained.build_tiny": False, "save_path": save_path,
            "log_dir": os.path.join(save_path, "log"), "mixed_precision": PRECISION.value,
            "sample.num_steps": STEPS.value, "sample.batch_size": b, "num_branches": k,
            "sample.num_batches_per_stage": 1, "sample.unet_chunk_size": b * k, "split_step": SPLIT.value,
            "report_to": "none", "sample.save_png": False, "train.batch_size": 4,
            "train.gradient_accumulation_steps": 4, "train.num_epochs": 1,
            "eval.pos_threshold": 0.0, "eval.neg_threshold": 0.0}  # train on two samples of every group


def _config(overrides: dict):
    from config import tiny_random as tiny

    config = tiny.get_config()
    config.update_from_flattened_dict(overrides)
    return config


def _policy_and_trajectories(config, accelerator):
    """The project's pipeline (fresh LoRA), the bench prompts' embeddings, and one stage's branches."""
    from b2diffurl.method.branch_sampling import latent_shape, sample_branches
    from b2diffurl.models.pipeline import load_pipeline, lora_merged
    from b2diffurl.models.prompts import encode_prompts

    pipe = load_pipeline(config, accelerator.device)
    unet = pipe.unet
    shape = latent_shape(unet)
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, _prompts())
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    t, s, k = STEPS.value, SPLIT.value, BRANCHES.value

    def sample() -> dict:  # as run_sample.py samples: the LoRA merged if sample.merge_lora
        with torch.no_grad(), accelerator.autocast(), lora_merged(unet, config.sample.merge_lora):
            return sample_branches(unet, pipe.scheduler, embeds, negative, num_steps=t, branch_point=t - s,
                                   num_branches=k, eta=ETA, guidance_scale=GUIDANCE, latent_shape=shape,
                                   generator=torch.Generator().manual_seed(0), chunk_size=len(embeds) * k,
                                   dtype=unet.dtype)

    return pipe, embeds, negative, sample


def bench_sampling(config, accelerator, repeats: int, out_dir: str) -> dict:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from b2diffurl.files import atomic_torch_save
    from b2diffurl.method.branch_sampling import decode_images
    from b2diffurl.models.pipeline import weight_dtype
    from b2diffurl.models.prompts import encode_prompts

    pipe, embeds, _, sample = _policy_and_trajectories(config, accelerator)
    prompts = _prompts()
    path = os.path.join(out_dir, "bench_sample.pkl")

    def ours():  # the text encoding is part of a stage's sampling, so it is timed too
        encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts + [""])
        out = sample()
        with accelerator.autocast():
            images = decode_images(pipe.vae, out["latents"][:, -1], config.sample.decode_chunk_size)
        atomic_torch_save({k: v.cpu() for k, v in out.items()}, path)
        atomic_torch_save(images, path + ".images")

    plain = StableDiffusionPipeline.from_pretrained(config.pretrained.model, safety_checker=None,
                                                    dtype=weight_dtype(config)).to(accelerator.device)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)

    def reference():
        plain([p for p in prompts for _ in range(BRANCHES.value)], num_inference_steps=STEPS.value,
              guidance_scale=GUIDANCE, eta=ETA, generator=torch.Generator().manual_seed(0), output_type="np")

    with torch.no_grad():
        timed = _paired_times(ours, reference, repeats)
    b, k, t, s = len(prompts), BRANCHES.value, STEPS.value, SPLIT.value
    return {"sample_seconds": timed["ours"], "diffusers_seconds": timed["reference"],
            "sample_images_per_second": b * k / timed["ours"], "diffusers_images_per_second": b * k / timed["reference"],
            "sample_ratio": timed["ratio"], "sample_ratio_spread": timed["ratio_spread"],
            "unet_eval_ratio": (b * (t - s) + b * k * s) / (b * k * t)}


def bench_training(config, accelerator, repeats: int) -> dict:
    from b2diffurl.method.guidance import guided_noise
    from b2diffurl.method.update import lora_parameters, train_on_samples
    from b2diffurl.stage.sample_file import make_record, subset
    from b2diffurl.stage.train import build_optimizer, train_settings

    pipe, embeds, negative, sample = _policy_and_trajectories(config, accelerator)
    out = {k: v.cpu() for k, v in sample().items()}
    record = make_record([out], [_prompts()[g] for g in out["group_id"].tolist()], meta={})
    num = 2 * len(embeds)  # as many as best/worst selection keeps at most
    advantages = torch.from_numpy(np.random.default_rng(0).normal(size=num)).float()
    samples = subset(record, torch.arange(num), advantages=advantages, rewards=advantages)
    settings = train_settings(config)
    params = lora_parameters(pipe.unet)
    unet, optimizer = accelerator.prepare(pipe.unet, build_optimizer(config, params))
    embeds = embeds.to(accelerator.device)

    def ours():
        train_on_samples(unet, pipe.scheduler, samples, embeds[samples["group_id"]], negative, settings, accelerator,
                         optimizer, torch.Generator().manual_seed(0))

    bs = settings.batch_size
    device = accelerator.device
    x, t = samples["latents"][:bs, 0].to(device), samples["timesteps"][:bs, 0].to(device)
    text = embeds[samples["group_id"][:bs]]

    def bare():
        for _ in range(num // bs):
            with accelerator.autocast():
                loss = guided_noise(unet, x, t, text, negative, GUIDANCE).float().mean()
            accelerator.backward(loss)
        optimizer.zero_grad(set_to_none=True)

    all_steps = dataclasses.replace(settings, steps_per_forward=SPLIT.value)

    def ours_all_steps():  # train.steps_per_forward = s: every step of a batch in one UNet call
        train_on_samples(unet, pipe.scheduler, samples, embeds[samples["group_id"]], negative, all_steps, accelerator,
                         optimizer, torch.Generator().manual_seed(0))

    timed = _paired_times(ours, bare, repeats)
    batched = _paired_times(ours_all_steps, ours, repeats)
    pairs = num * SPLIT.value  # trained (sample, step) pairs of one `ours` call; `bare` does `num`
    return {"train_seconds_per_pair": timed["ours"] / pairs, "bare_seconds_per_pair": timed["reference"] / num,
            "train_ratio": timed["ratio"] * num / pairs, "train_ratio_spread": timed["ratio_spread"] * num / pairs,
            "train_all_steps_seconds_per_pair": batched["ours"] / pairs,
            "train_all_steps_speedup": 1 / batched["ratio"]}


# Run a script in this interpreter and report its peak resident memory. VmHWM is the peak of
# this process image; ru_maxrss would also count the parent's memory, inherited through fork.
_PEAK_WRAPPER = """\
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    with open('/proc/self/status') as f:
        peak = [line.split()[1] for line in f if line.startswith('VmHWM')][0]
    print('PEAK_RSS_KB', peak, file=sys.stderr)
"""


def bench_scripts(config, overrides: dict) -> dict:
    """Peak RSS (MB) of each script on one stage, their peak GPU memory, and the sample file's size ratio."""
    from b2diffurl.logs import read_metrics
    from b2diffurl.stage.plan import plan_stage
    from b2diffurl.stage.sample_file import load_samples

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags_ = _script_flags("config/tiny_random.py", overrides)
    figures = {}
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        result = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, script, *flags_], cwd=repo,
                                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            raise RuntimeError(f"{script} failed: {result.stderr[-2000:]}")
        peak = [line for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB")][-1]
        figures[f"peak_rss_mb_{script[4:-3]}"] = int(peak.split()[1]) / 1024
    paths = plan_stage(config).paths
    for record in read_metrics(paths.metrics):
        if "peak_gpu_memory_gb" in record:
            figures[f"peak_gpu_memory_gb_{record['event']}"] = record["peak_gpu_memory_gb"]
    record = load_samples(paths.samples)
    latent = record["latents"][0, 0]
    t, s = STEPS.value, SPLIT.value
    original = 2 * t * latent.numel() * latent.element_size()
    figures["sample_file_ratio"] = os.path.getsize(paths.samples) / len(record["prompts"]) / original
    figures["sample_file_target"] = (s + 1) / (2 * t) + 0.05
    return figures


TODAY = {"mixed_precision": "no", "unet_attention": "sdpa", "compile_unet": False, "sample.merge_lora": True}  # the lab configs'
# The fastest correct candidate (not the lab configs' default: docs/performance.md). The LoRA is
# not merged while sampling: merged into bf16 weights it moves the sampled log-probs by up to 0.06
# from training's recomputation (unmerged: 0). Not compiled: under bf16 autocast the compiled
# UNet's LoRA gradients were wrong (cli.check_config).
FAST = {"mixed_precision": "bf16", "unet_attention": "classic", "compile_unet": False, "sample.merge_lora": False}


def _script_flags(config_file: str, overrides: dict) -> list[str]:
    flags_ = ["--config", config_file]
    for key, value in overrides.items():
        flags_ += [f"--config.{key}={value}"] if isinstance(value, bool) else [f"--config.{key}", str(value)]
    return flags_


def _run_stage(config_file: str, overrides: dict, save_path: str) -> dict:
    """Seconds of each of a stage's three scripts (stage 0, a fresh run folder), as a user runs them."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags_ = _script_flags(config_file, {**overrides, "save_path": save_path, "log_dir": os.path.join(save_path, "log")})
    seconds = {}
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, script, *flags_], cwd=repo, capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            raise RuntimeError(f"{script} failed: {result.stderr[-2000:]}")
        seconds[script[4:-3]] = time.perf_counter() - started
    return seconds


def bench_lab_stage(out_dir: str, repeats: int, batches: int) -> dict:
    """lab_stage_ratio: FAST over TODAY on one stage of config/shapes_scale.py (see the module's doc)."""
    common = {"report_to": "none", "sample.num_batches_per_stage": batches, "keep_sample_files": "none"}
    runs = {"today": [], "fast": []}

    def stage(side: str, settings: dict, i: int) -> dict:
        seconds = _run_stage("config/shapes_scale.py", {**common, **settings}, os.path.join(out_dir, f"{side}{i}"))
        logging.getLogger(__name__).info("lab stage %s %d: %s", side, i,
                                         " ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
        return seconds

    for i in range(1, repeats + 1):  # alternating pairs (no side compiles, so no warm-up)
        for side, settings in (("fast", FAST), ("today", TODAY)):
            runs[side].append(stage(side, settings, i))
    totals = {side: [sum(r.values()) for r in rs] for side, rs in runs.items()}
    ratios = [f / t for f, t in zip(totals["fast"], totals["today"])]
    figures = {"lab_stage_batches": batches, "lab_stage_images": batches * 8 * 8,
               "lab_stage_ratio": statistics.median(ratios), "lab_stage_ratio_spread": max(ratios) - min(ratios)}
    for side in runs:
        figures[f"lab_stage_{side}_seconds"] = statistics.median(totals[side])
        for script in runs[side][0]:
            figures[f"lab_stage_{side}_{script}_seconds"] = statistics.median(r[script] for r in runs[side])
    return figures


def bench_logprob_agreement(settings: dict, name: str) -> dict:
    """Sampling's stored log-probs against training's recomputation on the shapes model, with
    `settings`: one batch of 8 prompts x K = 8 (T = s = 10, a LoRA with random B, merged while
    sampling where sample.merge_lora, as run_sample.py does), recomputed as run_train.py does (train mode, autocast,
    gradients on, unmerged, in batches of train.batch_size, one step per call). Returns the
    largest |difference| and the spread (max - min) of exp(difference), the PPO ratio of the
    first update."""
    from config import shapes_scale
    from b2diffurl.method.branch_sampling import latent_shape, sample_branches
    from b2diffurl.method.ddim import ddim_step_with_log_prob
    from b2diffurl.method.guidance import guided_noise
    from b2diffurl.models.pipeline import load_pipeline, lora_merged, weight_dtype
    from b2diffurl.models.prompts import encode_prompts, load_prompts

    config = shapes_scale.get_config()
    config.update_from_flattened_dict(settings)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(config, device)

    def autocast():  # as the scripts' Accelerator (one per process, so not made here)
        return torch.autocast(device.type, dtype=weight_dtype(config), enabled=config.mixed_precision != "no")

    unet = pipe.unet
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for param in unet.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    prompts = load_prompts(config.prompt_file)[:8]
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    t, k = config.sample.num_steps, config.num_branches
    with torch.no_grad(), autocast(), lora_merged(unet, config.sample.merge_lora):
        out = sample_branches(unet, pipe.scheduler, embeds, negative, num_steps=t, branch_point=0, num_branches=k,
                              eta=config.sample.eta, guidance_scale=config.sample.guidance_scale,
                              latent_shape=latent_shape(unet), generator=torch.Generator().manual_seed(0),
                              dtype=unet.dtype)
    embeds = embeds.repeat_interleave(k, dim=0)
    unet.train()
    differences = []
    for rows in torch.arange(len(embeds)).split(config.train.batch_size):
        for j in range(t):
            x, step = out["latents"][rows, j], out["timesteps"][rows, j]
            with autocast():
                eps = guided_noise(unet, x, step, embeds[rows], negative, config.sample.guidance_scale)
            _, log_prob = ddim_step_with_log_prob(pipe.scheduler, eps.detach(), step, x, config.sample.eta,
                                                  prev_sample=out["latents"][rows, j + 1])
            differences.append(log_prob - out["log_probs"][rows, j])
    difference = torch.cat(differences)
    ratio = difference.exp()
    return {f"lab_logprob_max_difference_{name}": difference.abs().max().item(),
            f"lab_logprob_ratio_spread_{name}": (ratio.max() - ratio.min()).item()}


def main(argv) -> None:
    from b2diffurl.logs import setup_logging
    from b2diffurl.stage.context import make_accelerator
    from b2diffurl.world.random_model import save_tiny_pipeline

    setup_logging()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = MODEL.value or save_tiny_pipeline(os.path.join(tmp, "tiny-sd"), image_size=64)
        overrides = _overrides(model_dir, os.path.join(tmp, "runs"))
        config = _config(overrides)
        accelerator = make_accelerator(config)
        figures = {"device": str(accelerator.device), "mixed_precision": config.mixed_precision,
                   "num_steps": STEPS.value, "split_step": SPLIT.value, "batch_size": BATCH.value,
                   "num_branches": BRANCHES.value, "torch_threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            figures["gpu"] = torch.cuda.get_device_name()
        if TINY.value:
            figures.update(bench_sampling(config, accelerator, REPEATS.value, tmp))
            figures.update(bench_training(config, accelerator, REPEATS.value))
        if TINY.value and SCRIPTS.value:
            figures.update(bench_scripts(config, overrides))
        if LAB_BATCHES.value >= 0:
            figures.update(bench_logprob_agreement(TODAY, "today"))
            figures.update(bench_logprob_agreement(FAST, "fast"))
        if LAB_BATCHES.value > 0:
            figures.update(bench_lab_stage(tmp, LAB_REPEATS.value, LAB_BATCHES.value))
    if TINY.value:
        figures["sample_ratio_target"] = 1.15 * figures["unet_eval_ratio"]
        figures["train_ratio_target"] = 1.15
    for name, value in figures.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":  # flags are defined only when run: profile_sampling.py imports this file
    MODEL = flags.DEFINE_string("model", "", "diffusers folder to measure; '' builds the tiny model at 64 px")
    REPEATS = flags.DEFINE_integer("repeats", 9, "timed runs of each side of a ratio, alternating, after one warm-up")
    BATCH = flags.DEFINE_integer("batch_size", 8, "B, prompts per sampling batch")
    BRANCHES = flags.DEFINE_integer("num_branches", 4, "K, branches per group")
    STEPS = flags.DEFINE_integer("num_steps", 20, "T, DDIM steps")
    SPLIT = flags.DEFINE_integer("split_step", 14, "s, trained steps")
    TINY = flags.DEFINE_bool("tiny", True, "the sampler, trainer and script figures (all but the lab_* ones)")
    SCRIPTS = flags.DEFINE_bool("scripts", True, "also run the three scripts for their peak memory and the sample file")
    LAB_BATCHES = flags.DEFINE_integer("lab_batches", 48, "sampling batches (8 prompts x K = 8) of the lab stage; "
                                       "48 is config/shapes_scale.py's stage, 0 skips the stage, -1 also the log-probs")
    LAB_REPEATS = flags.DEFINE_integer("lab_repeats", 3, "timed lab stages of each side, alternating")
    PRECISION = flags.DEFINE_enum("mixed_precision", "no", ["no", "fp16", "bf16"], "dtype of the frozen models")
    app.run(main)
