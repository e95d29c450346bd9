"""What went wrong with a two-object image, and which of the failure modes a branch group can teach.

Every two-object image is checked against its caption (b2diffurl.world.shapes.check_all) and
given one outcome (`failure_mode`). `stage_failures` gives the share of each outcome over a
stage's two-object images, and over the branch groups that hold both a success and a failure
(the groups whose best and worst branch give the update a contrast) the outcome of their failing
branches (`python -m b2diffurl.lab.stage_failures STAGE_DIR` prints it for a stage folder).
`outcomes` gives the same outcomes per evaluation group, with the order accuracy; evaluation
reports it for the shapes rewards. Pure functions of images and captions: no files.
"""

from __future__ import annotations

import collections

import numpy as np

from b2diffurl.world import shapes

MODES = ("success", "wrong count", "wrong object", "reversed order", "wrong relation")


def failure_mode(checks: dict[str, bool], reverse_holds: bool = False) -> str:
    """The first thing wrong of a two-object image's checks, in the order count (an object
    missing or extra), objects (a stated colour and shape not drawn), relation: "reversed order"
    where the objects stand in the reverse of the stated relation (`reverse_holds`: left and
    right, or above and below, swapped), else "wrong relation" (level on the stated axis)."""
    if all(checks.values()):
        return "success"
    if not checks["count"]:
        return "wrong count"
    if not all(value for key, value in checks.items() if key.startswith(("colour", "shape"))):
        return "wrong object"
    return "reversed order" if reverse_holds else "wrong relation"


def two_object_modes(images: np.ndarray, prompts: list[str]) -> dict[int, str]:
    """{index: failure mode} of the images whose prompt states two objects."""
    pairs = [i for i, prompt in enumerate(prompts) if shapes.parse_caption(prompt).relation is not None]
    images = np.asarray(images)[pairs]
    captions = [shapes.parse_caption(prompts[i]) for i in pairs]
    reverse = shapes.check_all(images, [shapes.Caption(c.objects, shapes.OPPOSITE[c.relation]) for c in captions])
    return {i: failure_mode(checks, r["relation"])
            for i, checks, r in zip(pairs, shapes.check_all(images, captions), reverse)}


def image_modes(images: np.ndarray, prompts: list[str]) -> list[str | None]:
    """The failure mode of every image (None where its prompt states one object), in order: what
    a paired comparison of two evaluations on the same noise reads (metrics.paired_order)."""
    modes = two_object_modes(images, prompts)
    return [modes.get(i) for i in range(len(prompts))]


def _shares(values: list[str]) -> dict:
    return {mode: values.count(mode) / max(len(values), 1) for mode in MODES}


def stage_failures(prompts: list[str], groups: list[int], images) -> dict:
    """Outcome shares over all two-object images and over the failing branches of contrasting
    groups (a success and a failure among their branches); `order_groups` counts the groups
    holding a success and a branch in the reversed order."""
    modes = two_object_modes(images, prompts)
    by_group = collections.defaultdict(list)
    for i, mode in modes.items():
        by_group[groups[i]].append(mode)
    contrasting = [m for m in by_group.values() if "success" in m and any(x != "success" for x in m)]
    failing = [x for m in contrasting for x in m if x != "success"]
    return {"images": len(modes), "all": _shares(list(modes.values())), "groups": len(by_group),
            "contrasting_groups": len(contrasting), "failing_in_contrasting": _shares(failing),
            "order_groups": sum("reversed order" in m for m in contrasting)}


def outcomes(images: np.ndarray, prompts: list[str]) -> dict:
    """Per evaluation group of two-object captions (shapes.prompt_groups, and "two objects" for
    all): images, the share of each outcome (`modes`), and the order accuracy: of the images
    whose count, colours and shapes are right and whose objects stand in the stated relation or
    its reverse, the share in the stated one (`order_right` of `order_of`; 0.5 is chance)."""
    by_group = collections.defaultdict(list)
    for i, mode in two_object_modes(images, prompts).items():
        for group in ("two objects", *shapes.prompt_groups(prompts[i])):
            by_group[group].append(mode)
    table = {}
    for group, modes in sorted(by_group.items()):
        right, of = modes.count("success"), modes.count("success") + modes.count("reversed order")
        table[group] = {"images": len(modes), "modes": _shares(modes), "order_right": right, "order_of": of,
                        "order_accuracy": right / of if of else float("nan")}
    return table

