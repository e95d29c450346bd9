"""Image grids for looking at samples: plain tiles with captions, and best/worst branch per group.

    from b2diffurl.grids import best_worst_grid, save_grid
    save_grid(best_worst_grid(images, group_id, branch_id, scores, advantages, scale=4), "grid.png")

Pure functions of numpy arrays (PIL and numpy only); `save_grid` is the one that writes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from b2diffurl.files import atomic_write

GAP = 4  # pixels of background between cells
PAD = 3  # pixels around a caption inside its strip
FONT_SIZE = 12  # caption font size where Pillow can size its default font (>= 10.1)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return right - min(left, 0), bottom - min(top, 0)


def image_grid(images: np.ndarray, columns: int, captions: list[str] | None = None,
               scale: int = 1) -> Image.Image:
    """Tile uint8 images [N, H, W, 3] row-major, `columns` a row, each upscaled `scale`x (NEAREST).

    With `captions` (N strings, may hold newlines) each tile gets a strip of text under it; a
    cell is widened to its longest caption and the tile centred in it. Cells past N are blank.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    if columns < 1 or scale < 1:
        raise ValueError(f"columns and scale must be >= 1, got {columns} and {scale}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    num_images, height, width = images.shape[:3]
    tile_w, tile_h = width * scale, height * scale
    rows = max(1, math.ceil(num_images / columns))

    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [_text_size(measure, c, font) for c in captions] if captions else []
    cell_w = max([tile_w] + [w + 2 * PAD for w, _ in sizes])
    strip_h = max(h for _, h in sizes) + 2 * PAD if sizes else 0
    cell_h = tile_h + strip_h

    grid = Image.new("RGB", (columns * cell_w + (columns - 1) * GAP, rows * cell_h + (rows - 1) * GAP), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i in range(num_images):
        x0 = (i % columns) * (cell_w + GAP)
        y0 = (i // columns) * (cell_h + GAP)
        tile = Image.fromarray(images[i]).resize((tile_w, tile_h), Image.NEAREST)
        grid.paste(tile, (x0 + (cell_w - tile_w) // 2, y0))
        if captions:
            text_w = sizes[i][0]
            draw.multiline_text((x0 + (cell_w - text_w) // 2, y0 + tile_h + PAD), captions[i],
                                fill=TEXT_COLOUR, font=font, align="center")
    return grid


def _caption(group: int, branch: int, role: str, score: float, advantage: float) -> str:
    adv = "A n/a" if not math.isfinite(advantage) else f"A {advantage:+.2f}"
    return f"g{group} b{branch} {role} {score:.3f} ({adv})"


def _shorten(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def best_worst_picks(group_id: np.ndarray, branch_id: np.ndarray, scores: np.ndarray,
                     advantages: np.ndarray, max_groups: int = 8,
                     prompts: list[str] | None = None) -> tuple[list[int], list[str]]:
    """Sample indices and captions for `best_worst_grid`, two a group: best, then worst.

    Groups in increasing id, at most `max_groups`; NaN scores are ignored and a group with no
    finite score is left out. A group with one scored branch gets index -1 (a blank tile) as worst.
    With `prompts` (one per sample) each caption gets the prompt as a second line.
    """
    group_id, branch_id = np.asarray(group_id), np.asarray(branch_id)
    scores = np.asarray(scores, dtype=np.float64)
    advantages = np.asarray(advantages, dtype=np.float64)
    if not len(group_id) == len(branch_id) == len(scores) == len(advantages):
        raise ValueError("group_id, branch_id, scores and advantages must have the same length")
    indices, captions = [], []
    for group in np.unique(group_id):
        if len(indices) == 2 * max_groups:
            break
        members = np.flatnonzero((group_id == group) & np.isfinite(scores))
        if len(members) == 0:
            continue
        for role, pick in (("best", np.argmax), ("worst", np.argmin)):
            i = int(members[pick(scores[members])])
            if role == "worst" and len(members) == 1:
                indices.append(-1)
                captions.append(f"g{int(group)} worst: only one scored branch")
            else:
                indices.append(i)
                captions.append(_caption(int(group), int(branch_id[i]), role, scores[i], advantages[i]))
            if prompts is not None:
                captions[-1] += "\n" + _shorten(prompts[i])
    return indices, captions


def best_worst_grid(images: np.ndarray, group_id: np.ndarray, branch_id: np.ndarray,
                    scores: np.ndarray, advantages: np.ndarray, max_groups: int = 8,
                    scale: int = 1, prompts: list[str] | None = None) -> Image.Image:
    """One row per group (lowest ids first, at most `max_groups`): best and worst branch by score.

    images uint8 [N, H, W, 3] in sample order; group_id, branch_id int [N]; scores float [N]
    (raw rewards; NaN branches are ignored and a group with no finite score is left out);
    advantages float [N] (NaN is captioned "A n/a"). Captions read "g3 b1 best 0.712 (A +1.20)",
    with the prompt under it when `prompts` (list[str] [N]) is given.
    """
    images = np.asarray(images)
    if len(images) != len(np.asarray(group_id)):
        raise ValueError(f"{len(images)} images for {len(np.asarray(group_id))} group ids")
    indices, captions = best_worst_picks(group_id, branch_id, scores, advantages, max_groups, prompts)
    if not indices:
        raise ValueError("no group has a finite score")
    blank = np.full_like(images[0], 255)  # the background colour: an empty cell
    tiles = np.stack([images[i] if i >= 0 else blank for i in indices])
    return image_grid(tiles, columns=2, captions=captions, scale=scale)


def save_grid(grid: Image.Image, path: str) -> None:
    """Write a grid as PNG (atomically, creating the folder)."""
    atomic_write(path, lambda f: grid.save(f, format="PNG"))
