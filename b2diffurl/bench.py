"""Side-by-side speed, file-size and memory figures on the tiny model (issue: performance).

    python -m b2diffurl.bench                 # prints `name: value` lines
    python -m b2diffurl.bench --repeats 5

Every ratio is measured in this one run, against a reference measured right beside it:
- sample_ratio: our stage sampling (B prompts, K branches, T steps, CFG, log-probs, decoding
  and file writing) over a plain StableDiffusionPipeline making B·K images, same model, steps,
  guidance and eta. unet_eval_ratio = (B·b + B·K·s) / (B·K·T) is the floor prefix sharing allows.
- train_ratio: seconds per trained (sample, step) pair in the trainer over a bare LoRA UNet
  forward+backward with CFG on the same shapes.
- sample_file_ratio: bytes of sample.pkl per branch sample over the original layout's
  2·T latents per sample in the same dtype.
- peak_rss_mb_*: peak resident memory of each of the three scripts on one stage.
Medians of --repeats runs after one warm-up; the machine's noise is in the spread, printed too.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from absl import app, flags

REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per figure (after one warm-up)")
B, K, T, S = 8, 4, 20, 14  # prompts per batch, branches, steps, split step: compute-dominated on 2 cores
GUIDANCE, ETA = 5.0, 1.0
PROMPTS = ["a red apple", "a blue plum", "a green pear", "a yellow lemon", "a purple grape", "a black tomato",
           "a white onion", "an orange carrot"]


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """(median, max - min) of `repeats` timed calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times) - min(times)


def _config(model_dir: str, save_path: str):
    from config import tiny

    config = tiny.get_config()
    config.pretrained.model, config.pretrained.build_tiny = model_dir, False
    config.save_path, config.log_dir = save_path, os.path.join(save_path, "log")
    config.sample.num_steps, config.sample.batch_size, config.num_branches = T, B, K
    config.sample.num_batches_per_stage, config.sample.unet_chunk_size = 1, B * K
    config.split_step, config.tensorboard, config.sample.save_png = S, False, False
    config.train.batch_size, config.train.gradient_accumulation_steps, config.train.num_epochs = 4, 4, 1
    config.eval.pos_threshold = config.eval.neg_threshold = 0.0  # train on two samples of every group
    return config


def _policy_and_trajectories(config):
    """The project's pipeline (fresh LoRA), the bench prompts' embeddings, and one stage's branches."""
    from b2diffurl.pipeline import load_pipeline
    from b2diffurl.prompts import encode_prompts
    from b2diffurl.sampler import sample_branches

    pipe = load_pipeline(config, torch.device("cpu"))
    unet = pipe.unet
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])

    def sample() -> dict:
        with torch.no_grad():
            return sample_branches(unet, pipe.scheduler, embeds, negative, num_steps=T, branch_point=T - S,
                                   num_branches=K, eta=ETA, guidance_scale=GUIDANCE, latent_shape=shape,
                                   generator=torch.Generator().manual_seed(0), chunk_size=B * K)

    return pipe, embeds, negative, sample


def bench_sampling(config, repeats: int, out_dir: str) -> dict:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from b2diffurl.files import atomic_torch_save
    from b2diffurl.prompts import encode_prompts
    from b2diffurl.sampler import decode_images

    pipe, _, _, sample = _policy_and_trajectories(config)
    path = os.path.join(out_dir, "bench_sample.pkl")

    def ours():  # the text encoding is part of a stage's sampling, so it is timed too
        encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS + [""])
        out = sample()
        images = decode_images(pipe.vae, out["latents"][:, -1])
        atomic_torch_save(out, path)
        atomic_torch_save(images, path + ".images")

    plain = StableDiffusionPipeline.from_pretrained(config.pretrained.model, safety_checker=None)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)

    def reference():
        plain([p for p in PROMPTS for _ in range(K)], num_inference_steps=T, guidance_scale=GUIDANCE, eta=ETA,
              generator=torch.Generator().manual_seed(0), output_type="np")

    with torch.no_grad():
        ours_s, ours_spread = _median_time(ours, repeats)
        ref_s, ref_spread = _median_time(reference, repeats)
    return {"sample_seconds": ours_s, "sample_spread_seconds": ours_spread, "diffusers_seconds": ref_s,
            "diffusers_spread_seconds": ref_spread, "sample_ratio": ours_s / ref_s,
            "unet_eval_ratio": (B * (T - S) + B * K * S) / (B * K * T)}


def bench_training(config, repeats: int) -> dict:
    from accelerate import Accelerator

    from b2diffurl.guidance import guided_noise
    from b2diffurl.pipeline import lora_parameters
    from b2diffurl.samples import subset
    from b2diffurl.trainer import TrainSettings, train_on_samples

    pipe, embeds, negative, sample = _policy_and_trajectories(config)
    unet = pipe.unet
    out = sample()
    record = {"prompts": [PROMPTS[g] for g in out["group"].tolist()], "group_id": out["group"],
              "branch_id": out["branch"], "timesteps": out["timesteps"], "latents": out["latents"],
              "log_probs": out["log_probs"]}
    num = 2 * B  # as many as best/worst selection keeps at most
    advantages = torch.from_numpy(np.random.default_rng(0).normal(size=num)).float()
    samples = subset(record, torch.arange(num), advantages=advantages, rewards=advantages)
    settings = TrainSettings.from_config(config)
    params = lora_parameters(unet)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    accelerator = Accelerator(cpu=True)

    def ours():
        train_on_samples(unet, pipe.scheduler, samples, embeds[samples["group_id"]], negative, settings, accelerator,
                         optimizer, torch.Generator().manual_seed(0))

    bs = settings.batch_size
    x, t = samples["latents"][:bs, 0], samples["timesteps"][:bs, 0]
    text = embeds[samples["group_id"][:bs]]

    def bare():
        for _ in range(num // bs):
            guided_noise(unet, x, t, text, negative, GUIDANCE).float().mean().backward()
        optimizer.zero_grad(set_to_none=True)

    ours_s, _ = _median_time(ours, repeats)
    bare_s, _ = _median_time(bare, repeats)
    per_pair, bare_per_pair = ours_s / (num * S), bare_s / num
    return {"train_seconds_per_pair": per_pair, "bare_seconds_per_pair": bare_per_pair,
            "train_ratio": per_pair / bare_per_pair}


def bench_scripts(config, model_dir: str) -> dict:
    """Peak RSS (MB) of each script on one stage, and the sample file's size ratio."""
    from b2diffurl.samples import load_samples
    from b2diffurl.stages import plan_stage

    wrapper = ("import resource, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n"
               "    runpy.run_path(sys.argv[0], run_name='__main__')\nfinally:\n"
               "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    overrides = ["--config", "config/tiny.py", "--config.pretrained.model", model_dir,
                 "--config.pretrained.build_tiny=False", "--config.save_path", config.save_path,
                 "--config.log_dir", config.log_dir, "--config.sample.num_steps", str(T),
                 "--config.sample.batch_size", str(B), "--config.num_branches", str(K),
                 "--config.sample.num_batches_per_stage", "1", "--config.split_step", str(S),
                 "--config.tensorboard=False", "--config.sample.save_png=False"]
    figures = {}
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        result = subprocess.run([sys.executable, "-c", wrapper, script, *overrides], cwd=repo, capture_output=True,
                                text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            raise RuntimeError(f"{script} failed: {result.stderr[-2000:]}")
        peak = [line for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB")][-1]
        figures[f"peak_rss_mb_{script[4:-3]}"] = int(peak.split()[1]) / 1024
    path = plan_stage(config).paths.samples
    record = load_samples(path)
    latent = record["latents"][0, 0]
    original = 2 * T * latent.numel() * latent.element_size()
    figures["sample_file_ratio"] = os.path.getsize(path) / len(record["prompts"]) / original
    figures["sample_file_target"] = (S + 1) / (2 * T) + 0.05
    return figures


def main(argv) -> None:
    from b2diffurl.logs import setup_logging
    from b2diffurl.tiny import save_tiny_pipeline

    setup_logging()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_pipeline(os.path.join(tmp, "tiny-sd"))
        config = _config(model_dir, os.path.join(tmp, "runs"))
        figures = {"num_steps": T, "split_step": S, "batch_size": B, "num_branches": K,
                   "torch_threads": torch.get_num_threads()}
        figures.update(bench_sampling(config, REPEATS.value, tmp))
        figures.update(bench_training(config, REPEATS.value))
        figures.update(bench_scripts(config, model_dir))
    for name, value in figures.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    app.run(main)
