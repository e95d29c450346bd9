"""Images from a trained LoRA (or the base model): PNGs and one grid; and the generation that
evaluation shares.

    python -m b2diffurl.analysis.generate --config config/tiny.py --lora model/tiny/stage2/checkpoints \
        --prompt "a red apple" --prompt "a blue plum" --num-images 8 --out model/tiny/generated

Uses the run's config for model, steps, guidance and eta (override with --eta; --eta 0 is
deterministic DDIM). The LoRA folder is any stage's `checkpoints/`; without --lora, the base
model. From Python: `generate(config, prompts, lora=..., out=...)`.
"""

from __future__ import annotations

import logging
import os
import re

import torch
from absl import flags
from tqdm.auto import tqdm

from b2diffurl import cli
from b2diffurl.errors import UserError
from b2diffurl.method.branch_sampling import decode_images, latent_shape, sample_branches, sub_seed
from b2diffurl.models.pipeline import lora_merged
from b2diffurl.models.prompts import encode_prompts

log = logging.getLogger("b2diffurl.analysis.generate")  # not __name__: "__main__" when run


def generate_images(pipe, prompts: list[str], num_images_per_prompt: int, *, num_steps: int, eta: float,
                    guidance_scale: float, seed: int, batch_size: int, chunk_size: int | None = None,
                    decode_chunk_size: int | None = None, progress: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Images for every prompt from the pipeline's current UNet (LoRA included), no branching.

    Returns uint8 images [P·n, H, W, 3] and their prompts (each prompt n times in a row). Image
    i draws all its noise from its own generator, seeded by sub_seed(seed, i, wide=True), so it does not
    depend on the batch size: two models (or two runs with different B·K) evaluated on the same
    prompts with the same seed get the same noise for every image and compare image by image.
    `StableDiffusionPipeline` called with the same list of generators gives the same images
    (exactly so with eta = 0).
    """
    expanded = [p for p in prompts for _ in range(num_images_per_prompt)]
    unet = pipe.unet
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    images = []
    starts = range(0, len(expanded), batch_size)
    for start in tqdm(starts, desc="generate", leave=False, disable=not progress or len(starts) < 2):
        batch = expanded[start : start + batch_size]
        embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, batch)
        generator = [torch.Generator().manual_seed(sub_seed(seed, start + i, wide=True)) for i in range(len(batch))]
        out = sample_branches(unet, pipe.scheduler, embeds, negative, num_steps=num_steps, branch_point=0,
                              num_branches=1, eta=eta, guidance_scale=guidance_scale, latent_shape=latent_shape(unet),
                              generator=generator, chunk_size=chunk_size, dtype=unet.dtype, with_log_probs=False)
        images.append(decode_images(pipe.vae, out["latents"][:, -1], decode_chunk_size))
    return torch.cat(images), expanded


def generate_with_config(pipe, accelerator, config, prompts: list[str], num_images_per_prompt: int, *, seed: int,
                         eta: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """generate_images with a run's sampling settings (T, w, eta unless given, B·K latents a batch,
    the UNet and decode chunk sizes, the LoRA merged if sample.merge_lora) under the accelerator's
    autocast: what generate and evaluate use."""
    with accelerator.autocast(), lora_merged(pipe.unet, config.sample.merge_lora):
        return generate_images(
            pipe, prompts, num_images_per_prompt, num_steps=config.sample.num_steps,
            eta=config.sample.eta if eta is None else eta, guidance_scale=config.sample.guidance_scale, seed=seed,
            batch_size=config.sample.batch_size * config.num_branches, chunk_size=config.sample.unet_chunk_size,
            decode_chunk_size=config.sample.decode_chunk_size, progress=True,
        )


def slug(text: str) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def generate(config, prompts: list[str], lora: str | None = None, num_images: int = 4, seed: int = 0,
             eta: float | None = None, out: str = "generated") -> list[str]:
    """`num_images` images for each prompt from the base model or `lora` (a stage's
    checkpoints/), written to `out` as PNGs and grid.png; returns the PNGs' paths."""
    from PIL import Image

    from b2diffurl.grids import image_grid, save_grid
    from b2diffurl.models.checkpoint import load_lora
    from b2diffurl.models.pipeline import load_pipeline
    from b2diffurl.stage.context import make_accelerator

    if not prompts:
        raise UserError("give at least one --prompt")
    if lora and not os.path.isdir(lora):
        raise UserError(f"--lora {lora} is not a folder")
    accelerator = make_accelerator(config)
    pipe = load_pipeline(config, accelerator.device)
    if lora:
        load_lora(pipe.unet, lora)
    images, expanded = generate_with_config(pipe, accelerator, config, prompts, num_images, seed=seed, eta=eta)
    images = images.numpy()
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{i:03d}_{slug(prompt)}.png") for i, prompt in enumerate(expanded)]
    for image, path in zip(images, paths):
        save_grid(Image.fromarray(image), path)
    grid = image_grid(images, columns=num_images, captions=expanded, scale=max(1, 128 // images.shape[1]))
    save_grid(grid, os.path.join(out, "grid.png"))
    log.info("%d images and grid.png written to %s", len(images), out)
    return paths


FLAGS = cli.flag_values()
LORA = flags.DEFINE_string("lora", "", "LoRA checkpoint folder (a stage's checkpoints/); empty: base model",
                           flag_values=FLAGS)
PROMPT = flags.DEFINE_multi_string("prompt", [], "a prompt; repeat the flag for several", flag_values=FLAGS)
NUM_IMAGES = flags.DEFINE_integer("num-images", 4, "images per prompt", flag_values=FLAGS)
SEED = flags.DEFINE_integer("seed", 0, "noise seed", flag_values=FLAGS)
ETA = flags.DEFINE_float("eta", None, "DDIM eta; default: the config's sample.eta", flag_values=FLAGS)
OUT = flags.DEFINE_string("out", "generated", "output folder", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    from b2diffurl.logs import setup_logging

    def body(config):
        setup_logging()
        generate(config, PROMPT.value, LORA.value or None, NUM_IMAGES.value, SEED.value, ETA.value, OUT.value)

    cli.run(FLAGS, body, argv, continues_run=False)


if __name__ == "__main__":
    main()
