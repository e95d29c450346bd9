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

from b2diffurl.checkpoint import load_lora, load_training_state, save_checkpoint
from b2diffurl.cli import UserError
from b2diffurl.grids import best_worst_grid, save_grid
from b2diffurl.files import atomic_torch_save, atomic_write_json, read_json
from b2diffurl.logs import append_metrics
from b2diffurl.paths import StagePaths, image_name
from b2diffurl.pipeline import load_pipeline, lora_merged, lora_parameters, make_accelerator
from b2diffurl.prompts import choose_prompts, encode_prompts, load_prompts
from b2diffurl.rewards import build_reward, score_images
from b2diffurl.resume import check_continuation
from b2diffurl.sampler import decode_images, sample_branches
from b2diffurl.samples import FORMAT_VERSION, SampleFileError, concatenate, load_samples, save_samples, subset
from b2diffurl.selection import SELECTIONS
from b2diffurl.stages import StagePlan, plan_stage
from b2diffurl.stats import new_history, normalise, record_stage
from b2diffurl.trainer import TrainSettings, build_optimizer, train_on_samples

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


def _begin(config, accelerator, clear_interrupted: bool = False) -> StagePlan | None:
    """Start of every script: the plan and the continuation check (recorded by the main
    process); None for a complete stage. With `clear_interrupted`, the main process removes the
    folder an interrupted attempt left, so the stage is redone from its start; every process
    waits for that."""
    plan = plan_stage(config)
    if accelerator.is_main_process:
        check_continuation(config)
        if clear_interrupted and not plan.paths.is_complete() and os.path.isdir(plan.paths.root):
            log.warning("stage %d was interrupted; clearing %s and redoing it", plan.stage, plan.paths.root)
            shutil.rmtree(plan.paths.root)
    accelerator.wait_for_everyone()
    if plan.paths.is_complete():
        log.info("stage %d is complete (%s exists); nothing to do", plan.stage, plan.paths.complete_marker)
        return None
    return plan


def batch_seed(stage_seed: int, batch: int) -> int:
    """The seed of one sampling batch (prompt draw and noise): a batch's samples do not depend
    on how many processes share the stage or which one draws it."""
    return int(np.random.SeedSequence([stage_seed, batch]).generate_state(1)[0])


def stage_meta(config, plan: StagePlan) -> dict:
    """The `meta` of this stage's sample files; selection and training check it."""
    return {
        "num_steps": config.sample.num_steps, "split_step": plan.split_step, "branch_point": plan.branch_point,
        "num_branches": config.num_branches, "eta": config.sample.eta,
        "guidance_scale": config.sample.guidance_scale, "model": config.pretrained.model,
        "seed": plan.seed, "stage": plan.stage, "format_version": FORMAT_VERSION,
    }


def sample_stage(config) -> None:
    """Branch-based sampling of one stage -> sample.pkl, images.pt and PNGs.

    Under `accelerate launch` with N processes, process r draws batches r, r+N, ... and writes
    sample.{r}-of-{N}.pkl and images.{r}-of-{N}.pt; selection reads them all. Each batch is
    seeded by (stage seed, batch index), so the stage's samples are the same for any N.
    """
    accelerator = make_accelerator(config)
    plan = _begin(config, accelerator, clear_interrupted=True)
    if plan is None:
        return
    rank, num_processes = accelerator.process_index, accelerator.num_processes
    num_batches = config.sample.num_batches_per_stage
    if num_batches < num_processes:
        raise UserError(f"config.sample.num_batches_per_stage = {num_batches} gives no batch to some of the "
                        f"{num_processes} processes; use at least one batch per process")
    started = time.time()
    pipe = _load_policy(config, plan, accelerator.device)
    prompts = load_prompts(config.prompt_file)
    negative_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    log.info("stage %d: split step %d, branch point %d, %d batches of %d prompts x %d branches%s",
             plan.stage, plan.split_step, plan.branch_point, num_batches, config.sample.batch_size,
             config.num_branches, f" over {num_processes} processes" if num_processes > 1 else "")

    parts, images_all = [], []
    sampling_started = time.time()
    my_batches = range(rank, num_batches, num_processes)
    with lora_merged(pipe.unet, config.sample.merge_lora):
        for batch in tqdm(my_batches, desc=f"stage {plan.stage} sample", disable=not accelerator.is_main_process):
            part, images = _sample_batch(config, plan, pipe, accelerator, prompts, negative_embeds, batch)
            parts.append(part)
            images_all.append(images)

    sampling_seconds = time.time() - sampling_started
    record = {
        "prompts": [prompt for part in parts for prompt in part["prompts"]],
        **{key: torch.cat([p[name] for p in parts]) for key, name in (
            ("group_id", "group"), ("branch_id", "branch"), ("timesteps", "timesteps"), ("latents", "latents"),
            ("log_probs", "log_probs"))},
        "meta": stage_meta(config, plan),
    }
    _write_samples(config, plan.paths, record, torch.cat(images_all), rank, num_processes)
    num_samples = int(accelerator.reduce(torch.tensor(len(record["prompts"]), device=accelerator.device), "sum"))
    accelerator.wait_for_everyone()  # every shard is written
    if not accelerator.is_main_process:
        return
    seconds = time.time() - started
    append_metrics(plan.paths.metrics, stage=plan.stage, event="sample", split_step=plan.split_step,
                   num_samples=num_samples, num_groups=num_batches * config.sample.batch_size,
                   num_processes=num_processes, seconds=round(seconds, 2), sampling_seconds=round(sampling_seconds, 2),
                   images_per_second=round(num_samples / sampling_seconds, 3), **_peak_gpu_memory())
    _track(accelerator, config, plan.stage, {"sample/images_per_second": num_samples / sampling_seconds})
    log.info("stage %d: %d branch samples written to %s in %.1fs", plan.stage, num_samples, plan.paths.root, seconds)


def _sample_batch(config, plan: StagePlan, pipe, accelerator, prompts: list[str], negative_embeds,
                  batch: int) -> tuple[dict, torch.Tensor]:
    """Batch `batch` of the stage, drawn with its own seed: its trajectories (on the CPU, with
    their prompts) and decoded images."""
    latent_shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    seed = batch_seed(plan.seed, batch)
    batch_prompts = choose_prompts(prompts, config.sample.batch_size, np.random.default_rng(seed))
    prompt_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, batch_prompts)
    with accelerator.autocast():
        part = sample_branches(
            pipe.unet, pipe.scheduler, prompt_embeds, negative_embeds,
            num_steps=config.sample.num_steps, branch_point=plan.branch_point,
            num_branches=config.num_branches, eta=config.sample.eta,
            guidance_scale=config.sample.guidance_scale, latent_shape=latent_shape,
            generator=torch.Generator().manual_seed(seed), chunk_size=config.sample.unet_chunk_size,
            dtype=pipe.unet.dtype,
        )
        images = decode_images(pipe.vae, part["latents"][:, -1], config.sample.decode_chunk_size)
    part["group"] += batch * config.sample.batch_size
    part = {k: v.cpu() for k, v in part.items()}
    part["prompts"] = [batch_prompts[g] for g in part["group"].remainder(config.sample.batch_size).tolist()]
    return part, images


def _write_samples(config, stage_paths: StagePaths, record: dict, images: torch.Tensor, rank: int,
                   num_processes: int) -> None:
    """PNGs, images.pt, then sample.pkl (last: its presence means sampling finished), or this
    process's shards of the last two."""
    if config.sample.save_png:
        for image, group, branch in zip(images.numpy(), record["group_id"].tolist(), record["branch_id"].tolist()):
            save_grid(Image.fromarray(image), os.path.join(stage_paths.image_dir, image_name(group, branch)))
    samples_path, images_path = stage_paths.shard(rank, num_processes)
    atomic_torch_save(images, images_path)
    save_samples(record, samples_path)


def _load_stage_samples(config, plan: StagePlan) -> tuple[dict, np.ndarray]:
    """Every branch sample of the stage and its decoded images, from however many shards."""
    try:
        shards = plan.paths.sample_shards()
    except FileNotFoundError as error:
        raise SampleFileError(str(error)) from None
    records, images = [], []
    for samples_path, images_path in shards:
        records.append(load_samples(samples_path, expect=stage_meta(config, plan)))
        images.append(torch.load(images_path, weights_only=True).numpy())
        if len(images[-1]) != len(records[-1]["prompts"]):
            raise SampleFileError(f"{images_path} holds {len(images[-1])} images for {len(records[-1]['prompts'])} "
                                  "samples")
    return concatenate(records), np.concatenate(images)


def _previous_history(config, plan: StagePlan) -> dict:
    """The per-prompt history as the previous stage left it (empty for the first stage)."""
    previous = StagePaths.of(config, plan.stage - 1).history if plan.stage > 0 else None
    if previous is None or not os.path.exists(previous):
        return new_history(config.eval.history_cnt)
    return {**read_json(previous), "history_cnt": config.eval.history_cnt}


def select_stage(config) -> None:
    """Score every branch image, normalise per prompt, select -> sample_stage.pkl, history.json."""
    accelerator = make_accelerator(config)
    plan = _begin(config, accelerator)
    if plan is None or not accelerator.is_main_process:  # launched on N processes: the main one scores
        return
    stage_paths = plan.paths
    record, images = _load_stage_samples(config, plan)
    reward = build_reward(config.reward, accelerator.device)
    log.info("stage %d: scoring %d images with %s", plan.stage, len(images), config.reward.name)
    scores = score_images(reward, images, record["prompts"], config.reward.batch_size)
    if config.reward.shuffle:  # the control run: what the update does to the model without signal
        scores = np.random.default_rng(plan.seed).permutation(scores)
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
    """The LoRA policy-gradient update over the selected samples -> checkpoints/, then COMPLETE.

    Under `accelerate launch` with N processes the UNet is wrapped in DDP: every process holds
    all selected samples, runs its share of each optimiser step's batches, and gradients are
    averaged across processes before every step, so all processes end with the same LoRA (which
    is checked) and the main process saves it.
    """
    accelerator = make_accelerator(config)
    plan = _begin(config, accelerator)
    if plan is None:
        return
    stage_paths = plan.paths
    main = accelerator.is_main_process
    samples = load_samples(stage_paths.selected, selected=True, expect=stage_meta(config, plan))
    pipe = _load_policy(config, plan, accelerator.device)
    if config.train.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    optimizer = build_optimizer(config, lora_parameters(pipe.unet))
    restored = load_training_state(plan.resume_from, optimizer, accelerator.scaler) if plan.resume_from else []
    if restored:
        log.info("%s state restored from %s", " and ".join(restored), plan.resume_from)
    metrics_path = stage_paths.metrics
    num_samples = len(samples["prompts"])
    state = {"stage": plan.stage, "split_step": plan.split_step, "num_samples": num_samples}
    if num_samples == 0:
        log.warning("stage %d: no sample passed the thresholds; training skipped, LoRA carried forward",
                    plan.stage)
        if main:
            state["skipped"] = True
            save_checkpoint(pipe.unet, stage_paths.checkpoint, optimizer, {**state, "config": config.to_dict()},
                            accelerator.scaler)
            append_metrics(metrics_path, stage=plan.stage, event="train", split_step=plan.split_step, num_samples=0,
                           skipped=True, reason="no selected samples")
            _mark_complete(stage_paths, state)
        return

    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)

    steps = []

    def on_optimizer_step(info: dict) -> None:
        steps.append(info)
        if main:
            append_metrics(metrics_path, stage=plan.stage, event="optimizer_step", split_step=plan.split_step, **info)

    generator = torch.Generator().manual_seed(plan.seed)  # the same on every process: the same batches
    log.info("stage %d: training on %d selected samples x %d steps%s", plan.stage, num_samples, plan.split_step,
             f" over {accelerator.num_processes} processes" if accelerator.num_processes > 1 else "")
    training_started = time.time()
    prompt_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, samples["prompts"])  # as sampling made them
    negative_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    totals = train_on_samples(unet, pipe.scheduler, samples, prompt_embeds, negative_embeds,
                              TrainSettings.from_config(config), accelerator, optimizer, generator, on_optimizer_step)
    unet = accelerator.unwrap_model(unet)
    if accelerator.num_processes > 1:
        _check_processes_agree(accelerator, unet)
    if not main:
        return
    state.update(totals, skipped=False)
    save_checkpoint(unet, stage_paths.checkpoint, optimizer, {**state, "config": config.to_dict()}, accelerator.scaler)
    append_metrics(metrics_path, stage=plan.stage, event="train", split_step=plan.split_step,
                   num_samples=num_samples, num_processes=accelerator.num_processes, skipped=False,
                   training_seconds=round(time.time() - training_started, 2), **totals, **_peak_gpu_memory())
    _track(accelerator, config, plan.stage, {
        **{f"train/{k}": np.nanmean([step[k] for step in steps]) for k in ("loss", "approx_kl", "clipfrac", "grad_norm")},
        "train/optimizer_steps": totals["optimizer_steps"], "train/skipped_steps": totals["skipped_steps"]})
    _mark_complete(stage_paths, state)
    log.info("stage %d: %d optimiser steps (%d skipped) of %d samples used %d of %d sample passes (%d left over); "
             "LoRA saved to %s", plan.stage, totals["optimizer_steps"], totals["skipped_steps"],
             config.train.batch_size * config.train.gradient_accumulation_steps, totals["samples_used"],
             totals["samples_used"] + totals["samples_left_over"], totals["samples_left_over"], stage_paths.checkpoint)


def _check_processes_agree(accelerator, unet) -> None:
    """Raise if the LoRA weights differ between processes (gradients were not synchronised);
    the main process logs that they are identical."""
    flat = torch.cat([p.detach().float().reshape(-1) for p in lora_parameters(unet)])
    gathered = accelerator.gather(flat[None])  # [N, P]
    largest = (gathered - gathered[0]).abs().max().item()
    if largest != 0.0:
        raise RuntimeError(f"the LoRA weights of the {accelerator.num_processes} processes differ by up to {largest:.3g} "
                           "after training: gradients were not synchronised")
    log.info("the LoRA weights of all %d processes are identical", accelerator.num_processes)


def _mark_complete(stage_paths: StagePaths, state: dict) -> None:
    """The completion marker, written last: its presence means every file of the stage is final."""
    atomic_write_json(state, stage_paths.complete_marker)
