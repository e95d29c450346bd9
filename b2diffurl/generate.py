"""Images from a trained LoRA (or the base model): PNGs and one grid.

    python -m b2diffurl.generate --config config/tiny.py --lora model/tiny/stage2/checkpoints \
        --prompt "a red apple" --prompt "a blue plum" --num-images 8 --out model/tiny/generated

Uses the run's config for model, steps, guidance and eta (override with --eta; --eta 0 is
deterministic DDIM). The LoRA folder is any stage's `checkpoints/`; without --lora, the base model.
"""

from __future__ import annotations

import os
import re

from absl import flags

from b2diffurl import cli



def slug(text: str) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def main(config) -> None:
    from PIL import Image

    from b2diffurl.checkpoint import load_lora
    from b2diffurl.grids import image_grid, save_grid
    from b2diffurl.logs import setup_logging
    from b2diffurl.pipeline import load_pipeline, make_accelerator
    from b2diffurl.sampler import generate_with_config

    log = setup_logging()
    if not PROMPT.value:
        raise cli.UserError("give at least one --prompt")
    if LORA.value and not os.path.isdir(LORA.value):
        raise cli.UserError(f"--lora {LORA.value} is not a folder")
    accelerator = make_accelerator(config)
    pipe = load_pipeline(config, accelerator.device)
    if LORA.value:
        load_lora(pipe.unet, LORA.value)
    images, prompts = generate_with_config(pipe, accelerator, config, PROMPT.value, NUM_IMAGES.value,
                                           seed=SEED.value, eta=ETA.value)
    images = images.numpy()
    os.makedirs(OUT.value, exist_ok=True)
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        path = os.path.join(OUT.value, f"{i:03d}_{slug(prompt)}.png")
        save_grid(Image.fromarray(image), path)
    scale = max(1, 128 // images.shape[1])
    grid = image_grid(images, columns=NUM_IMAGES.value, captions=prompts, scale=scale)
    save_grid(grid, os.path.join(OUT.value, "grid.png"))
    log.info("%d images and grid.png written to %s", len(images), OUT.value)


if __name__ == "__main__":  # flags are defined only when run, so that the modules import together
    LORA = flags.DEFINE_string("lora", "", "LoRA checkpoint folder (a stage's checkpoints/); empty: base model")
    PROMPT = flags.DEFINE_multi_string("prompt", [], "a prompt; repeat the flag for several")
    NUM_IMAGES = flags.DEFINE_integer("num-images", 4, "images per prompt")
    SEED = flags.DEFINE_integer("seed", 0, "noise seed")
    ETA = flags.DEFINE_float("eta", None, "DDIM eta; default: the config's sample.eta")
    OUT = flags.DEFINE_string("out", "generated", "output folder")
    cli.main(main, continues_run=False)
