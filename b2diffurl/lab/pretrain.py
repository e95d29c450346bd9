"""Pretrain the shapes world's text-to-image model on a CPU, in bounded time.

    python -m b2diffurl.lab.pretrain --out /tmp/shapes-sd --autoencoder model/shapes-sd --minutes 60

made the shipped model/shapes-sd (at commit 3cebe91, in 3,600 s on 2 cores), keeping the
autoencoder of the model shipped before it; without --autoencoder the autoencoder is trained
first (docs/shapes-world.md).

A small Stable-Diffusion-architecture pipeline: an AutoencoderKL from 32×32 RGB to 8×8×4
latents, a UNet2DConditionModel with cross-attention, a bidirectional (BERT-style) text encoder
and the project's word-level CLIP tokenizer over the shapes captions, trained on images that
b2diffurl.world.shapes renders. There are three phases.

1. The autoencoder trains with reconstruction and a small KL term, on renders of every caption
   of the world, until the world's ceiling (b2diffurl.lab.ceiling) reaches CEILING_TARGET in
   every group. `--autoencoder` instead takes it, as it is, from a pipeline folder.
2. The text encoder is grounded on renders of every caption, held-out ones included
   (train_text_encoder), and then frozen.
3. A pool of renders of the train split's captions (config/prompt/shapes/train.json) is encoded
   once, and the UNet learns from it with the plain epsilon loss of SD's noise schedule. Two-object
   renders follow their caption's stated order with probability ORDER_FIDELITY. The caption is
   dropped 10% of the time so that classifier-free guidance works, and the weights are averaged
   (EMA) for the saved model. A quarter of the captions drawn are single objects (the train split
   is mostly pairs).

The result is saved as a diffusers folder (about 11 MB) that a plain
`StableDiffusionPipeline.from_pretrained(out)` loads and runs with its defaults. The UNet and VAE
are stored in fp16, which diffusers loads as fp32 unless asked otherwise. The small text encoder
is stored as fp32 (its fp16-rounded weights): transformers loads a model in its stored dtype, and
a half text encoder feeding a float UNet fails.

It is deterministic in --seed for given step counts, on the same number of threads. --minutes
bounds the wall time instead; the step counts it reached are written to pretrain.json beside the
model, so that --autoencoder_steps and --denoiser_steps can make it again.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from absl import flags

from b2diffurl import cli
from b2diffurl.files import REPO
from b2diffurl.lab import ceiling
from b2diffurl.world import shapes

PROMPT_DIR = os.path.join(REPO, "config", "prompt", "shapes")
TEXT_WIDTH = 64  # text encoder width = the UNet's cross-attention width
MAX_TOKENS = 16  # the longest caption is 12 tokens with its start and end marks
SINGLE_SHARE = 0.25  # share of single-object captions among those drawn for training
# Share of the denoiser's two-object renders drawn in their caption's stated order; the rest are
# drawn the other way round ("a red circle above a blue square" drawn with the circle below). Web
# captions state spatial relations loosely, and SD often draws them wrong; here the
# denoiser learns the relation from a weak signal too, while the text encoder, grounded on exact
# renders, carries it in full: the order is left for RL to teach (config/shapes_order.py teaches
# it: docs/shapes-world.md, "Teaching the order").
ORDER_FIDELITY = 0.6
POOL_SIZE = 40_000  # images encoded once for the denoiser phase
EMA_DECAY = 0.999
CEILING_TARGET = 0.998  # the autoencoder trains until every ceiling group reaches this (the test asks 0.99)
TEXT_ENCODER_STEPS = 1000  # grounding steps of the text encoder (order_read reaches 1.0 well before)
TEXT_BATCH = 256  # captions per grounding step
CEILING_CHECK_SEED = 1  # the test measures the shipped model on seed 0's renders
log = logging.getLogger("b2diffurl.lab.pretrain")  # not __name__: "__main__" when run


def build_models(seed: int):
    """Tokenizer, text encoder, autoencoder and UNet, randomly initialised (deterministic in `seed`).

    The text encoder is bidirectional (a BERT-style transformer, as T5 is in Imagen and SD3),
    not CLIP's causal one, so that grounding (train_text_encoder) can write each object's place
    into the object's own words: in "a red circle above a blue square" a causal encoder's first
    object never sees the relation that follows it. The UNet reads a colour where it reads that
    colour's words, and learnt the order only once those words said where the object goes
    (docs/shapes-world.md, "Why the order was not learnt").
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel

    from b2diffurl.world.random_model import make_tokenizer

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(PROMPT_DIR, MAX_TOKENS)
    text_encoder = BertModel(BertConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=shapes.SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    )
    unet = UNet2DConditionModel(
        sample_size=shapes.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128), norm_num_groups=32, cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    return tokenizer, text_encoder, vae, unet


def batches(captions: list[str], batch_size: int, rng: np.random.Generator, order_fidelity: float = 1.0):
    """Endless (captions, images in [-1, 1] as [B, 3, H, W]) of random train captions, rendered;
    SINGLE_SHARE of them single objects; a two-object caption drawn in its stated order with
    probability `order_fidelity`, else in the reverse one."""
    singles = [c for c in captions if len(shapes.parse_caption(c).objects) == 1]
    pairs = [c for c in captions if c not in singles]
    while True:
        single = rng.random(batch_size) < SINGLE_SHARE
        chosen = [singles[rng.integers(len(singles))] if one else pairs[rng.integers(len(pairs))] for one in single]
        drawn = [shapes.parse_caption(caption) for caption in chosen]
        drawn = [c if c.relation is None or order_fidelity >= 1 or rng.random() < order_fidelity else
                 shapes.Caption(c.objects, shapes.OPPOSITE[c.relation]) for c in drawn]
        images = np.stack([shapes.render(caption, rng) for caption in drawn])
        yield chosen, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _run_phase(name: str, step_fn, data, seconds: float, max_steps: int, done=None) -> int:
    """Call step_fn(batch) until the time or step budget is spent, or until done() (asked every
    100 steps) is true; returns the number of steps."""
    started, step, losses = time.time(), 0, []
    while time.time() - started < seconds and (max_steps <= 0 or step < max_steps):
        losses.append(step_fn(*next(data)))
        step += 1
        if step % 100 == 0:
            log.info("%s step %d: loss %.4f (%.0f s)", name, step, np.mean(losses[-100:]), time.time() - started)
            if done is not None and done():
                break
    return step


def object_token_positions(caption: str) -> list[list[int]]:
    """For each object of a caption, the token indices of its words ("a", colour, shape) in the
    word-level tokenization [start, words..., end, padding]: the first three words and, for
    two objects, the last three."""
    words = caption.split()
    first = [1, 2, 3]
    return [first] if len(words) == 3 else [first, [len(words) - 2, len(words) - 1, len(words)]]


def train_text_encoder(text_encoder, tokenizer, captions: list[str], steps: int, batch_size: int,
                       rng: np.random.Generator) -> dict:
    """Ground every object's words in what a render of the caption shows, then freeze the encoder.

    Linear heads (discarded afterwards) read the encoder's state at each token of an object's
    words and predict that object's colour, shape and centre in a render of the caption (x and
    y scaled to [-1, 1]; shapes.placements, the geometry `render` draws). The state of "circle"
    in "a red circle above a blue square" must then say "red circle, top", and in "... below
    ..." "red circle, bottom": the encoder resolves which object goes where, as SD's frozen CLIP
    encoder brings what it learnt from image-caption pairs. Returns the last 100 steps' mean
    loss and, on `captions`, the share of two-object captions whose predicted centres stand in
    the stated order along the stated axis (`order_read`).
    """
    width = text_encoder.config.hidden_size
    heads = torch.nn.ModuleDict({"colour": torch.nn.Linear(width, len(shapes.COLOURS)),
                                 "shape": torch.nn.Linear(width, len(shapes.SHAPES)),
                                 "centre": torch.nn.Linear(width, 2)})
    params = list(text_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    distinct = sorted(set(captions))
    token_ids = dict(zip(distinct, tokenizer(distinct, padding="max_length", max_length=tokenizer.model_max_length,
                                             truncation=True, return_tensors="pt").input_ids))
    colours, shape_names = list(shapes.COLOURS), list(shapes.SHAPES)

    def batch(chosen: list[str]):
        """Token ids [B, L]; the (row, column) of every object word; its colour, shape, centre."""
        rows, columns, colour, shape, centre = [], [], [], [], []
        for row, caption in enumerate(chosen):
            parsed = shapes.parse_caption(caption)
            for indices, (c, s), (cx, cy, _) in zip(object_token_positions(caption), parsed.objects,
                                                    shapes.placements(parsed, rng)):
                for index in indices:
                    rows.append(row)
                    columns.append(index)
                    colour.append(colours.index(c))
                    shape.append(shape_names.index(s))
                    centre.append((2 * cx / shapes.SIZE - 1, 2 * cy / shapes.SIZE - 1))
        return (torch.stack([token_ids[c] for c in chosen]), rows, columns, torch.tensor(colour),
                torch.tensor(shape), torch.tensor(centre, dtype=torch.float32))

    text_encoder.train().requires_grad_(True)
    losses = []
    for step in range(steps):
        ids, rows, columns, colour, shape, centre = batch([captions[i] for i in rng.integers(len(captions),
                                                                                               size=batch_size)])
        states = text_encoder(ids)[0][rows, columns]
        loss = (F.cross_entropy(heads["colour"](states), colour) + F.cross_entropy(heads["shape"](states), shape)
                + F.mse_loss(heads["centre"](states), centre))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log.info("text encoder step %d: loss %.4f", step + 1, np.mean(losses[-100:]))
    text_encoder.eval().requires_grad_(False)
    pairs = [c for c in distinct if shapes.parse_caption(c).relation is not None]
    ids, rows, columns, *_ = batch(pairs)
    with torch.no_grad():
        centres = heads["centre"](text_encoder(ids)[0][rows, columns]).reshape(len(pairs), 2, 3, 2).mean(2)
    right = 0
    for caption, (first, second) in zip(pairs, centres.tolist()):
        relation = shapes.parse_caption(caption).relation
        axis = 0 if relation in ("to the left of", "to the right of") else 1
        right += (first[axis] < second[axis]) == (relation in ("to the left of", "above"))
    return {"loss": float(np.mean(losses[-100:])) if losses else float("nan"), "order_read": right / len(pairs)}


def train_autoencoder(vae, data, seconds: float, max_steps: int) -> tuple[int, dict]:
    """Reconstruction training until the world's ceiling (4 fresh renders of every caption,
    other placements than the shipped test's) reaches CEILING_TARGET in every group, or the
    budget is spent; returns the steps and the last ceiling measured."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    measured = {}

    def reached() -> bool:
        vae.eval()
        measured.update(ceiling.ceiling(vae, renders_per_caption=4, seed=CEILING_CHECK_SEED))
        vae.train()
        log.info("autoencoder ceiling: %s", ", ".join(f"{g} {r['success']:.3f}" for g, r in measured.items()))
        return min(r["success"] for r in measured.values()) >= CEILING_TARGET

    vae.train()

    def step(_, images):
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, images) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    steps = _run_phase("autoencoder", step, data, seconds, max_steps, done=reached)
    vae.eval().requires_grad_(False)
    return steps, measured


def encode_pool(vae, data, num_images: int) -> tuple[list[str], torch.Tensor]:
    """`num_images` captions and the autoencoder's mean latents of their renders."""
    captions, latents = [], []
    with torch.no_grad():
        while len(captions) < num_images:
            chosen, images = next(data)
            captions += chosen
            latents.append(vae.encode(images).latent_dist.mean)
    return captions[:num_images], torch.cat(latents)[:num_images]


def pool_batches(captions: list[str], latents: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless random batches (captions, latents) from the pool."""
    while True:
        index = torch.randint(0, len(captions), (batch_size,), generator=generator)
        yield [captions[i] for i in index.tolist()], latents[index]


def train_denoiser(unet, text_encoder, tokenizer, data, seconds: float, max_steps: int,
                   generator: torch.Generator) -> int:
    """Epsilon-loss training of the UNet on (captions, unit-variance latents) batches, conditioned
    on the frozen text encoder; the UNet ends holding the exponential moving average of its weights."""
    from diffusers import DDPMScheduler

    from b2diffurl.world.random_model import SD_SCHEDULER_CONFIG

    noise_scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    params = list(unet.parameters())
    average = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-2)
    unet.train()
    steps = 0

    def step(captions, latents):
        nonlocal steps
        keep = torch.rand(len(captions), generator=generator) >= 0.1  # 10% unconditional, for CFG
        tokens = tokenizer([c if k else "" for c, k in zip(captions, keep.tolist())], padding="max_length",
                           max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with torch.no_grad():
            text = text_encoder(tokens.input_ids)[0]
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=text).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        steps += 1
        with torch.no_grad():  # warm-up of the average, as in diffusers' EMAModel
            torch._foreach_lerp_(average, [p.detach() for p in params], 1 - min(EMA_DECAY, (1 + steps) / (10 + steps)))
        return loss.item()

    _run_phase("denoiser", step, data, seconds, max_steps)
    with torch.no_grad():
        for p, a in zip(params, average):
            p.copy_(a)
    unet.eval()
    return steps


def pretrain(out: str, minutes: float, seed: int, batch_size: int = 128, vae_share: float = 0.25,
             max_steps: int = 0, autoencoder_steps: int = 0, denoiser_steps: int = 0,
             autoencoder_batch_size: int = 64, autoencoder: str | None = None, text_encoder_steps: int = 0,
             order_fidelity: float = ORDER_FIDELITY) -> dict:
    """Build, train and save the shapes model to `out`; returns what was done (also in out/pretrain.json).
    `autoencoder`: a shapes pipeline folder whose autoencoder is taken as it is (its ceiling
    measured, not trained again), so that only the text side and the denoiser are made anew."""
    from b2diffurl.world.random_model import assemble_pipeline

    with open(os.path.join(PROMPT_DIR, "train.json")) as f:
        captions = json.load(f)
    tokenizer, text_encoder, vae, unet = build_models(seed)
    rng = np.random.default_rng(seed)
    budget = 60.0 * minutes
    started = time.time()
    # The autoencoder is the world's image codec and the text encoder its language, not the
    # policy: both learn from every caption, held-out ones included (as SD's VAE and CLIP saw far
    # more than any fine-tuning set), so that a held-out colour-shape binding decodes as well as
    # a trained one and its words say what they mean. The UNet sees the train captions only.
    every_caption = [c.text() for c in shapes.all_captions()]
    if autoencoder is None:
        vae_steps, vae_ceiling = train_autoencoder(vae, batches(every_caption, autoencoder_batch_size, rng),
                                                   vae_share * budget,
                                                   autoencoder_steps or max_steps)
    else:
        vae = ceiling.load_vae(autoencoder)
        vae_steps, vae_ceiling = 0, ceiling.ceiling(vae, renders_per_caption=4, seed=CEILING_CHECK_SEED)
    seconds = {"autoencoder": round(time.time() - started, 1)}
    # The text encoder and the denoiser draw from their own seeded streams, so that a run that
    # takes its autoencoder from a folder draws what a run that trained it draws.
    grounding = train_text_encoder(text_encoder, tokenizer, every_caption,
                                   text_encoder_steps or max_steps or TEXT_ENCODER_STEPS, TEXT_BATCH,
                                   np.random.default_rng([seed, 2]))
    seconds["text_encoder"] = round(time.time() - started - sum(seconds.values()), 1)
    rng = np.random.default_rng([seed, 1])
    data = batches(captions, batch_size, rng, order_fidelity)
    pool_captions, pool_latents = encode_pool(vae, data, POOL_SIZE if max_steps <= 0 else max_steps * batch_size)
    scale = float(1.0 / pool_latents.std())  # unit-variance latents for the diffusion model, as SD's 0.18215
    vae.register_to_config(scaling_factor=scale)
    generator = torch.Generator().manual_seed(seed)
    unet_steps = train_denoiser(unet, text_encoder, tokenizer,
                                pool_batches(pool_captions, pool_latents * scale, batch_size, generator),
                                budget - (time.time() - started), denoiser_steps or max_steps, generator)
    seconds["pool_and_denoiser"] = round(time.time() - started - sum(seconds.values()), 1)
    pipe = assemble_pipeline(tokenizer, text_encoder, vae, unet).to(torch.float16)
    pipe.text_encoder.to(torch.float32)
    pipe.save_pretrained(out)
    if autoencoder is not None and not os.path.relpath(autoencoder, REPO).startswith(".."):
        autoencoder = os.path.relpath(autoencoder, REPO)  # the record names a shipped folder as users see it
    record = {"seed": seed, "minutes": minutes, "batch_size": batch_size, "autoencoder_from": autoencoder,
              "autoencoder_batch_size": autoencoder_batch_size, "autoencoder_steps": vae_steps,
              "autoencoder_ceiling": {group: r["success"] for group, r in vae_ceiling.items()},
              "order_fidelity": order_fidelity, "text_encoder_grounding": grounding, "pool_images": len(pool_captions),
              "denoiser_steps": unet_steps, "scaling_factor": vae.config.scaling_factor,
              "seconds": round(time.time() - started, 1), "seconds_by_phase": seconds, "torch_threads": torch.get_num_threads(),
              "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in
                             (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}}
    with open(os.path.join(out, "pretrain.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


FLAGS = cli.flag_values(with_config=False)
OUT = flags.DEFINE_string("out", "model/shapes-sd", "where the diffusers folder is written", flag_values=FLAGS)
MINUTES = flags.DEFINE_float("minutes", 95.0, "wall-time budget for both phases", flag_values=FLAGS)
VAE_SHARE = flags.DEFINE_float("vae_share", 0.25, "most of the budget the autoencoder may spend", flag_values=FLAGS)
MAX_STEPS = flags.DEFINE_integer("max_steps", 0, "stop each phase after this many steps (0: time only)",
                                 flag_values=FLAGS)
AE_STEPS = flags.DEFINE_integer("autoencoder_steps", 0, "stop the autoencoder after this many steps (0: max_steps)",
                                flag_values=FLAGS)
UNET_STEPS = flags.DEFINE_integer("denoiser_steps", 0, "stop the denoiser after this many steps (0: max_steps)",
                                  flag_values=FLAGS)
BATCH = flags.DEFINE_integer("batch_size", 128, "images per denoiser step", flag_values=FLAGS)
AE_BATCH = flags.DEFINE_integer("autoencoder_batch_size", 64, "images per autoencoder step", flag_values=FLAGS)
AUTOENCODER = flags.DEFINE_string("autoencoder", None, "take the autoencoder of this pipeline folder instead of "
                                  "training one (the shipped model was made with model/shapes-sd's)", flag_values=FLAGS)
TEXT_STEPS = flags.DEFINE_integer("text_encoder_steps", 0, f"grounding steps of the text encoder (0: max_steps, "
                                  f"else {TEXT_ENCODER_STEPS})", flag_values=FLAGS)
FIDELITY = flags.DEFINE_float("order_fidelity", ORDER_FIDELITY, "share of the denoiser's two-object renders "
                              "drawn in the stated order (the rest reversed)", flag_values=FLAGS)
SEED = flags.DEFINE_integer("seed", 0, "seed of weights, captions, placements and noise", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    from b2diffurl.logs import setup_logging

    cli.parse_command_flags(FLAGS, argv)
    setup_logging()
    log.setLevel(logging.INFO)
    record = pretrain(OUT.value, MINUTES.value, SEED.value, BATCH.value, VAE_SHARE.value, MAX_STEPS.value,
                      AE_STEPS.value, UNET_STEPS.value, AE_BATCH.value, AUTOENCODER.value, TEXT_STEPS.value,
                      FIDELITY.value)
    log.info("saved to %s: %s", OUT.value, record)


if __name__ == "__main__":
    main()
