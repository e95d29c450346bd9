"""Sample files (`sample.pkl`, `sample_stage.pkl`): versioned, validated, atomic.

A record is a dict. Per-sample entries (first dimension N, one row per branch sample):
  prompts    list[str]               the prompt of each sample
  group_id   long [N]                same value for branches that share a prefix
  branch_id  long [N]                k within the group
  timesteps  long [N, s]             τ_b ... τ_{T-1}
  latents    float [N, s+1, C, H, W] x_b ... x_T, in the sampling dtype
  log_probs  float [N, s]            log π_old(x_{i+1} | x_i), element-averaged
  advantages float [M], rewards float [M]   (selected files only)
Shared entry:
  meta       dict                    T, s, b, K, eta, guidance_scale, model, seed, stage, format_version
Text embeddings are not stored: prompts.encode_prompts rebuilds them bit for bit from `prompts`.
Files are written with torch.save to a temporary name and renamed, and read with
torch.load(weights_only=True) only: a sample file cannot run code.
"""

from __future__ import annotations

import torch

from b2diffurl.errors import SampleFileError
from b2diffurl.files import atomic_torch_save

FORMAT_VERSION = 2  # 1 stored prompt_embeds; 2 rebuilds them from the prompts
PER_SAMPLE = ("group_id", "branch_id", "timesteps", "latents", "log_probs")
SELECTED_PER_SAMPLE = ("advantages", "rewards")
META_KEYS = ("num_steps", "split_step", "branch_point", "num_branches", "eta", "guidance_scale",
             "model", "seed", "stage", "format_version")


def validate(record: dict, selected: bool = False) -> None:
    """Check keys, shapes and ids of a record; raise SampleFileError on the first problem."""
    keys = ("prompts", *PER_SAMPLE, "meta")
    keys += SELECTED_PER_SAMPLE if selected else ()
    missing = [k for k in keys if k not in record]
    if missing:
        raise SampleFileError(f"missing entries {missing}")
    meta = record["meta"]
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise SampleFileError(f"meta lacks {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise SampleFileError(f"format version {meta['format_version']}, this code reads {FORMAT_VERSION}")
    n = len(record["prompts"])
    s = meta["split_step"]
    for key in PER_SAMPLE + (SELECTED_PER_SAMPLE if selected else ()):
        if record[key].shape[0] != n:
            raise SampleFileError(f"{key} has {record[key].shape[0]} rows, prompts has {n}")
    expected = {"timesteps": (n, s), "log_probs": (n, s)}
    for key, shape in expected.items():
        if tuple(record[key].shape) != shape:
            raise SampleFileError(f"{key} has shape {tuple(record[key].shape)}, expected {shape}")
    if record["latents"].ndim != 5 or record["latents"].shape[1] != s + 1:
        raise SampleFileError(f"latents have shape {tuple(record['latents'].shape)}, expected [{n}, {s + 1}, C, H, W]")
    if n and record["group_id"].min() < 0:
        raise SampleFileError("negative group_id")
    prompt_of_group = {}
    for group, prompt in zip(record["group_id"].tolist(), record["prompts"]):
        if prompt_of_group.setdefault(group, prompt) != prompt:
            raise SampleFileError(f"group {group} holds two prompts: {prompt_of_group[group]!r} and {prompt!r}")
    if n and (record["branch_id"].min() < 0 or record["branch_id"].max() >= meta["num_branches"]):
        raise SampleFileError("branch_id out of range of num_branches")


def save_samples(record: dict, path: str, selected: bool = False) -> None:
    """Validate and write a record atomically."""
    validate(record, selected)
    atomic_torch_save(record, path)


def load_samples(path: str, selected: bool = False, expect: dict | None = None) -> dict:
    """Read and validate a record; `expect` maps meta keys to the values the caller needs."""
    try:
        record = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise SampleFileError(f"{path} does not exist (did the previous script of this stage finish?)") from None
    except Exception as error:  # truncated or not a torch file
        raise SampleFileError(f"{path} cannot be read as a sample file: {error}") from None
    try:
        validate(record, selected)
    except SampleFileError as error:
        raise SampleFileError(f"{path}: {error}") from None
    for key, value in (expect or {}).items():
        if record["meta"][key] != value:
            raise SampleFileError(f"{path} was made with {key}={record['meta'][key]!r}, the config says {value!r}")
    return record


def make_record(trajectories: list[dict], prompts: list[str], meta: dict) -> dict:
    """A record from consecutive batches of trajectories (method.branch_sampling.sample_branches'
    outputs, or records) and the prompt of each sample."""
    record = {key: torch.cat([part[key] for part in trajectories]) for key in PER_SAMPLE}
    return {"prompts": list(prompts), **record, "meta": meta}


def concatenate(records: list[dict]) -> dict:
    """One record from the shards that N sampling processes wrote (same meta, distinct groups)."""
    meta = records[0]["meta"]
    if any(record["meta"] != meta for record in records):
        raise SampleFileError("the sample shards of this stage were made with different settings")
    out = make_record(records, [prompt for record in records for prompt in record["prompts"]], meta)
    if len(set(out["group_id"].tolist())) * meta["num_branches"] != len(out["prompts"]):
        raise SampleFileError("the sample shards of this stage do not hold distinct groups of num_branches samples")
    return out


def subset(record: dict, indices: torch.Tensor, **extra: torch.Tensor) -> dict:
    """The record restricted to rows `indices` (shared entries kept whole), plus `extra` columns."""
    indices = indices.to(torch.long)
    out = {k: v for k, v in record.items() if k not in PER_SAMPLE and k != "prompts"}
    out["prompts"] = [record["prompts"][i] for i in indices.tolist()]
    for key in PER_SAMPLE:
        out[key] = record[key][indices]
    out.update(extra)
    return out
