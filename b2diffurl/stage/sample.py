"""Step 1 of a stage (run_sample.py): branch-based sampling with DDIM log-probs.

Reads:  stage{k-1}/checkpoints/ (the LoRA this stage starts from; none for stage 0), the
        prompt file (config.prompt_file).
Writes: stage{k}/sample.pkl (every branch trajectory, see sample_file.py), images.pt (the
        decoded images, in the same order), images/g{group}_b{branch}.png (if sample.save_png),
        and a `sample` line in metrics.jsonl.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from b2diffurl.grids import save_grid
from b2diffurl.errors import UserError
from b2diffurl.files import atomic_torch_save
from b2diffurl.logs import append_metrics
from b2diffurl.method.branch_sampling import decode_images, latent_shape, sample_branches, sub_seed
from b2diffurl.models.pipeline import lora_merged
from b2diffurl.models.prompts import choose_prompts, encode_prompts, load_prompts
from b2diffurl.stage.context import begin, load_policy, make_accelerator, peak_gpu_memory, stage_meta
from b2diffurl.paths import StagePaths, image_name
from b2diffurl.stage.plan import StagePlan
from b2diffurl.stage.retention import check_free_space
from b2diffurl.stage.sample_file import make_record, save_samples
from b2diffurl.tracking import track

log = logging.getLogger(__name__)


def sample_stage(config) -> None:
    """Branch-based sampling of one stage -> sample.pkl, images.pt and PNGs.

    Under `accelerate launch` with N processes, process r draws batches r, r+N, ... and writes
    sample.{r}-of-{N}.pkl and images.{r}-of-{N}.pt; selection reads them all. Each batch is
    seeded by (stage seed, batch index), so the stage's samples are the same for any N.
    """
    accelerator = make_accelerator(config)
    plan = begin(config, accelerator, clear_interrupted=True)
    if plan is None:
        return
    if accelerator.is_main_process:
        check_free_space(config, plan.paths.root)
    rank, num_processes = accelerator.process_index, accelerator.num_processes
    num_batches = config.sample.num_batches_per_stage
    if num_batches < num_processes:
        raise UserError(f"config.sample.num_batches_per_stage = {num_batches} gives no batch to some of the "
                        f"{num_processes} processes; use at least one batch per process")
    started = time.time()
    pipe = load_policy(config, plan, accelerator.device)
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
    record = make_record(parts, [prompt for part in parts for prompt in part["prompts"]], stage_meta(config, plan))
    _write_samples(config, plan.paths, record, torch.cat(images_all), rank, num_processes)
    num_samples = int(accelerator.reduce(torch.tensor(len(record["prompts"]), device=accelerator.device), "sum"))
    accelerator.wait_for_everyone()  # every shard is written
    if not accelerator.is_main_process:
        return
    seconds = time.time() - started
    append_metrics(plan.paths.metrics, stage=plan.stage, event="sample", split_step=plan.split_step,
                   num_samples=num_samples, num_groups=num_batches * config.sample.batch_size,
                   num_processes=num_processes, seconds=round(seconds, 2), sampling_seconds=round(sampling_seconds, 2),
                   images_per_second=round(num_samples / sampling_seconds, 3), **peak_gpu_memory())
    track(accelerator, config, plan.stage, {"sample/images_per_second": num_samples / sampling_seconds})
    log.info("stage %d: %d branch samples written to %s in %.1fs", plan.stage, num_samples, plan.paths.root, seconds)


def _sample_batch(config, plan: StagePlan, pipe, accelerator, prompts: list[str], negative_embeds,
                  batch: int) -> tuple[dict, torch.Tensor]:
    """Batch `batch` of the stage, drawn with its own seed (`sub_seed(stage seed, batch)`, so
    that a batch's samples do not depend on how many processes share the stage): its
    trajectories (on the CPU, with their prompts) and decoded images."""
    seed = sub_seed(plan.seed, batch)
    batch_prompts = choose_prompts(prompts, config.sample.batch_size, np.random.default_rng(seed))
    prompt_embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, batch_prompts)
    with accelerator.autocast():
        part = sample_branches(
            pipe.unet, pipe.scheduler, prompt_embeds, negative_embeds,
            num_steps=config.sample.num_steps, branch_point=plan.branch_point,
            num_branches=config.num_branches, eta=config.sample.eta,
            guidance_scale=config.sample.guidance_scale, latent_shape=latent_shape(pipe.unet),
            generator=torch.Generator().manual_seed(seed), chunk_size=config.sample.unet_chunk_size,
            dtype=pipe.unet.dtype,
        )
        images = decode_images(pipe.vae, part["latents"][:, -1], config.sample.decode_chunk_size)
    part["group_id"] += batch * config.sample.batch_size
    part = {k: v.cpu() for k, v in part.items()}
    part["prompts"] = [batch_prompts[g] for g in part["group_id"].remainder(config.sample.batch_size).tolist()]
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
