"""Reward functions. One signature: reward(images, prompts) -> scores.

images: uint8 numpy array [N, H, W, 3]; prompts: list[str] of length N; scores: float [N].
REWARDS maps a config name to a factory `factory(reward_config, device) -> reward`, so models
are loaded once per process. `score_images` calls a reward in batches, the last short one too.
"""

from __future__ import annotations

import io
import re
from typing import Callable

import numpy as np
from PIL import Image

Reward = Callable[[np.ndarray, list[str]], np.ndarray]
REWARDS: dict[str, Callable[..., Reward]] = {}


def register(name: str):
    """Decorator: add a reward factory to REWARDS under `name`."""

    def add(factory):
        REWARDS[name] = factory
        return factory

    return add


def build_reward(reward_config, device="cpu") -> Reward:
    """The reward named by `reward_config.name`, with its model loaded."""
    return REWARDS[reward_config.name](reward_config, device)


def score_images(reward: Reward, images: np.ndarray, prompts: list[str], batch_size: int) -> np.ndarray:
    """reward over `images` in batches of `batch_size`; returns float64 [N]."""
    scores = [np.asarray(reward(images[i : i + batch_size], prompts[i : i + batch_size]), dtype=np.float64)
              for i in range(0, len(images), batch_size)]
    return np.concatenate(scores) if scores else np.zeros(0)


def _jpeg_kilobytes(images: np.ndarray) -> np.ndarray:
    sizes = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return np.asarray(sizes)


@register("jpeg_compressibility")
def jpeg_compressibility(reward_config, device) -> Reward:
    """Minus the JPEG size in kB (quality 95): smaller files score higher (as in DDPO)."""
    return lambda images, prompts: -_jpeg_kilobytes(images)


@register("jpeg_incompressibility")
def jpeg_incompressibility(reward_config, device) -> Reward:
    """The JPEG size in kB (quality 95): more detail scores higher."""
    return lambda images, prompts: _jpeg_kilobytes(images)


COLOURS = {  # RGB targets of the colour words in config/prompt/colour_fruit_*.json
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 220, 30), "green": (40, 170, 50),
    "blue": (30, 70, 220), "purple": (130, 40, 170), "white": (245, 245, 245), "black": (15, 15, 15),
}


def prompt_colour(prompt: str) -> str:
    """The first colour word of COLOURS in `prompt` (whole words); ValueError if none."""
    for word in re.findall(r"[a-z]+", prompt.lower()):
        if word in COLOURS:
            return word
    raise ValueError(f"colour_match needs a colour word ({', '.join(COLOURS)}) in the prompt: {prompt!r}")


@register("colour_match")
def colour_match(reward_config, device) -> Reward:
    """1 - mean pixel distance to the prompt's colour / largest RGB distance; in [0, 1].

    Offline and prompt-dependent: a policy can only raise it by following the colour word.
    """

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        targets = np.asarray([COLOURS[prompt_colour(p)] for p in prompts], dtype=np.float64)
        distance = np.linalg.norm(images.astype(np.float64) - targets[:, None, None, :], axis=-1)
        return 1.0 - distance.mean(axis=(1, 2)) / (255.0 * np.sqrt(3.0))

    return reward


@register("clip_score")
def clip_score(reward_config, device) -> Reward:
    """Cosine similarity of CLIP image and text embeddings (transformers CLIPModel).

    reward_config.model: hub id or local folder (default laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
    """
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from b2diffurl.hub import locate_model

    path = locate_model(reward_config.model, what="reward.model")
    model = CLIPModel.from_pretrained(path).to(device).eval()
    processor = CLIPProcessor.from_pretrained(path)

    @torch.no_grad()
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True)
        outputs = model(**{k: v.to(device) for k, v in inputs.items()})
        # image_embeds and text_embeds come out L2-normalised: their dot product is the cosine
        similarity = (outputs.image_embeds * outputs.text_embeds).sum(dim=-1)
        return similarity.float().cpu().numpy()

    return reward
