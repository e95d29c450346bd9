"""Prompt files (JSON lists of strings), prompt choice, and text embeddings."""

from __future__ import annotations

import json
import logging

import numpy as np

log = logging.getLogger(__name__)


def load_prompts(path: str) -> list[str]:
    """Read a JSON list of non-empty strings; anything else is a UserError naming the file."""
    from b2diffurl.errors import UserError

    try:
        with open(path) as f:
            prompts = json.load(f)
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist (config.prompt_file)") from None
    except json.JSONDecodeError as error:
        raise UserError(f"prompt file {path} is not valid JSON: {error}") from None
    if not isinstance(prompts, list) or not prompts:
        raise UserError(f"prompt file {path} must hold a non-empty JSON list of strings")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise UserError(f"prompt file {path} holds {len(bad)} entries that are not non-empty strings, e.g. {bad[0]!r}")
    return prompts


def choose_prompts(prompts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` prompts drawn uniformly with replacement (as DDPO does)."""
    return [prompts[i] for i in rng.integers(0, len(prompts), size=count)]


def encode_prompts(tokenizer, text_encoder, prompts: list[str]):
    """CLIP text embeddings [N, L, D] of `prompts`, padded to the tokenizer's max length.

    Each distinct prompt is encoded alone (batch of one), so an embedding does not depend on
    which other prompts share the call: sampling and training rebuild bit-identical embeddings
    from the prompt text, and sample files need not store them.
    """
    import torch

    distinct = list(dict.fromkeys(prompts))
    embeds = {}
    with torch.no_grad():
        for prompt in distinct:
            ids = tokenizer(prompt).input_ids
            if len(ids) > tokenizer.model_max_length:
                log.warning("prompt truncated to %d tokens: %r", tokenizer.model_max_length, prompt)
            tokens = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            embeds[prompt] = text_encoder(tokens.input_ids.to(text_encoder.device))[0]
    return torch.cat([embeds[p] for p in prompts])
