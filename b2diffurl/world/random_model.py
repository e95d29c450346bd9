"""Build and save a tiny Stable-Diffusion-architecture pipeline, for offline runs and tests.

The pipeline has the same parts as SD v1.4 (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
CLIPTokenizer, DDIMScheduler) at toy sizes with random weights, and is saved as a normal diffusers
directory, so `StableDiffusionPipeline.from_pretrained(dir)` loads it exactly as it loads SD.
The tokenizer is a CLIP byte-pair tokenizer whose vocabulary and merges are written here:
characters, plus whole-word tokens for every word of the prompt files.

    python -m b2diffurl.world.random_model model/tiny-sd      # build (a few seconds) and save
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import string
import sys
import tempfile

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from b2diffurl.files import REPO, staging_dir

IMAGE_SIZE = 32  # pixels; the VAE downsamples by 4, so latents are 4 x 8 x 8
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]
PROMPT_DIR = os.path.join(REPO, "config", "prompt")

# The scheduler settings of SD v1.4 (its scheduler_config.json), so the tiny run steps identically.
SD_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
)


def _prompt_words(prompt_dir: str) -> list[str]:
    """Every lower-case word in the prompt files under `prompt_dir` (subfolders included), sorted."""
    words = set()
    for path in glob.glob(os.path.join(prompt_dir, "**", "*.json"), recursive=True):
        with open(path) as f:
            for prompt in json.load(f):
                words.update(prompt.lower().split())
    return sorted(words)


def _bpe_split(symbols: list[str], ranks: dict[str, int]) -> list[str]:
    """`symbols` after byte-pair merging as CLIP's tokenizer does it: the lowest-ranked adjacent
    pair is merged wherever it occurs (left to right), until no ranked pair is left."""
    while len(symbols) > 1:
        rank, first, second = min((ranks.get(f"{a} {b}", len(ranks)), a, b) for a, b in zip(symbols, symbols[1:]))
        if rank == len(ranks):
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (first, second):
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def write_tokenizer_files(directory: str, words: list[str]) -> None:
    """Write vocab.json and merges.txt of a small CLIP BPE vocabulary.

    Base tokens are single characters (with and without the end-of-word mark `</w>`, as CLIP's
    BPE uses). Each word, in turn, is split by the merges made so far (as BPE would split it) and
    gets a new merge joining its first two pieces, until it is one token. Later merges rank
    after a word's own, so they never change how it splits: every word stays one token.
    (Fixed left-to-right merges would not do: "r i" from "right", ranked first, breaks
    "triangle".) Every merge result is in the vocabulary, so any text tokenizes to known tokens.
    """
    characters = string.ascii_lowercase + string.digits + string.punctuation
    vocab: dict[str, int] = {}
    for token in [*characters, *(c + "</w>" for c in characters)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    ranks: dict[str, int] = {}
    for word in words:
        if any(c not in characters for c in word):
            continue
        while len(pieces := _bpe_split([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            ranks[f"{pieces[0]} {pieces[1]}"] = len(merges)
            merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f, indent=0)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_tokenizer(prompt_dir: str = PROMPT_DIR, max_length: int = 77) -> CLIPTokenizer:
    """The project's small CLIP tokenizer (77 tokens, as SD's, unless `max_length` says fewer)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp, _prompt_words(prompt_dir))
        return CLIPTokenizer(vocab=os.path.join(tmp, "vocab.json"), merges=os.path.join(tmp, "merges.txt"),
                             model_max_length=max_length)


def assemble_pipeline(tokenizer, text_encoder, vae, unet) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of these parts with SD v1.4's DDIM scheduler and no safety checker."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_pipeline(seed: int = 0, prompt_dir: str = PROMPT_DIR,
                        image_size: int = IMAGE_SIZE) -> StableDiffusionPipeline:
    """A randomly initialised SD-architecture pipeline, deterministic in `seed`; latents are
    image_size / 4 on a side (the benchmark uses a larger size, where the UNet's work dominates)."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(prompt_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=image_size,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    return assemble_pipeline(tokenizer, text_encoder, vae, unet)


def save_tiny_clip(directory: str, tokenizer, seed: int = 0) -> str:
    """A random-weight CLIPModel and CLIPProcessor (with `tokenizer`) saved to `directory`,
    so that the `clip_score` reward's loading and scoring path runs offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=16,
    ))
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def save_tiny_pipeline(directory: str, seed: int = 0, image_size: int = IMAGE_SIZE) -> str:
    """Build the tiny pipeline and save it to `directory` atomically (build aside, then rename)."""
    staging = staging_dir(os.path.dirname(os.path.abspath(directory)), ".tiny-sd-")
    try:
        build_tiny_pipeline(seed, image_size=image_size).save_pretrained(staging)
        os.rename(staging, directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isdir(directory):  # a concurrent builder winning the rename is fine
            raise
    return directory


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "model/tiny-sd"
    print(save_tiny_pipeline(target))
