"""What the text encoder tells apart: how far one change to a caption moves the embeddings the
UNet attends to.

    python -m b2diffurl.lab.conditioning --model model/shapes-sd

The LoRA that RL trains sits on the UNet; the text encoder stays frozen. A difference between
two captions that the encoder has nearly erased is one the UNet can hardly act on, however the
reward asks for it. For every two-object caption of the world, each edit below is encoded with
the caption, and the distance between the two [L, D] embeddings (Frobenius norm, every token
position) is summarised over the captions:

- direction: the opposite relation on the same axis (left <-> right, above <-> below); the
  meaning flips;
- axis: the relation on the other axis (left -> above, above -> left, ...);
- colour: the first object in another colour;
- shape: the first object as another shape;
- paraphrase: the objects swapped with the opposite relation ("a blue square below a red
  circle" for "a red circle above a blue square"); the same scene in other words.

Then whether the UNet acts on the direction (`relation_response`): train captions and their
direction edits drawn from the same noise; where both images show the stated objects on the
stated axis, the share of pairs whose objects changed places. Near 0, the noise and not the words
decides which object lands where, and a reward on the order has nothing in the model to move.
"""

from __future__ import annotations

import numpy as np
import torch
from absl import flags

from b2diffurl import cli
from b2diffurl.world import shapes

OTHER_AXIS = {"to the left of": "above", "to the right of": "below", "above": "to the left of",
              "below": "to the right of"}
EDITS = ("direction", "axis", "colour", "shape", "paraphrase")


def edit(caption: shapes.Caption, kind: str) -> shapes.Caption:
    """`caption` (two objects) changed as `kind` says (one of EDITS)."""
    (colour, shape), second = caption.objects
    if kind == "direction":
        return shapes.Caption(caption.objects, shapes.OPPOSITE[caption.relation])
    if kind == "axis":
        return shapes.Caption(caption.objects, OTHER_AXIS[caption.relation])
    if kind == "colour":
        other = next(c for c in shapes.COLOURS if c not in (colour, second[0]))
        return shapes.Caption(((other, shape), second), caption.relation)
    if kind == "shape":
        other = next(s for s in shapes.SHAPES if s != shape and (colour, s) != second)
        return shapes.Caption(((colour, other), second), caption.relation)
    if kind == "paraphrase":
        return shapes.Caption((second, (colour, shape)), shapes.OPPOSITE[caption.relation])
    raise ValueError(f"edit takes one of {', '.join(EDITS)}, got {kind!r}")


def embed(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """[N, L, D] embeddings of `texts` as sampling builds them (models.prompts.encode_prompts)."""
    from b2diffurl.models.prompts import encode_prompts

    return encode_prompts(tokenizer, text_encoder, texts).float().cpu()


def separation(tokenizer, text_encoder) -> dict[str, dict]:
    """Per edit, over the world's two-object captions: the median, 10th and 90th percentile of the
    embedding distance between a caption and its edit, and that median as a fraction of the
    colour edit's."""
    captions = [c for c in shapes.all_captions() if len(c.objects) == 2]
    anchor = embed(tokenizer, text_encoder, [c.text() for c in captions])
    result = {}
    for kind in EDITS:
        edited = embed(tokenizer, text_encoder, [edit(c, kind).text() for c in captions])
        distance = (anchor - edited).flatten(1).norm(dim=1).numpy()
        result[kind] = {"median": float(np.median(distance)), "p10": float(np.percentile(distance, 10)),
                        "p90": float(np.percentile(distance, 90)), "n": len(captions)}
    colour = result["colour"]["median"]
    for row in result.values():
        row["of_colour"] = row["median"] / colour if colour > 0 else float("nan")
    return result


def load_text_encoder(model: str):
    """The tokenizer and (fp32, CPU) text encoder of a diffusers pipeline folder, of whichever
    class the folder holds (CLIP's causal encoder, or the shapes model's bidirectional one)."""
    from transformers import AutoModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    return tokenizer, AutoModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=torch.float32).eval()


def relation_response(model: str, captions: list[str], images_per_caption: int = 2, seed: int = 0,
                      num_steps: int = 10, guidance_scale: float = 5.0) -> dict:
    """Draw each two-object caption and its direction edit from the same noise (DDIM, eta = 1);
    returns the pairs whose two images both show the stated objects on the stated axis (`pairs`),
    those whose objects changed places between the two (`moved`, and `share`), and the order
    accuracy of the captions' own images (`order_right` of `order_of`)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from b2diffurl.analysis.generate import generate_images

    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    flipped = [edit(shapes.parse_caption(c), "direction").text() for c in captions]
    drawn = []
    for texts in (captions, flipped):  # the same seed: image i of both lists draws the same noise
        with torch.no_grad():
            images, prompts = generate_images(pipe, texts, images_per_caption, num_steps=num_steps, eta=1.0,
                                              guidance_scale=guidance_scale, seed=seed, batch_size=64)
        drawn.append((images.numpy(), prompts))
    (images, prompts), (flipped_images, _) = drawn
    return swapped(images, flipped_images, prompts)


def swapped(images: np.ndarray, flipped_images: np.ndarray, prompts: list[str]) -> dict:
    """`images` [N, H, W, 3] of two-object `prompts` and `flipped_images` of their direction
    edits: the pairs where both show the stated objects on the stated axis (`pairs`), those whose
    objects changed places (`moved`, `share`), and the order accuracy of `images` (`order_right`
    of `order_of`)."""
    from b2diffurl.world.failures import image_modes

    flipped = [edit(shapes.parse_caption(p), "direction").text() for p in prompts]
    own, other = image_modes(images, prompts), image_modes(flipped_images, flipped)
    placed = ("success", "reversed order")  # the stated objects, on the stated axis
    pairs = [(a, b) for a, b in zip(own, other) if a in placed and b in placed]
    # the two captions state opposite orders: the same verdict on both means the objects moved
    moved = sum((a == "success") == (b == "success") for a, b in pairs)
    return {"pairs": len(pairs), "moved": moved, "share": moved / len(pairs) if pairs else float("nan"),
            "order_right": own.count("success"), "order_of": sum(m in placed for m in own)}


def format_separation(result: dict[str, dict]) -> str:
    lines = ["edit         median distance  10%-90%          of the colour edit's"]
    for kind, r in result.items():
        lines.append(f"{kind:<12} {r['median']:>15.2f}  {r['p10']:>6.2f}-{r['p90']:<8.2f} {r['of_colour']:>10.2f}")
    return "\n".join(lines)


FLAGS = cli.flag_values(with_config=False)
MODEL = flags.DEFINE_string("model", "model/shapes-sd", "a diffusers pipeline folder with a text_encoder/",
                            flag_values=FLAGS)
CAPTIONS = flags.DEFINE_integer("captions", 96, "train captions drawn with their direction edit (0: skip)",
                             flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    import json
    import os

    from b2diffurl.logs import setup_logging

    cli.parse_command_flags(FLAGS, argv)
    setup_logging()
    print(format_separation(separation(*load_text_encoder(MODEL.value))))
    if CAPTIONS.value > 0:
        from b2diffurl.lab.pretrain import PROMPT_DIR

        with open(os.path.join(PROMPT_DIR, "train.json")) as f:
            pairs = [c for c in json.load(f) if shapes.parse_caption(c).relation is not None]
        chosen = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))[:CAPTIONS.value]]
        r = relation_response(MODEL.value, chosen)
        print(f"the UNet: of {r['pairs']} pairs (a caption and its direction edit, same noise, both with the "
              f"stated objects on the stated axis) {r['moved']} swapped places ({r['share']:.2f}); "
              f"order right {r['order_right']} of {r['order_of']}")


if __name__ == "__main__":
    main()
