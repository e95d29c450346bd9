"""Step 3 of a stage (run_train.py): the clipped policy-gradient update of the LoRA.

Reads:  stage{k}/sample_stage.pkl (the selected trajectories with their advantages),
        stage{k-1}/checkpoints/ (the LoRA, and the optimiser and grad-scaler state it resumes
        unless train.fresh_optimizer).
Writes: stage{k}/checkpoints/ (the LoRA in the diffusers format, optimizer.pt,
        grad_scaler.pt under fp16, training_state.json), `optimizer_step` and `train` lines in
        metrics.jsonl, then COMPLETE (last: the stage is done).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from b2diffurl.logs import append_metrics
from b2diffurl.method.update import TrainSettings, lora_parameters, train_on_samples
from b2diffurl.models.checkpoint import load_training_state, save_checkpoint
from b2diffurl.models.prompts import encode_prompts
from b2diffurl.stage.card import write_model_card
from b2diffurl.stage.context import (
    begin,
    load_policy,
    make_accelerator,
    mark_complete,
    peak_gpu_memory,
    stage_meta,
)
from b2diffurl.stage.retention import sweep
from b2diffurl.stage.sample_file import load_samples
from b2diffurl.tracking import track

log = logging.getLogger(__name__)


def train_settings(config) -> TrainSettings:
    """The update's settings from the config (train.*, sample.*)."""
    t = config.train
    return TrainSettings(config.sample.num_steps, config.sample.eta, config.sample.guidance_scale, t.batch_size,
                         t.gradient_accumulation_steps, t.num_epochs, t.clip_range, t.adv_clip_max, t.pos_weight,
                         t.neg_weight, t.max_grad_norm, t.steps_per_forward, t.step_weighting)


def build_optimizer(config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW over the LoRA parameters with train.*'s settings; bitsandbytes' 8-bit AdamW when
    train.use_8bit_adam (optimiser state in 8 bits: less memory, for large LoRA ranks)."""
    t = config.train
    optimizer_class = torch.optim.AdamW
    if t.use_8bit_adam:
        import bitsandbytes  # optional; cli.check_config refuses use_8bit_adam without it

        optimizer_class = bitsandbytes.optim.AdamW8bit
    return optimizer_class(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                           weight_decay=t.adam_weight_decay, eps=t.adam_epsilon)


def train_stage(config, command: str | None = None) -> None:
    """The LoRA policy-gradient update over the selected samples -> checkpoints/ (with its model
    card, which names `command` as the run's), then COMPLETE.

    Under `accelerate launch` with N processes the UNet is wrapped in DDP: every process holds
    all selected samples, runs its share of each optimiser step's batches, and gradients are
    averaged across processes before every step, so all processes end with the same LoRA (which
    is checked) and the main process saves it.
    """
    accelerator = make_accelerator(config)
    plan = begin(config, accelerator)
    if plan is None:
        return
    stage_paths = plan.paths
    main = accelerator.is_main_process
    samples = load_samples(stage_paths.selected, selected=True, expect=stage_meta(config, plan))
    pipe = load_policy(config, plan, accelerator.device)
    if config.train.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    optimizer = build_optimizer(config, lora_parameters(pipe.unet))
    restored = []
    if plan.resume_from:
        carried = None if config.train.fresh_optimizer else optimizer
        restored = load_training_state(plan.resume_from, carried, accelerator.scaler)
    if restored:
        log.info("%s state restored from %s", " and ".join(restored), plan.resume_from)
    metrics_path = stage_paths.metrics
    num_samples = len(samples["prompts"])
    state = {"stage": plan.stage, "split_step": plan.split_step, "num_samples": num_samples}
    saved = {"command": command, "config": config.to_dict()}  # beside the LoRA: what its model card names
    if num_samples == 0:
        log.warning("stage %d: no sample passed the thresholds; training skipped, LoRA carried forward",
                    plan.stage)
        if main:
            state["skipped"] = True
            save_checkpoint(pipe.unet, stage_paths.checkpoint, optimizer, {**state, **saved},
                            accelerator.scaler)
            write_model_card(config, plan.stage)
            append_metrics(metrics_path, stage=plan.stage, event="train", split_step=plan.split_step, num_samples=0,
                           skipped=True, reason="no selected samples")
            mark_complete(stage_paths, state)
            sweep(config, plan.stage)
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
                              train_settings(config), accelerator, optimizer, generator, on_optimizer_step)
    unet = accelerator.unwrap_model(unet)
    if accelerator.num_processes > 1:
        _check_processes_agree(accelerator, unet)
    if not main:
        return
    untrained = totals["optimizer_steps"] > 0 and totals["skipped_steps"] == totals["optimizer_steps"]
    state.update(totals, skipped=False, untrained=untrained)
    if untrained:
        _refuse_untrained_streak(config, plan.stage, totals["optimizer_steps"])
    save_checkpoint(unet, stage_paths.checkpoint, optimizer, {**state, **saved}, accelerator.scaler)
    write_model_card(config, plan.stage)
    append_metrics(metrics_path, stage=plan.stage, event="train", split_step=plan.split_step,
                   num_samples=num_samples, num_processes=accelerator.num_processes, skipped=False, untrained=untrained,
                   training_seconds=round(time.time() - training_started, 2), **totals, **peak_gpu_memory())
    track(accelerator, config, plan.stage, {
        **{f"train/{k}": np.nanmean([step[k] for step in steps]) for k in ("loss", "approx_kl", "clipfrac", "grad_norm")},
        "train/optimizer_steps": totals["optimizer_steps"], "train/skipped_steps": totals["skipped_steps"],
        **({"train/loss_scale": steps[-1]["loss_scale"]} if steps and "loss_scale" in steps[-1] else {})})
    mark_complete(stage_paths, state)
    sweep(config, plan.stage)
    log.info("stage %d: %d optimiser steps (%d skipped) of %d samples used %d of %d sample passes (%d left over); "
             "LoRA saved to %s", plan.stage, totals["optimizer_steps"], totals["skipped_steps"],
             config.train.batch_size * config.train.gradient_accumulation_steps, totals["samples_used"],
             totals["samples_used"] + totals["samples_left_over"], totals["samples_left_over"], stage_paths.checkpoint)


def _refuse_untrained_streak(config, stage: int, num_steps: int) -> None:
    """Called when stage `stage` skipped all `num_steps` of its optimiser steps: a warning, or
    UntrainedStageError once train.max_untrained_stages stages in a row have (the stage is then
    not marked complete)."""
    from b2diffurl.errors import UntrainedStageError
    from b2diffurl.files import read_json
    from b2diffurl.paths import StagePaths

    streak = [stage]
    while streak[0] > 0 and read_json(StagePaths.of(config, streak[0] - 1).complete_marker).get("untrained"):
        streak.insert(0, streak[0] - 1)
    what = (f"every one of the {num_steps} optimiser steps of stage {stage} was skipped (non-finite loss or "
            "gradient, or fp16 overflow)")
    if len(streak) >= config.train.max_untrained_stages:
        raise UntrainedStageError(
            f"{what}, as in every stage since {streak[0]} ({len(streak)} in a row, train.max_untrained_stages = "
            f"{config.train.max_untrained_stages}); the stage is not marked complete: lower train.learning_rate or "
            "use mixed_precision 'bf16' or 'no', then rerun the same command")
    log.warning("%s: its LoRA is the previous stage's; the run stops if %d stages in a row do not train", what,
                config.train.max_untrained_stages)


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
