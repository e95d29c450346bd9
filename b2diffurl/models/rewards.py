"""Reward functions. One signature: reward(images, prompts) -> scores.

images: uint8 numpy array [N, H, W, 3]; prompts: list[str] of length N; scores: float [N].
REWARDS maps a config name to a factory `factory(reward_config, device) -> reward`, so models
are loaded once per process. `score_images` calls a reward in batches, the last short one too.
`reward.name` is a key of REWARDS ("weighted" sums `reward.components`) or a user function
given as "package.module:function", which is the reward itself. A reward may carry a
`prompt_groups(prompt) -> tuple[str, ...]` attribute: evaluation then reports a success rate
(score 1) per group of prompts; and an `outcomes(images, prompts) -> dict` attribute: evaluation
then reports what went wrong, per group (the shapes rewards: b2diffurl.world.failures.outcomes), and
a `modes(images, prompts) -> list` attribute gives what went wrong with each image.

Torch-free at import (the scripts check the config before torch loads); the factories import
torch and transformers.
"""

from __future__ import annotations

import functools
import importlib
import io
import math
import os
import re
from collections import OrderedDict
from typing import Callable

import numpy as np
from PIL import Image

from b2diffurl.errors import RewardError, UserError

Reward = Callable[[np.ndarray, list[str]], np.ndarray]
Factory = Callable[..., Reward]
REWARDS: dict[str, Factory] = {}
CLIP_REWARDS = ("clip_score", "pickscore", "aesthetic")  # the rewards that load reward.model


def register(name: str):
    """Decorator: add a reward factory to REWARDS under `name`."""

    def add(factory):
        REWARDS[name] = factory
        return factory

    return add


def resolve(name: str, key: str = "reward.name") -> Factory:
    """The factory of a registered reward, or of a user function "package.module:function"
    (the function is the reward); a UserError naming config `key` for anything else."""
    if name in REWARDS:
        return REWARDS[name]

    def refuse(why: str):
        return UserError(f"config.{key} = {name!r} is not allowed: {why}")

    if ":" not in name:
        raise refuse(f"one of {', '.join(sorted(REWARDS))}, or a reward function as package.module:function")
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as error:  # ValueError: an empty module name
        raise refuse(f"cannot import {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise refuse(f"{module_name} has no function {function_name!r}")
    return lambda reward_config, device: function


def build_reward(reward_config, device="cpu") -> Reward:
    """The reward named by `reward_config.name`, with its model loaded."""
    return resolve(reward_config.name)(reward_config, device)


def score_images(reward: Reward, images: np.ndarray, prompts: list[str], batch_size: int, name: str = "the reward",
                 retries: int = 0, retry_wait: float = 1.0) -> np.ndarray:
    """reward over `images` in batches of `batch_size`; returns float64 [N]. A batch whose call
    raises is retried up to `retries` times (after `retry_wait` s, doubling, at most 60 s: a remote
    scorer's passing failure); a call that still raises, or returns other than one number per image, is a
    RewardError naming `name` and the batch (the reward's own traceback is logged before it)."""
    import logging
    import time

    log = logging.getLogger(__name__)
    scores = []
    num_batches = math.ceil(len(images) / batch_size)
    for batch, start in enumerate(range(0, len(images), batch_size)):
        where = f"{name} failed on batch {batch + 1} of {num_batches} (images {start}..{min(start + batch_size, len(images)) - 1})"
        for attempt in range(retries + 1):
            try:
                output = reward(images[start : start + batch_size], prompts[start : start + batch_size])
                break
            except Exception as error:
                if attempt == retries:
                    log.error("%s; its traceback:", where, exc_info=True)
                    raise RewardError(f"{where}: {type(error).__name__}: {error}") from None
                wait = min(retry_wait * 2.0**attempt, 60.0)
                log.warning("%s (%s: %s); retry %d of %d in %.0fs", where, type(error).__name__, error, attempt + 1,
                            retries, wait)
                time.sleep(wait)
        try:
            batch_scores = np.asarray(output, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise RewardError(f"{where}: it returned non-numbers ({error})") from None
        expected = len(images[start : start + batch_size])
        if batch_scores.shape != (expected,):
            raise RewardError(f"{where}: it returned shape {batch_scores.shape} for {expected} images, not one "
                              "score per image")
        scores.append(batch_scores)
    return np.concatenate(scores) if scores else np.zeros(0)


# ---- checks before anything loads ----


def parse_components(components: str) -> list[tuple[str, float]]:
    """"name:weight,name:weight" -> [(name, weight)]; a name may be package.module:function."""
    parts = []
    for item in components.split(","):
        name, _, weight = item.strip().rpartition(":")  # the weight is after the last colon
        try:
            weight = float(weight)
        except ValueError:
            name = ""
        if not name or name == "weighted" or not math.isfinite(weight):
            raise UserError(
                f"config.reward.components = {components!r} is not allowed: comma-separated NAME:WEIGHT, "
                "e.g. 'colour_match:1.0,jpeg_compressibility:0.01', NAME a reward other than weighted "
                "or package.module:function, WEIGHT a finite number")
        parts.append((name, weight))
    return parts


def component_names(reward_config) -> list[str]:
    """The rewards that reward_config scores with: its components if it is weighted, else its name."""
    if reward_config.name == "weighted":
        return [name for name, _ in parse_components(reward_config.components)]
    return [reward_config.name]


def check_reward_config(reward_config) -> None:
    """Refuse (UserError naming the key) a reward that cannot be built: an unknown name, a user
    function that does not import, bad weighted components, a missing aesthetic weights file.
    Imports a user's module; loads no model."""
    key = "reward.components" if reward_config.name == "weighted" else "reward.name"
    names = component_names(reward_config)
    for name in names:
        resolve(name, key)
    if "aesthetic" in names:
        _aesthetic_weights_file(reward_config)


def required_models(reward_config) -> list[tuple[str, str]]:
    """(config key, hub id or folder) of each model the reward will load, to check up front."""
    if not set(component_names(reward_config)) & set(CLIP_REWARDS):
        return []
    models = [("reward.model", reward_config.model)]
    if reward_config.processor:
        models.append(("reward.processor", reward_config.processor))
    return models


# ---- rewards without a model ----


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


COLOURS = {  # RGB targets of the colour words in config/prompt/extra/colour_fruit_*.json
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


@register("shapes")
def shapes_exact(reward_config, device) -> Reward:
    """The shapes world's sparse reward (b2diffurl.world.shapes): 1.0 if the image shows exactly the
    caption's objects, in their colours and shapes and stated relation, else 0.0."""
    from b2diffurl.world import shapes

    return _grouped(lambda images, prompts: shapes.scores(images, prompts), shapes.prompt_groups)


@register("shapes_partial")
def shapes_partial(reward_config, device) -> Reward:
    """For diagnosis: the fraction of the caption's attributes (colours, shapes, relation,
    object count) the image satisfies (b2diffurl.world.shapes.partial_score)."""
    from b2diffurl.world import shapes

    return _grouped(lambda images, prompts: shapes.scores(images, prompts, partial=True), shapes.prompt_groups)


def _grouped(reward: Reward, prompt_groups: Callable[[str], tuple[str, ...]]) -> Reward:
    """A shapes reward with its prompt grouping and failure outcomes attached (see the module docstring)."""
    from b2diffurl.world import failures

    reward.prompt_groups = prompt_groups
    reward.outcomes = failures.outcomes
    reward.modes = failures.image_modes
    return reward


@register("weighted")
def weighted(reward_config, device) -> Reward:
    """sum_i weight_i * reward_i over reward.components ("name:weight,..."), each built once."""
    parts = [(resolve(name, "reward.components")(reward_config, device), weight)
             for name, weight in parse_components(reward_config.components)]

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return sum(weight * np.asarray(part(images, prompts), dtype=np.float64) for part, weight in parts)

    return reward


# ---- CLIP-based rewards ----


@functools.lru_cache(maxsize=None)
def _load_clip(model: str, processor: str, device):
    """CLIPModel of `model` (eval mode, on `device`) and CLIPProcessor of `processor` ("" = of
    `model`), frozen; cached, so every CLIP-based reward of a process shares one copy."""
    from transformers import CLIPModel, CLIPProcessor

    from b2diffurl.models.hub import locate_model

    model_path = locate_model(model, what="reward.model")
    processor_path = locate_model(processor, what="reward.processor") if processor else model_path
    model = CLIPModel.from_pretrained(model_path).to(device).eval().requires_grad_(False)  # frozen scorer
    return model, CLIPProcessor.from_pretrained(processor_path)


def clip_embedder(reward_config, device):
    """(model, embed) of reward.model: embed(images uint8 [N, H, W, 3], prompts or None) ->
    (image_embeds [N, D], text_embeds [N, D] or None), L2-normalised, without gradients."""
    import torch

    model, processor = _load_clip(reward_config.model, reward_config.processor, device)

    @torch.no_grad()
    def embed(images: np.ndarray, prompts: list[str] | None = None):
        if prompts is None:  # the image tower only, computed as CLIPModel.forward computes image_embeds
            pixels = processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
            image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            return image_embeds / image_embeds.norm(dim=-1, keepdim=True), None
        inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True)
        outputs = model(**{k: v.to(device) for k, v in inputs.items()})
        return outputs.image_embeds, outputs.text_embeds  # both come out L2-normalised

    return model, embed


@register("clip_score")
def clip_score(reward_config, device) -> Reward:
    """Cosine similarity of CLIP image and text embeddings (transformers CLIPModel), in [-1, 1].

    reward.model: hub id or local folder (reference: laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
    """
    model, embed = clip_embedder(reward_config, device)

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        image_embeds, text_embeds = embed(images, prompts)
        return (image_embeds * text_embeds).sum(dim=-1).float().cpu().numpy()

    return reward


@register("pickscore")
def pickscore(reward_config, device) -> Reward:
    """PickScore (Kirstain et al. 2023): exp(logit_scale) * cosine(image, text) of a CLIP model
    fine-tuned on human preferences; about 0..exp(logit_scale) = 100.

    reward.model = "yuvalkirstain/PickScore_v1" with
    reward.processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" (the model repo has no processor).
    """
    model, embed = clip_embedder(reward_config, device)

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        image_embeds, text_embeds = embed(images, prompts)
        return (model.logit_scale.exp() * (image_embeds * text_embeds).sum(dim=-1)).float().cpu().numpy()

    return reward


def aesthetic_mlp(embed_dim: int):
    """The LAION aesthetic predictor v2 head (no activations), with the state-dict keys of
    sac+logos+ava1-l14-linearMSE.pth: layers.{0,2,4,6,7}.{weight,bias}."""
    from torch import nn

    layers = nn.Sequential(
        nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )
    return nn.Sequential(OrderedDict(layers=layers))


def _aesthetic_weights_file(reward_config) -> str:
    path = reward_config.aesthetic_weights
    if not os.path.isfile(path):
        raise UserError(f"config.reward.aesthetic_weights = {path!r} is not allowed: the aesthetic reward needs a "
                        "local file with its MLP's state dict (.pth, .pt or .safetensors)")
    return path


@register("aesthetic")
def aesthetic(reward_config, device) -> Reward:
    """LAION aesthetic predictor v2: an MLP on the L2-normalised CLIP image embedding, roughly
    1..10; prompts are ignored. (Idea and head shape: christophschuhmann/improved-aesthetic-predictor,
    as DDPO uses it.)

    reward.aesthetic_weights: the MLP's state dict; sac+logos+ava1-l14-linearMSE.pth goes with
    reward.model = "openai/clip-vit-large-patch14" (the head's input size is its projection_dim).
    """
    import torch

    path = _aesthetic_weights_file(reward_config)  # before the CLIP model loads: fail fast
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"config.reward.aesthetic_weights = {path!r} cannot be read as a state dict "
                        f"({type(error).__name__})") from None
    model, embed = clip_embedder(reward_config, device)
    head = aesthetic_mlp(model.config.projection_dim)
    try:
        head.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:  # wrong keys or shapes, or not a dict
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise UserError(f"config.reward.aesthetic_weights = {path!r} does not fit the aesthetic MLP on "
                        f"{reward_config.model}'s {model.config.projection_dim}-dim embeddings: {reason}") from None
    head = head.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        image_embeds, _ = embed(images)
        return head(image_embeds.float()).squeeze(-1).cpu().numpy()

    return reward
