"""The one model loader: SD (hub id or local folder) with a DDIM scheduler, frozen and cast,
with a LoRA on the UNet attention projections. Used by all three scripts."""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse

import torch

from b2diffurl.cli import UserError

log = logging.getLogger(__name__)
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def locate_model(model: str, what: str, build_tiny: bool = False, revision: str | None = None,
                 probe_file: str = "config.json") -> str:
    """`model` if it is a local folder (building the tiny model there if asked), else the hub
    id once `probe_file` of it is in the HF cache or could be fetched; else a UserError."""
    if os.path.isdir(model):
        return model
    if build_tiny:
        from b2diffurl.tiny import save_tiny_pipeline

        log.info("building the tiny offline model at %s", model)
        return save_tiny_pipeline(model)
    from huggingface_hub import constants, hf_hub_download

    try:  # cached: nothing to fetch
        hf_hub_download(model, probe_file, revision=revision, local_files_only=True)
        return model
    except Exception:
        pass
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.getaddrinfo(host, 443)  # fail in a second, not after the hub client's retries
        hf_hub_download(model, probe_file, revision=revision)
    except Exception as error:  # no network, no such repo, gated, ...
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise UserError(
            f"{what} {model!r} is not a local folder, not in the HF cache, and cannot be downloaded "
            f"here ({reason}); download it first or point the config at a local copy; "
            "to run offline use config/tiny.py"
        ) from None
    return model


def check_models_available(config) -> None:
    """Fail in seconds, before any loading, when the base or reward model is not to be had."""
    if not config.pretrained.build_tiny:  # the tiny model is built on first use
        locate_model(config.pretrained.model, "pretrained.model", revision=config.pretrained.revision,
                     probe_file="model_index.json")
    if config.reward.name == "clip_score":
        locate_model(config.reward.model, "reward.model")


def weight_dtype(config) -> torch.dtype:
    """dtype of the frozen UNet, VAE and text encoder (LoRA weights stay fp32)."""
    return DTYPES[config.mixed_precision]


def load_pipeline(config, device: torch.device, with_lora: bool = True):
    """StableDiffusionPipeline with a DDIMScheduler, frozen models in `weight_dtype(config)` on
    `device`, and (if `with_lora`) a fresh fp32 LoRA adapter on the UNet (see checkpoint.load_lora)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    path = locate_model(config.pretrained.model, "pretrained.model", config.pretrained.build_tiny,
                        config.pretrained.revision, probe_file="model_index.json")
    pipe = StableDiffusionPipeline.from_pretrained(
        path, revision=config.pretrained.revision, dtype=weight_dtype(config), safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.to(device)
    if with_lora:
        # A fresh LoRA starts as B = 0 (no effect) and A random; seeding A makes every process
        # of a run build the same adapter, so runs repeat exactly. The global RNG is left alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            pipe.unet.add_adapter(LoraConfig(
                r=config.lora.rank, lora_alpha=config.lora.alpha, init_lora_weights="gaussian",
                target_modules=list(config.lora.target_modules),
            ))
        for param in pipe.unet.parameters():  # fp16 Adam states diverge: LoRA trains in fp32
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return pipe


def lora_parameters(unet) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters of the UNet."""
    return [p for p in unet.parameters() if p.requires_grad]
