"""The world's ceiling: what a perfect generator would score through the world's own autoencoder.

    python -m b2diffurl.lab.ceiling --model model/shapes-sd --renders 4

Fresh renders of every caption of the world (`shapes.render`, which the parser reads right every
time) are encoded by the model's AutoencoderKL (the posterior mean), decoded, and scored by the
`shapes` parser. A decoder that blurs a small triangle into a blob caps every success rate
below what it returns here, so an evaluation reads against it. Groups: single objects; two
objects with train captions; two objects with held-out captions; and for each shape, the
two-object captions that hold it.
"""

from __future__ import annotations

import numpy as np
import torch
from absl import flags

from b2diffurl import cli
from b2diffurl.world import shapes

GROUPS = ("one object", "two objects, train", "two objects, held-out",
          *(f"two objects, with a {s}" for s in shapes.SHAPES))


def caption_groups(caption: shapes.Caption) -> list[str]:
    """The ceiling groups a caption counts in."""
    if len(caption.objects) == 1:
        return ["one object"]
    split = "train" if shapes.split_of(caption) == "train" else "held-out"
    return [f"two objects, {split}"] + [f"two objects, with a {s}" for s in shapes.SHAPES
                                        if any(shape == s for _, shape in caption.objects)]


@torch.no_grad()
def round_trip(vae, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 [N, SIZE, SIZE, 3] images encoded (posterior mean) and decoded by `vae`, as uint8."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = x.to(vae.device, vae.dtype)
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        out.append(((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def ceiling(vae, renders_per_caption: int = 4, seed: int = 0) -> dict[str, dict]:
    """Per group, the success of the round trip of `renders_per_caption` fresh renders of each of
    the world's 540 captions: {group: {"success", "n"}}, groups in a fixed order."""
    rng = np.random.default_rng(seed)
    captions = [c for c in shapes.all_captions() for _ in range(renders_per_caption)]
    images = np.stack([shapes.render(c, rng) for c in captions])
    success = shapes.scores(round_trip(vae, images), captions)
    counts: dict[str, list[float]] = {}
    for caption, ok in zip(captions, success):
        for group in caption_groups(caption):
            counts.setdefault(group, []).append(ok)
    return {group: {"success": float(np.mean(counts[group])), "n": len(counts[group])} for group in GROUPS}


def load_vae(model: str):
    """The AutoencoderKL of a diffusers pipeline folder, in fp32 on the CPU."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=torch.float32).eval()


def format_ceiling(result: dict[str, dict]) -> str:
    """One line a group: name, success, images."""
    return "\n".join(f"ceiling  {group:<28} {r['success']:.3f} of {r['n']}" for group, r in result.items())


FLAGS = cli.flag_values(with_config=False)
MODEL = flags.DEFINE_string("model", "model/shapes-sd", "a diffusers pipeline folder with a vae/", flag_values=FLAGS)
RENDERS = flags.DEFINE_integer("renders", 4, "fresh renders of each caption", flag_values=FLAGS)
SEED = flags.DEFINE_integer("seed", 0, "seed of the renders' placements and sizes", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    cli.parse_command_flags(FLAGS, argv)
    print(format_ceiling(ceiling(load_vae(MODEL.value), RENDERS.value, SEED.value)))


if __name__ == "__main__":
    main()
