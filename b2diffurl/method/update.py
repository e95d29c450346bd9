"""One training stage: the clipped policy-gradient update of the LoRA over selected samples.

The stage's schedule follows the authors' release. Each epoch reshuffles the samples and, per
sample, the order of the interval's steps, and cuts the samples into forward batches of
`batch_size` (a short last batch is dropped). The epochs' batches form one stream, and every
`gradient_accumulation_steps` consecutive batches of it, each over all s steps, make one
optimiser step, across epoch boundaries; the stream's trailing partial accumulation never
becomes a step and is not computed. With M selected samples, E epochs, batch b and
accumulation G that is floor(E * floor(M / b) / G) optimiser steps: the release's count for its
batch 2 (see `update_schedule`). Idea of per-sample step shuffling from ddpo-pytorch.
Under N processes (DDP) each optimiser step's batches are shared out between the processes, so
the update is the one a single process would make, N times faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from b2diffurl.method.ddim import ddim_std, ddim_step_with_log_prob
from b2diffurl.method.guidance import guided_noise
from b2diffurl.method.loss import clipped_pg_loss, step_weights, weighted_advantages


@dataclasses.dataclass
class TrainSettings:
    """The update's settings (the config's train.* and sample.*: stage.train.train_settings)."""

    num_steps: int  # T, to set the scheduler's timesteps
    eta: float
    guidance_scale: float
    batch_size: int
    gradient_accumulation_steps: int
    num_epochs: int
    clip_range: float
    adv_clip_max: float
    pos_weight: float
    neg_weight: float
    max_grad_norm: float
    steps_per_forward: int = 1  # steps of each sample in one UNet call: rows = batch_size x this
    step_weighting: str = "uniform"  # loss.step_weights: "uniform" (the paper) or "std" (a variant)



@dataclasses.dataclass(frozen=True)
class Batch:
    """One forward batch of the update: which samples, in which step order."""

    epoch: int
    rows: torch.Tensor  # long [batch_size]: sample indices
    step_order: torch.Tensor  # long [batch_size, s]: column j is each sample's j-th step index


@dataclasses.dataclass(frozen=True)
class UpdateSchedule:
    """The optimiser steps of a stage, each a list of `gradient_accumulation_steps` batches."""

    steps: list[list[Batch]]
    samples_used: int  # sample passes (sample x epoch) inside optimiser steps
    samples_left_over: int  # sample passes of the stage not used: short batches, trailing accumulation


def update_schedule(num_samples: int, split_step: int, batch_size: int, gradient_accumulation_steps: int,
                    num_epochs: int, generator: torch.Generator) -> UpdateSchedule:
    """The stage's optimiser steps: per epoch a permutation of the samples (and of each sample's
    steps) cut into full batches; the epochs' batches in one stream, cut into groups of
    `gradient_accumulation_steps`; a trailing short group is dropped.

    The release (its run_train.py, batch 2, accumulation 64) counts accelerate's accumulation
    over every (batch, step) micro-step of the stage and never steps on the remainder, which
    gives the same floor(E * floor(M / 2) / 64) optimiser steps of 128 samples."""
    batches = []
    for epoch in range(num_epochs):
        order = torch.randperm(num_samples, generator=generator)
        step_order = torch.stack([torch.randperm(split_step, generator=generator) for _ in range(num_samples)]) \
            if num_samples else torch.zeros(0, split_step, dtype=torch.long)
        batches += [Batch(epoch, rows, step_order[rows]) for rows in order.split(batch_size) if len(rows) == batch_size]
    num_steps = len(batches) // gradient_accumulation_steps
    steps = [batches[i * gradient_accumulation_steps:(i + 1) * gradient_accumulation_steps] for i in range(num_steps)]
    used = num_steps * gradient_accumulation_steps * batch_size
    return UpdateSchedule(steps, used, num_epochs * num_samples - used)


def lora_parameters(unet) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters of the UNet."""
    return [p for p in unet.parameters() if p.requires_grad]


def process_share(group: list, rank: int, num_processes: int) -> list[tuple[object, bool]]:
    """Process `rank`'s share of one optimiser step's batches, as (batch, real) pairs.

    Batches go round-robin to the processes; every process gets as many passes (a short share
    is padded with passes over the group's first batch, with real = False, whose loss is
    weighted 0), because DDP needs every process to run the same number of backward passes."""
    mine = group[rank::num_processes]
    share = -(-len(group) // num_processes)
    return [(batch, True) for batch in mine] + [(group[0], False)] * (share - len(mine))


def train_on_samples(
    unet,
    scheduler,
    samples: dict,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    settings: TrainSettings,
    accelerator,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    on_optimizer_step: Callable[[dict], None] = lambda info: None,
) -> dict:
    """Train `unet`'s LoRA on a selected-sample record (stage.sample_file); returns stage totals.

    prompt_embeds [M, L, D]: the text embedding of each sample's prompt; negative_embeds
    [1, L, D]: the empty prompt's (both from prompts.encode_prompts, as sampling made them).

    `on_optimizer_step` receives, after each optimiser step, the mean loss, approx KL and clip
    fraction over its micro-steps, the grad norm, whether the step was skipped (non-finite),
    and under fp16 the loss scale the step used.
    """
    device = accelerator.device
    scheduler.set_timesteps(settings.num_steps, device=device)
    num_samples, split_step = samples["log_probs"].shape
    tensors = {
        "latents": samples["latents"].to(device),  # [M, s+1, C, H, W]
        "timesteps": samples["timesteps"].to(device),  # [M, s]
        "old_log_probs": samples["log_probs"].to(device),  # [M, s]
        "step_weights": step_weights(ddim_std(scheduler, samples["timesteps"], settings.eta),
                                     settings.step_weighting).to(device),  # [M, s]
        "advantages": weighted_advantages(samples["advantages"].to(device, torch.float32), settings.adv_clip_max,
                                          settings.pos_weight, settings.neg_weight),  # [M]
        "prompt_embeds": prompt_embeds.to(device),  # [M, L, D]
        "negative_embeds": negative_embeds.to(device),  # [1, L, D]
    }
    params = lora_parameters(unet)
    schedule = update_schedule(num_samples, split_step, settings.batch_size, settings.gradient_accumulation_steps,
                               settings.num_epochs, generator)
    scaler = accelerator.scaler
    totals = {"optimizer_steps": 0, "skipped_steps": 0, "samples_used": schedule.samples_used,
              "samples_left_over": schedule.samples_left_over}
    if scaler is not None:
        totals["loss_scale_start"] = float(scaler.get_scale())
    unet.train()

    for group in tqdm(schedule.steps, desc="optimiser steps", leave=False, disable=not accelerator.is_main_process):
        micro_steps = len(group) * split_step  # over all processes
        mine = process_share(group, accelerator.process_index, accelerator.num_processes)
        sums = torch.zeros(3, dtype=torch.float64)  # loss, approx_kl, clipfrac, summed over micro-steps
        for b, (batch, real) in enumerate(mine):
            sums += _backward_batch(unet, scheduler, tensors, batch, real, b == len(mine) - 1, micro_steps, settings,
                                    accelerator)
        if accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(device), "sum").cpu()
        means = dict(zip(("loss", "approx_kl", "clipfrac"), sums.tolist()))
        loss_scale = {"loss_scale": float(scaler.get_scale())} if scaler is not None else {}
        grad_norm = accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        finite = math.isfinite(means["loss"]) and math.isfinite(grad_norm)
        # A non-finite loss or gradient must not reach the weights. Under fp16 the grad
        # scaler skips such steps itself and must see them to lower its scale. Every process
        # sees the same (reduced) values, so all take the same branch.
        if finite or scaler is not None:
            optimizer.step()
        skipped = not finite or accelerator.optimizer_step_was_skipped
        optimizer.zero_grad(set_to_none=True)
        totals["optimizer_steps"] += 1
        totals["skipped_steps"] += int(skipped)
        on_optimizer_step({"epoch": group[-1].epoch, **means, "grad_norm": grad_norm, "skipped": skipped,
                           **loss_scale})
    if scaler is not None:
        totals["loss_scale_end"] = float(scaler.get_scale())
    unet.eval()
    return totals


def _backward_batch(unet, scheduler, tensors: dict, batch: Batch, real: bool, last_batch: bool, micro_steps: int,
                    settings: TrainSettings, accelerator) -> torch.Tensor:
    """The backward passes of one forward batch over all s steps, each step with its share
    1 / micro_steps of the optimiser step's loss (zero for a padding pass, real = False);
    returns the batch's (loss, approx KL, clip fraction) summed with those weights.

    `settings.steps_per_forward` = n puts n steps of every sample into one UNet call (rows
    step-major: the batch at its j-th step, then at its (j+1)-th, ...). The loss of a call is
    the mean over its rows, so it is scaled by its number of steps: the gradient is that of n
    calls of one step each, up to float rounding."""
    device = accelerator.device
    rows = batch.rows.to(device)
    sums = torch.zeros(3, dtype=torch.float64)
    split_step = batch.step_order.shape[1]
    for first in range(0, split_step, settings.steps_per_forward):
        cols = batch.step_order[:, first:first + settings.steps_per_forward].T.reshape(-1).to(device)
        steps = len(cols) // len(rows)
        chunk_rows = rows.repeat(steps)  # per-sample step index in `cols`, step-major
        # DDP averages gradients over processes, hence the factor num_processes; it
        # synchronises them on the last backward pass of the step only.
        last = last_batch and first + steps == split_step
        with contextlib.nullcontext() if last else accelerator.no_sync(unet), accelerator.autocast():
            x = tensors["latents"][chunk_rows, cols]
            t = tensors["timesteps"][chunk_rows, cols]
            eps = guided_noise(unet, x, t, tensors["prompt_embeds"][chunk_rows], tensors["negative_embeds"],
                               settings.guidance_scale)
            _, log_prob = ddim_step_with_log_prob(scheduler, eps, t, x, settings.eta,
                                                  prev_sample=tensors["latents"][chunk_rows, cols + 1])
            loss, info = clipped_pg_loss(log_prob, tensors["old_log_probs"][chunk_rows, cols],
                                         tensors["advantages"][chunk_rows], settings.clip_range,
                                         tensors["step_weights"][chunk_rows, cols])
        # this call's steps' share (steps / micro_steps) of the optimiser step's loss
        accelerator.backward(loss * accelerator.num_processes * steps / micro_steps if real else loss * 0.0)
        if real:
            sums += torch.tensor([loss.item(), info["approx_kl"].item(), info["clipfrac"].item()],
                                 dtype=torch.float64) * steps / micro_steps
    return sums
