"""The one model loader: SD (hub id or local folder) with a DDIM scheduler, frozen and cast,
with a LoRA on the UNet attention projections. Used by all three scripts."""

from __future__ import annotations

import contextlib
import logging

import torch

from b2diffurl.models.hub import locate_model

log = logging.getLogger(__name__)
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    set_unet_speed(pipe.unet, config)
    return pipe


ATTENTIONS = ("sdpa", "classic")


def set_unet_speed(unet, config) -> None:
    """config.unet_attention and config.compile_unet on `unet`, in place. "classic" attention
    computes softmax(QKᵀ/√d)V in plain batched matmuls (diffusers' AttnProcessor): the same
    function as SDPA up to float rounding, and on a CPU under bf16 its backward is several
    times faster than the fused kernel's. Compiling (torch.compile, in place, static shapes)
    fuses the UNet's elementwise work; each new input shape or train/eval mode compiles anew,
    and the sampled log-probs then differ from training's recomputation by float rounding.
    cli.check_config refuses it under mixed precision: compiled under bf16 autocast (torch
    2.13, CPU), the LoRA's gradients came out wrong (docs/performance.md)."""
    if config.unet_attention not in ATTENTIONS:
        raise ValueError(f"unet_attention must be one of {ATTENTIONS}, got {config.unet_attention!r}")
    if config.unet_attention == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    if config.compile_unet:
        import warnings

        import torch._inductor.config

        # Round to a low precision wherever eager would, so that the no-grad graph that samples
        # and the gradient graph that trains round alike.
        torch._inductor.config.emulate_precision_casts = True
        # diffusers' upsampling calls an lru_cache'd version check that dynamo traces through: harmless
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
        unet.compile(dynamic=False)


def lora_parameters(unet) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters of the UNet."""
    return [p for p in unet.parameters() if p.requires_grad]


@contextlib.contextmanager
def lora_merged(unet, enabled: bool = True):
    """Inside, the LoRA is folded into the UNet's weights (W + s·BA, in W's dtype), so that a
    forward pass costs what the plain UNet's does (the unmerged LoRA adds about 40% on an H100
    in fp16); on exit the original weights are restored bit for bit. For sampling: no gradient
    reaches the LoRA while it is merged. Sampled log-probs then differ from the unmerged ones
    that training computes by the rounding of the merged weights (exactly nothing for a fresh
    LoRA, whose B is 0)."""
    from peft.tuners.lora import LoraLayer

    layers = [module for module in unet.modules() if isinstance(module, LoraLayer)] if enabled else []
    with torch.no_grad():
        saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
        for layer in layers:
            layer.merge()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.unmerge()
                layer.get_base_layer().weight.copy_(weight)
