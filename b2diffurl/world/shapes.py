"""A tiny text-to-image world where alignment is exact: coloured shapes on a light background.

Images are 32×32 RGB. A scene holds one or two objects; each is a circle, square or triangle in
one of four colours. Captions:

    "a red circle"
    "a blue square to the left of a green triangle"   (also: to the right of, above, below)

`render` draws a caption (hard edges, random placement and size); `parse_images` reads the
objects back from a batch of images (nearest palette colour, connected components, shape as the
rendering that overlaps the component best); `check_all` says which of its caption's attributes
each image satisfies (`parse_image` and `check` do one image). The `shapes` reward
(b2diffurl.models.rewards) is 1.0 when every attribute holds and 0.0 otherwise; `shapes_partial`
is the fraction that holds, for diagnosis.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

SIZE = 32  # image side, pixels
BACKGROUND = (235, 235, 235)
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",  # the same axis,
            "above": "below", "below": "above"}                                      # reversed
# Test prompts: captions with a held-out colour-shape binding, and two-object captions whose
# (unordered) pair of seen bindings never appears in training.
HELD_OUT_BINDINGS = (("red", "triangle"), ("green", "square"), ("blue", "circle"))
MIN_PIXELS = 8  # smaller components are noise, not objects
MARGIN = 2.0  # pixels by which centroids must differ for a relation to hold
PARSE_CHUNK = 256  # images parsed at once

_OBJECT = rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_CAPTION = re.compile(rf"^{_OBJECT}(?: ({'|'.join(RELATIONS)}) {_OBJECT})?$")


@dataclasses.dataclass(frozen=True)
class Caption:
    """What a caption states: one or two (colour, shape) objects and, for two, their relation
    (the first object is `relation` the second)."""

    objects: tuple[tuple[str, str], ...]
    relation: str | None = None

    def text(self) -> str:
        words = [f"a {colour} {shape}" for colour, shape in self.objects]
        return words[0] if self.relation is None else f"{words[0]} {self.relation} {words[1]}"


def parse_caption(text: str) -> Caption:
    """The Caption of a caption text; ValueError if it is not of this world's grammar."""
    match = _CAPTION.match(text.strip().lower())
    if match is None:
        raise ValueError(f"not a shapes-world caption: {text!r} (e.g. 'a red circle above a blue square')")
    colour1, shape1, relation, colour2, shape2 = match.groups()
    if relation is None:
        return Caption(((colour1, shape1),))
    return Caption(((colour1, shape1), (colour2, shape2)), relation)


def all_captions() -> list[Caption]:
    """Every caption of the world: 12 single objects, and 528 pairs of two different objects
    in each of the 4 relations."""
    objects = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    pairs = [Caption((a, b), relation) for a in objects for b in objects if a != b for relation in RELATIONS]
    return [Caption((obj,)) for obj in objects] + pairs


def _held_out_pairs() -> set[frozenset]:
    """Every 4th unordered pair of seen bindings (in a fixed order): 9 of 36."""
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_BINDINGS]
    pairs = [frozenset((a, b)) for i, a in enumerate(seen) for b in seen[i + 1 :]]
    return set(pairs[3::4])


def split_of(caption: Caption) -> str:
    """"train", "held-out binding" (an object with a colour-shape binding never trained on) or
    "held-out pair" (two seen objects never trained on together)."""
    if any(obj in HELD_OUT_BINDINGS for obj in caption.objects):
        return "held-out binding"
    if len(caption.objects) == 2 and frozenset(caption.objects) in _held_out_pairs():
        return "held-out pair"
    return "train"


HELD_OUT_TWO_OBJECTS = "two objects, held-out"  # the headline group: both kinds of held-out pair captions


def prompt_groups(text: str) -> tuple[str, ...]:
    """The evaluation groups of a caption: "one object" or "two objects" with its split, e.g.
    "two objects, held-out pair", and for held-out two-object captions also HELD_OUT_TWO_OBJECTS."""
    caption = parse_caption(text)
    count = "one object" if len(caption.objects) == 1 else "two objects"
    split = split_of(caption)
    if split == "train":
        return (f"{count}, seen",)
    return (f"{count}, {split}",) + ((HELD_OUT_TWO_OBJECTS,) if count == "two objects" else ())


def _mask(shape: str, cx: float, cy: float, r: float, window: tuple[int, int, int, int] = (0, SIZE, 0, SIZE)
          ) -> np.ndarray:
    """Boolean [SIZE, SIZE] mask of a shape with centre (cx, cy) and half-extent r (pixel centres);
    [n, SIZE, SIZE] masks for arrays of n centres and half-extents shaped [n, 1, 1]. `window`
    (y0, y1, x0, x1) gives the mask of those rows and columns only."""
    y0, y1, x0, x1 = window
    y, x = np.mgrid[y0:y1, x0:x1] + 0.5
    if shape == "square":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if shape == "triangle":  # apex up, height 2r, base 2r wide
        return (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def placements(caption: Caption, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(cx, cy, r) of each object: anywhere for one object; for two, on either side of the
    image's middle along the relation's axis, so that the relation holds and nothing overlaps."""
    if caption.relation is None:
        r = rng.uniform(5.0, 8.0)
        return [(rng.uniform(r + 1, SIZE - r - 1), rng.uniform(r + 1, SIZE - r - 1), r)]
    radii = rng.uniform(4.0, 6.0, size=2)
    near = [rng.uniform(r + 1, SIZE / 2 - r - 1) for r in radii]  # along the axis, inside the first half
    far = [SIZE - rng.uniform(r + 1, SIZE / 2 - r - 1) for r in radii]  # inside the second half
    across = [rng.uniform(r + 1, SIZE - r - 1) for r in radii]
    first_near = caption.relation in ("to the left of", "above")
    along = [near[0], far[1]] if first_near else [far[0], near[1]]
    if caption.relation in ("to the left of", "to the right of"):
        return [(along[i], across[i], radii[i]) for i in range(2)]
    return [(across[i], along[i], radii[i]) for i in range(2)]


def render(caption: Caption | str, rng: np.random.Generator) -> np.ndarray:
    """uint8 [SIZE, SIZE, 3] image of the caption, with random placement and sizes."""
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = BACKGROUND
    for (colour, shape), (cx, cy, r) in zip(caption.objects, placements(caption, rng)):
        image[_mask(shape, cx, cy, r)] = COLOURS[colour]
    return image


@dataclasses.dataclass(frozen=True)
class Found:
    """One object read from an image."""

    colour: str
    shape: str
    cx: float
    cy: float
    pixels: int


def _label_regions(nearest: np.ndarray) -> np.ndarray:
    """[N, SIZE, SIZE] labels of the 4-connected regions of equal nonzero `nearest` (0 stays 0):
    every pixel of a region takes 1 + the largest flat index among its pixels. All images at
    once: each pass takes the largest label among same-colour neighbours, then follows each label
    to the pixel it names (pointer jumping), until nothing changes."""
    n = len(nearest)
    flat_index = np.arange(1, SIZE * SIZE + 1, dtype=np.int32).reshape(SIZE, SIZE)
    labels = np.where(nearest > 0, flat_index, np.int32(0))
    joins_right = (nearest[:, :, 1:] == nearest[:, :, :-1]) & (nearest[:, :, 1:] > 0)
    joins_down = (nearest[:, 1:, :] == nearest[:, :-1, :]) & (nearest[:, 1:, :] > 0)
    rows = np.arange(n)[:, None]
    while True:
        new = labels.copy()
        np.maximum(new[:, :, :-1], np.where(joins_right, labels[:, :, 1:], 0), out=new[:, :, :-1])
        np.maximum(new[:, :, 1:], np.where(joins_right, labels[:, :, :-1], 0), out=new[:, :, 1:])
        np.maximum(new[:, :-1, :], np.where(joins_down, labels[:, 1:, :], 0), out=new[:, :-1, :])
        np.maximum(new[:, 1:, :], np.where(joins_down, labels[:, :-1, :], 0), out=new[:, 1:, :])
        flat = new.reshape(n, -1)
        flat = np.where(flat > 0, flat[rows, np.maximum(flat - 1, 0)], 0)  # jump to the named pixel's label
        new = flat.reshape(labels.shape)
        if np.array_equal(new, labels):
            return labels
        labels = new


# The nudges _shape_of tries: half-extent by up to half a pixel, centre by up to a quarter,
# each shaped [45, 1, 1] to broadcast over the image.
_NUDGES = tuple(v.reshape(-1, 1, 1) for v in np.meshgrid([-0.5, -0.25, 0.0, 0.25, 0.5], [-0.25, 0.0, 0.25],
                                                         [-0.25, 0.0, 0.25], indexing="ij"))


def _shape_of(component: np.ndarray) -> str:
    """circle, square or triangle: the shape whose rendering (`_mask`, centred on the
    component's bounding box, with its half-extent and centre nudged by up to half a pixel)
    overlaps the component best, by intersection over union. A rendered shape is matched
    exactly by its own rendering; a generated one, with rounded corners and soft edges, goes
    to the nearest (thresholds on how full the box is read rounded squares as circles)."""
    ys, xs = np.nonzero(component)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    half = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 2
    # Every nudged rendering lies within half + 1.25 pixels of the centre, and the component
    # within its box: outside this window both are empty, so the counts are the whole image's.
    reach = half + 2
    window = (max(0, int(cy - reach)), min(SIZE, int(cy + reach) + 1),
              max(0, int(cx - reach)), min(SIZE, int(cx + reach) + 1))
    part = component[window[0]:window[1], window[2]:window[3]]
    dr, dx, dy = _NUDGES
    best = {}
    for shape in SHAPES:  # all 45 nudged renderings at once: [45, h, w]
        masks = _mask(shape, cx + dx, cy + dy, half + dr, window)
        best[shape] = ((masks & part).sum((1, 2)) / (masks | part).sum((1, 2))).max()
    return max(best, key=best.get)


def parse_images(images: np.ndarray) -> list[list[Found]]:
    """The objects of each image of a uint8 [N, SIZE, SIZE, 3] batch: every pixel takes the
    nearest of the background and palette colours; each connected same-colour region of at least
    MIN_PIXELS pixels is an object. An image's objects come in COLOURS order, then in the order
    of their first pixel row by row."""
    if len(images) > PARSE_CHUNK:  # bounded arrays, and the regions' passes stop at the chunk's slowest
        return [found for i in range(0, len(images), PARSE_CHUNK) for found in parse_images(images[i:i + PARSE_CHUNK])]
    palette = np.array([BACKGROUND, *COLOURS.values()], np.float32)
    distances = ((np.asarray(images)[:, :, :, None, :].astype(np.float32) - palette) ** 2).sum(-1)
    nearest = distances.argmin(-1)  # 0 background, 1.. the colours in COLOURS order
    labels = _label_regions(nearest)
    image_of, y, x = np.nonzero(labels)
    region_ids, region_of, pixels = np.unique(image_of * SIZE * SIZE + labels[image_of, y, x] - 1,
                                              return_inverse=True, return_counts=True)
    first = np.full(len(region_ids), SIZE * SIZE)
    np.minimum.at(first, region_of, y * SIZE + x)
    sum_x, sum_y = np.bincount(region_of, x, len(region_ids)), np.bincount(region_of, y, len(region_ids))
    found = [[] for _ in range(len(images))]
    images_of, flat_of = np.divmod(region_ids, SIZE * SIZE)
    colours = nearest[images_of, flat_of // SIZE, flat_of % SIZE]
    names = list(COLOURS)
    for r in np.lexsort((first, colours, images_of)):
        if pixels[r] >= MIN_PIXELS:
            i = images_of[r]
            component = labels[i] == flat_of[r] + 1
            found[i].append(Found(names[colours[r] - 1], _shape_of(component), sum_x[r] / pixels[r] + 0.5,
                                  sum_y[r] / pixels[r] + 0.5, int(pixels[r])))
    return found


def parse_image(image: np.ndarray) -> list[Found]:
    """The objects of one uint8 [SIZE, SIZE, 3] image (parse_images)."""
    return parse_images(image[None])[0]


def _relation_holds(a: Found, b: Found, relation: str) -> bool:
    if relation == "to the left of":
        return a.cx < b.cx - MARGIN
    if relation == "to the right of":
        return a.cx > b.cx + MARGIN
    if relation == "above":
        return a.cy < b.cy - MARGIN
    return a.cy > b.cy + MARGIN  # below


def _checks(found: list[Found], caption: Caption) -> dict[str, bool]:
    checks = {}
    matches = []
    for i, (colour, shape) in enumerate(caption.objects):
        checks[f"colour{i}"] = any(f.colour == colour for f in found)
        matches.append([f for f in found if f.colour == colour and f.shape == shape])
        checks[f"shape{i}"] = bool(matches[-1])
    if caption.relation is not None:
        checks["relation"] = any(_relation_holds(a, b, caption.relation)
                                 for a in matches[0] for b in matches[1] if a is not b)
    checks["count"] = len(found) == len(caption.objects)
    return checks


def check_all(images: np.ndarray, captions: list[Caption | str]) -> list[dict[str, bool]]:
    """Which of its caption's attributes each image satisfies: per object its colour (an object
    of that colour exists) and its shape (one of that colour and shape exists), the relation
    (two such objects stand in it), and the count (exactly as many objects as stated)."""
    captions = [parse_caption(c) if isinstance(c, str) else c for c in captions]
    return [_checks(found, caption) for found, caption in zip(parse_images(images), captions)]


def check(image: np.ndarray, caption: Caption | str) -> dict[str, bool]:
    """check_all for one image."""
    return check_all(image[None], [caption])[0]


def scores(images: np.ndarray, captions: list[Caption | str], partial: bool = False) -> np.ndarray:
    """Per image 1.0 if it satisfies every attribute of its caption, else 0.0; with `partial`,
    the fraction of the attributes it satisfies."""
    return np.array([sum(c.values()) / len(c) if partial else float(all(c.values()))
                     for c in check_all(images, captions)])


def score(image: np.ndarray, caption: Caption | str) -> float:
    """1.0 if the image satisfies every attribute of the caption, else 0.0."""
    return float(scores(image[None], [caption])[0])


def partial_score(image: np.ndarray, caption: Caption | str) -> float:
    """The fraction of the caption's attributes the image satisfies."""
    return float(scores(image[None], [caption], partial=True)[0])
