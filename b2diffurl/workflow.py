"""The body of each of the three per-stage scripts: sample, select, train.

Each reads the config, derives its stage plan, does its one job and writes its files.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from b2diffurl.checkpoint import load_lora, load_optimizer_state, save_checkpoint
from b2diffurl.cli import UserError
from b2diffurl.grids import best_worst_grid, save_grid
from b2diffurl.files import atomic_torch_save, atomic_write_json, read_json
from b2diffurl.logs import append_metrics
from b2diffurl.paths import StagePaths, image_name
from b2diffurl.pipeline import load_pipeline, lora_parameters, make_accelerator
from b2diffurl.prompts import choose_prompts, encode_prompts, load_prompts
from b2diffurl.rewards import build_reward, score_images
from b2diffurl.resume import check_continuation
from b2diffurl.sampler import decode_images, sample_branches
from b2diffurl.samples import FORMAT_VERSION, load_samples, save_samples, subset
from b2diffurl.selection import SELECTIONS
from b2diffurl.stages import StagePlan, plan_stage
from b2diffurl.stats import new_history, normalise, record_stage
from b2diffurl.trainer import TrainSettings, train_on_samples

log = logging.getLogger(__name__)


def _peak_gpu_memory() -> dict:
    """{"peak_gpu_memory_gb": ...} on CUDA, else {}."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def _track(accelerator, config, stage: int, scalars: dict, images: dict | None = None) -> None:
    """Stage-level scalars and images to the accelerator's trackers (TensorBoard), at step = stage."""
    if not accelerator.log_with:
        return
    accelerator.init_trackers(config.exp_name)
    accelerator.log({k: float(v) for k, v in scalars.items()}, step=stage)
    for tag, image in (images or {}).items():
        accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, np.asarray(image), stage, dataformats="HWC")
    accelerator.end_training()


def _load_policy(config, plan: StagePlan, device):
    """The pipeline with the LoRA this stage starts from (π_old)."""
    if plan.stage > 0 and not StagePaths.of(config, plan.stage - 1).is_complete():
        raise UserError(f"stage {plan.stage - 1} is not complete, so stage {plan.stage} has no LoRA to start "
                        "from; run_process.sh resumes at the first incomplete stage")
    if plan.resume_from and not os.path.isdir(plan.resume_from):
        raise UserError(f"stage {plan.stage} resumes from {plan.resume_from}, which does not exist")
    pipe = load_pipeline(config, device)
    if plan.resume_from:
        load_lora(pipe.unet, plan.resume_from)
        log.info("LoRA loaded from %s", plan.resume_from)
    return pipe


def _begin(config) -> StagePlan | None:
    """Start of every script: the plan, the continuation check; None for a complete stage."""
    plan = plan_stage(config)
    check_continuation(config)
    if plan.paths.is_complete():
        log.info("stage %d is complete (%s exists); nothing to do", plan.stage, plan.paths.complete_marker)
        return None
    return plan


def stage_meta(config, plan: StagePlan) -> dict:
    """The `meta` of this stage's sample files; selection and training check it."""
    return {
        "num_steps": config.sample.num_steps, "split_step": plan.split_step, "branch_point": plan.branch_point,
        "num_branches": config.num_branches, "eta": config.sample.eta,
        "guidance_scale": config.sample.guidance_scale, "model": config.pretrained.model,
        "seed": plan.seed, "stage": plan.stage, "format_version": FORMAT_VERSION,
    }


def sample_stage(config) -> None:
    """Branch-based sampling of one stage -> sample.pkl, images.pt and PNGs."""
    plan = _begin(config)
    if plan is None:
        return
    if os.path.isdir(plan.paths.root):  # left by an interrupted attempt: redo the stage from its start
        log.warning("stage %d was interrupted; clearing %s and redoing it", plan.stage, plan.paths.root)
        shutil.rmtree(plan.paths.root)
    accelerator = make_accelerator(config)
    device = accelerator.device
    started = time.time()
    pipe = _load_policy(config, plan, device)
    prompts = load_prompts(config.prompt_file)
    rng = np.random.default_rng(plan.seed)
    generator = torch.Generator().manual_seed(plan.seed)
    negative_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    latent_shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    log.info("stage %d: split step %d, branch point %d, %d batches of %d prompts x %d branches",
             plan.stage, plan.split_step, plan.branch_point, config.sample.num_batches_per_stage,
             config.sample.batch_size, config.num_branches)

    parts, batch_prompts_all, images_all = [], [], []
    sampling_started = time.time()
    for batch in tqdm(range(config.sample.num_batches_per_stage), desc=f"stage {plan.stage} sample"):
        batch_prompts = choose_prompts(prompts, config.sample.batch_size, rng)
        prompt_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, batch_prompts)
        with accelerator.autocast():
            part = sample_branches(
                pipe.unet, pipe.scheduler, prompt_embeds, negative_embeds,
                num_steps=config.sample.num_steps, branch_point=plan.branch_point,
                num_branches=config.num_branches, eta=config.sample.eta,
                guidance_scale=config.sample.guidance_scale, latent_shape=latent_shape, generator=generator,
                chunk_size=config.sample.unet_chunk_size, dtype=pipe.unet.dtype,
            )
            images_all.append(decode_images(pipe.vae, part["latents"][:, -1], config.sample.unet_chunk_size))
        part["group"] += batch * config.sample.batch_size
        parts.append({k: v.cpu() for k, v in part.items()})
        batch_prompts_all += batch_prompts

    sampling_seconds = time.time() - sampling_started
    group_id = torch.cat([p["group"] for p in parts])
    record = {
        "prompts": [batch_prompts_all[g] for g in group_id.tolist()],
        "group_id": group_id,
        **{key: torch.cat([p[name] for p in parts]) for key, name in (
            ("branch_id", "branch"), ("timesteps", "timesteps"), ("latents", "latents"), ("log_probs", "log_probs"))},
        "meta": stage_meta(config, plan),
    }
    _write_samples(config, plan.paths, record, torch.cat(images_all))
    seconds = time.time() - started
    append_metrics(plan.paths.metrics, stage=plan.stage, event="sample", split_step=plan.split_step,
                   num_samples=len(record["prompts"]), num_groups=int(group_id.max()) + 1, seconds=round(seconds, 2),
                   sampling_seconds=round(sampling_seconds, 2),
                   images_per_second=round(len(record["prompts"]) / sampling_seconds, 3), **_peak_gpu_memory())
    _track(accelerator, config, plan.stage, {"sample/images_per_second": len(record["prompts"]) / sampling_seconds})
    log.info("stage %d: %d branch samples written to %s in %.1fs", plan.stage, len(record["prompts"]),
             plan.paths.samples, seconds)


def _write_samples(config, stage_paths: StagePaths, record: dict, images: torch.Tensor) -> None:
    """PNGs, images.pt, then sample.pkl (last: its presence means sampling finished)."""
    if config.sample.save_png:
        for image, group, branch in zip(images.numpy(), record["group_id"].tolist(), record["branch_id"].tolist()):
            save_grid(Image.fromarray(image), os.path.join(stage_paths.image_dir, image_name(group, branch)))
    atomic_torch_save(images, stage_paths.images)
    save_samples(record, stage_paths.samples)


def _previous_history(config, plan: StagePlan) -> dict:
    """The per-prompt history as the previous stage left it (empty for the first stage)."""
    previous = StagePaths.of(config, plan.stage - 1).history if plan.stage > 0 else None
    if previous is None or not os.path.exists(previous):
        return new_history(config.eval.history_cnt)
    return {**read_json(previous), "history_cnt": config.eval.history_cnt}


def select_stage(config) -> None:
    """Score every branch image, normalise per prompt, select -> sample_stage.pkl, history.json."""
    plan = _begin(config)
    if plan is None:
        return
    stage_paths = plan.paths
    record = load_samples(stage_paths.samples, expect=stage_meta(config, plan))
    images = torch.load(stage_paths.images, weights_only=True).numpy()
    if len(images) != len(record["prompts"]):
        raise ValueError(f"{stage_paths.images} holds {len(images)} images for {len(record['prompts'])} samples")
    accelerator = make_accelerator(config)
    reward = build_reward(config.reward, accelerator.device)
    log.info("stage %d: scoring %d images with %s", plan.stage, len(images), config.reward.name)
    scores = score_images(reward, images, record["prompts"], config.reward.batch_size)
    finite = np.isfinite(scores)
    if not finite.all():
        log.warning("stage %d: %d non-finite rewards dropped", plan.stage, int((~finite).sum()))

    history = record_stage(_previous_history(config, plan), plan.stage, record["prompts"], scores.tolist())
    advantages = normalise(history, record["prompts"], scores.tolist())
    select = SELECTIONS[config.eval.selection]
    chosen = select(record["group_id"].numpy(), advantages, config.eval.pos_threshold, config.eval.neg_threshold)
    selected = subset(record, torch.from_numpy(chosen),
                      advantages=torch.from_numpy(advantages[chosen]).float(),
                      rewards=torch.from_numpy(scores[chosen]).float())
    atomic_write_json(history, stage_paths.history)
    grid = None
    if finite.any():
        grid = best_worst_grid(images, record["group_id"].numpy(), record["branch_id"].numpy(), scores, advantages,
                               max_groups=8, scale=max(1, 128 // images.shape[1]))
        save_grid(grid, stage_paths.best_worst_grid)
    save_samples(selected, stage_paths.selected, selected=True)

    positive = int((advantages[chosen] > 0).sum())
    finite_scores = scores[finite] if finite.any() else np.full(1, np.nan)
    reward_stats = {"mean": finite_scores.mean(), "std": finite_scores.std(), "max": finite_scores.max(),
              "min": finite_scores.min()}
    counts = {"selected": len(chosen), "positive": positive, "negative": len(chosen) - positive}
    append_metrics(stage_paths.metrics, stage=plan.stage, event="select", split_step=plan.split_step,
                   **{f"reward_{k}": v for k, v in reward_stats.items()}, num_samples=len(scores),
                   **{f"num_{k}": v for k, v in counts.items()}, num_nonfinite_rewards=int((~finite).sum()))
    _track(accelerator, config, plan.stage,
           {**{f"reward/{k}": v for k, v in reward_stats.items()}, **{f"selection/{k}": v for k, v in counts.items()}},
           images={"best_worst": grid} if grid is not None else None)
    log.info("stage %d: reward mean %.4f, selected %d of %d (%d positive)", plan.stage, reward_stats["mean"],
             len(chosen), len(scores), positive)


def train_stage(config) -> None:
    """The LoRA policy-gradient update over the selected samples -> checkpoints/, then COMPLETE."""
    plan = _begin(config)
    if plan is None:
        return
    stage_paths = plan.paths
    samples = load_samples(stage_paths.selected, selected=True, expect=stage_meta(config, plan))
    accelerator = make_accelerator(config)
    pipe = _load_policy(config, plan, accelerator.device)
    t = config.train
    optimizer = torch.optim.AdamW(lora_parameters(pipe.unet), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                  weight_decay=t.adam_weight_decay, eps=t.adam_epsilon)
    if plan.resume_from and load_optimizer_state(optimizer, plan.resume_from):
        log.info("optimiser state restored from %s", plan.resume_from)
    metrics_path = stage_paths.metrics
    num_samples = len(samples["prompts"])
    state = {"stage": plan.stage, "split_step": plan.split_step, "num_samples": num_samples}
    if num_samples == 0:
        log.warning("stage %d: no sample passed the thresholds; training skipped, LoRA carried forward",
                    plan.stage)
        state["skipped"] = True
        save_checkpoint(pipe.unet, stage_paths.checkpoint, optimizer, {**state, "config": config.to_dict()})
        append_metrics(metrics_path, stage=plan.stage, event="train", split_step=plan.split_step, num_samples=0,
                       skipped=True, reason="no selected samples")
        _mark_complete(stage_paths, state)
        return

    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)

    steps = []

    def on_optimizer_step(info: dict) -> None:
        steps.append(info)
        append_metrics(metrics_path, stage=plan.stage, event="optimizer_step", split_step=plan.split_step, **info)

    generator = torch.Generator().manual_seed(plan.seed)
    log.info("stage %d: training on %d selected samples x %d steps", plan.stage, num_samples, plan.split_step)
    training_started = time.time()
    prompt_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, samples["prompts"])  # as sampling made them
    negative_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    totals = train_on_samples(unet, pipe.scheduler, samples, prompt_embeds, negative_embeds,
                              TrainSettings.from_config(config), accelerator, optimizer, generator, on_optimizer_step)
    state.update(totals, skipped=False)
    save_checkpoint(accelerator.unwrap_model(unet), stage_paths.checkpoint, optimizer,
                    {**state, "config": config.to_dict()})
    append_metrics(metrics_path, stage=plan.stage, event="train", split_step=plan.split_step,
                   num_samples=num_samples, skipped=False, training_seconds=round(time.time() - training_started, 2),
                   **totals, **_peak_gpu_memory())
    _track(accelerator, config, plan.stage, {
        **{f"train/{k}": np.nanmean([step[k] for step in steps]) for k in ("loss", "approx_kl", "clipfrac", "grad_norm")},
        "train/optimizer_steps": totals["optimizer_steps"], "train/skipped_steps": totals["skipped_steps"]})
    _mark_complete(stage_paths, state)
    log.info("stage %d: %d optimiser steps (%d skipped), LoRA saved to %s", plan.stage, totals["optimizer_steps"],
             totals["skipped_steps"], stage_paths.checkpoint)


def _mark_complete(stage_paths: StagePaths, state: dict) -> None:
    """The completion marker, written last: its presence means every file of the stage is final."""
    atomic_write_json(state, stage_paths.complete_marker)
