"""Finding models: a local folder, the HF cache, or the hub; failing in seconds when none works.

Torch-free, so that scripts check this before any heavy import.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse

from b2diffurl.errors import UserError, first_line

log = logging.getLogger(__name__)


def locate_model(model: str, what: str, build_tiny: bool = False, revision: str | None = None,
                 probe_file: str = "config.json") -> str:
    """`model` if it is a local folder (building the tiny model there if asked), else the hub
    id once `probe_file` of it is in the HF cache or could be fetched; else a UserError."""
    if os.path.isdir(model):
        return model
    if build_tiny:
        from b2diffurl.world.random_model import save_tiny_pipeline

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
        reason = first_line(error)[:120]
        raise UserError(
            f"{what} {model!r} is not a local folder, not in the HF cache, and cannot be downloaded "
            f"here ({reason}); download it first or point the config at a local copy; "
            "to run offline use config/tiny.py"
        ) from None
    return model


def check_models_available(config, reward_models: list[tuple[str, str]]) -> None:
    """Fail in seconds, before any loading, when the base model or one of `reward_models`
    ((config key, hub id or folder) pairs, as rewards.required_models gives them) is not to be had."""
    if not config.pretrained.build_tiny:  # the tiny model is built on first use
        locate_model(config.pretrained.model, "pretrained.model", revision=config.pretrained.revision,
                     probe_file="model_index.json")
    for what, model in reward_models:
        locate_model(model, what)
