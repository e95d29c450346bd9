"""Which failure modes a stage's branch samples show, and which of them a branch group can teach.

    python -m b2diffurl.world.failures model/scale/b2diffurl_seed1/stage0 [more stage folders]

Reads each stage folder's sample.pkl (prompts, groups) and images.pt, checks every two-object
image against its caption (b2diffurl.world.shapes.check_all), and prints per folder the share of
each outcome (`failure_mode`) over all two-object images, and over the branch groups that hold
both a success and a failure (the groups whose best and worst branch give the update a
contrast) the outcome of their failing branches.
"""

from __future__ import annotations

import collections
import os
import sys

import numpy as np

from b2diffurl.world import shapes

MODES = ("success", "wrong count", "wrong object", "wrong relation")


def failure_mode(checks: dict[str, bool]) -> str:
    """The first thing wrong of a two-object image's checks, in the order count (an object
    missing or extra), objects (a stated colour and shape not drawn), relation."""
    if all(checks.values()):
        return "success"
    if not checks["count"]:
        return "wrong count"
    if not all(value for key, value in checks.items() if key.startswith(("colour", "shape"))):
        return "wrong object"
    return "wrong relation"


def stage_failures(prompts: list[str], groups: list[int], images) -> dict:
    """Outcome shares over all two-object images and over the failing branches of contrasting groups."""
    pairs = [i for i, prompt in enumerate(prompts) if shapes.parse_caption(prompt).relation is not None]
    checks = shapes.check_all(np.asarray(images)[pairs], [prompts[i] for i in pairs])
    modes = {i: failure_mode(c) for i, c in zip(pairs, checks)}
    by_group = collections.defaultdict(list)
    for i in pairs:
        by_group[groups[i]].append(modes[i])
    contrasting = [m for m in by_group.values() if "success" in m and any(x != "success" for x in m)]
    failing = [x for m in contrasting for x in m if x != "success"]
    return {"images": len(modes), "all": _shares(list(modes.values())), "groups": len(by_group),
            "contrasting_groups": len(contrasting), "failing_in_contrasting": _shares(failing),
            "order_groups": sum("wrong relation" in m for m in contrasting)}


def _shares(values: list[str]) -> dict:
    return {mode: values.count(mode) / max(len(values), 1) for mode in MODES}


def order_accuracy(modes: list[str]) -> tuple[int, int]:
    """(right, of): among images whose count, colours and shapes are right, how many also stand
    in the stated relation. The objects of a failed relation stand on the stated axis in the
    wrong order (the model places two objects apart along the relation's axis), so this is the
    order accuracy: 0.5 is chance."""
    return modes.count("success"), modes.count("success") + modes.count("wrong relation")


def outcomes(images: np.ndarray, prompts: list[str]) -> dict:
    """Per evaluation group of two-object captions (shapes.prompt_groups, and "two objects" for
    all): images, the share of each outcome, and the order accuracy with its count."""
    pairs = [i for i, prompt in enumerate(prompts) if shapes.parse_caption(prompt).relation is not None]
    modes = [failure_mode(c) for c in shapes.check_all(np.asarray(images)[pairs], [prompts[i] for i in pairs])]
    by_group = collections.defaultdict(list)
    for i, mode in zip(pairs, modes):
        for group in ("two objects", *shapes.prompt_groups(prompts[i])):
            by_group[group].append(mode)
    table = {}
    for group in sorted(by_group):
        right, of = order_accuracy(by_group[group])
        table[group] = {"images": len(by_group[group]), **_shares(by_group[group]),
                        "order_right": right, "order_of": of, "order_accuracy": right / of if of else float("nan")}
    return table


def main(argv: list[str] | None = None) -> None:
    import torch

    from b2diffurl.stage.sample_file import load_samples

    for folder in (sys.argv[1:] if argv is None else argv):
        record = load_samples(os.path.join(folder, "sample.pkl"))
        images = torch.load(os.path.join(folder, "images.pt"), weights_only=True).numpy()
        result = stage_failures(record["prompts"], record["group_id"].tolist(), images)
        print(f"{folder}: {result['images']} two-object images in {result['groups']} groups; "
              + ", ".join(f"{mode} {share:.3f}" for mode, share in result["all"].items()))
        print(f"  {result['contrasting_groups']} groups with a success and a failure; their failing branches: "
              + ", ".join(f"{mode} {share:.3f}" for mode, share in result["failing_in_contrasting"].items()
                          if mode != "success"))
        print(f"  {result['order_groups']} groups hold a success and a branch with the order reversed")


if __name__ == "__main__":
    main()
