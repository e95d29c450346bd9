"""LoRA checkpoints in the diffusers format, plus the training state that the next stage resumes.

A checkpoint folder holds `pytorch_lora_weights.safetensors` (loadable with a plain
`StableDiffusionPipeline.load_lora_weights(folder)`), `optimizer.pt`, under fp16 the grad
scaler's state `grad_scaler.pt` (its loss scale: carried from stage to stage as the release's
accelerate state carries it, so a stage does not skip its first steps while a fresh scale
comes down), and `training_state.json`.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from b2diffurl.errors import DamagedFileError, NonFiniteWeightsError, first_line
from b2diffurl.files import default_mode, recovery, staging_dir, writing

LORA_FILE = "pytorch_lora_weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "grad_scaler.pt"
STATE_FILE = "training_state.json"


def _adapter_metadata(unet) -> dict:
    """The LoRA config (rank, alpha, targets) that diffusers stores beside the weights."""
    metadata = unet.peft_config["default"].to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: fix its order
    return metadata


def save_checkpoint(unet, directory: str, optimizer: torch.optim.Optimizer | None = None,
                    state: dict | None = None, scaler=None) -> None:
    """Write the UNet's LoRA (and the optimiser's and grad scaler's states) to `directory`,
    atomically as a folder.

    Refuses (NonFiniteWeightsError) to write non-finite weights; a write that fails raises
    DiskSpaceError and leaves `directory` as it was."""
    from peft.utils import get_peft_model_state_dict

    lora = get_peft_model_state_dict(unet)
    bad = [name for name, tensor in lora.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise NonFiniteWeightsError(f"the LoRA has non-finite weights (in {bad[0]} and {len(bad) - 1} more "
                                    "tensors); not saving it: lower train.learning_rate or check the rewards")
    staging = None
    try:
        with writing(directory):
            staging = staging_dir(os.path.dirname(os.path.abspath(directory)), ".tmp-checkpoint-")
            _write_checkpoint(staging, lora, unet, optimizer, state, scaler)
            if os.path.isdir(directory):
                shutil.rmtree(directory)
            os.rename(staging, directory)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _write_checkpoint(staging: str, lora: dict, unet, optimizer, state, scaler) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    StableDiffusionPipeline.save_lora_weights(
        staging, unet_lora_layers=convert_state_dict_to_diffusers(lora),
        unet_lora_adapter_metadata=_adapter_metadata(unet),
    )
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(staging, OPTIMIZER_FILE))
    if scaler is not None:
        torch.save(scaler.state_dict(), os.path.join(staging, SCALER_FILE))
    with open(os.path.join(staging, STATE_FILE), "w") as f:
        json.dump(state or {}, f, indent=2)
    for name in os.listdir(staging):  # safetensors writes its file owner-only: give each what `open` would
        os.chmod(os.path.join(staging, name), default_mode(0o666))


def load_lora(unet, directory: str) -> None:
    """Load the LoRA saved in `directory` into the UNet's existing (default) adapter."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    try:
        state_dict, _ = StableDiffusionPipeline.lora_state_dict(directory, weight_name=LORA_FILE)
    except Exception as error:  # cut short or not safetensors: the library says so in its own words
        path = os.path.join(directory, LORA_FILE)
        raise DamagedFileError(f"{path} cannot be read as a LoRA ({type(error).__name__}); {recovery(path)}") from None
    unet_state = {k[len("unet."):]: v for k, v in state_dict.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{directory}: LoRA keys that match no UNet layer, e.g. {unexpected[:3]}")


def load_training_state(directory: str, optimizer: torch.optim.Optimizer | None, scaler=None) -> list[str]:
    """Restore the optimiser state (given an optimiser) and the grad scaler's (given one) saved
    beside a LoRA, where there is one; returns the names of what was restored."""
    restored = []
    for name, target, file in (("optimiser", optimizer, OPTIMIZER_FILE), ("grad scaler", scaler, SCALER_FILE)):
        path = os.path.join(directory, file)
        if target is not None and os.path.exists(path):
            try:
                saved = torch.load(path, weights_only=True, map_location="cpu")
            except Exception as error:
                raise DamagedFileError(f"{path} cannot be read ({first_line(error)}); {recovery(path)}") from None
            target.load_state_dict(saved)
            restored.append(name)
    return restored
