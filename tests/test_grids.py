"""Image grids (b2diffurl/grids.py): layout sizes, tile pixels, captions, NaN scores."""

import math

import numpy as np
import pytest

from b2diffurl.grids import BACKGROUND, GAP, PAD, best_worst_grid, best_worst_picks, image_grid


def solid(colours, height=8, width=10):
    """uint8 [N, H, W, 3]: image i filled with colours[i]."""
    colours = np.asarray(colours, dtype=np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (len(colours), height, width, 3)).copy()


def distinct_colours(n):
    return [(20 * i + 10, 200 - 15 * i, (97 * i) % 256) for i in range(n)]


def cell_size(grid, columns, rows):
    """(cell width, cell height) recovered from the grid's size."""
    cell_w = (grid.width - (columns - 1) * GAP) / columns
    cell_h = (grid.height - (rows - 1) * GAP) / rows
    assert cell_w == int(cell_w) and cell_h == int(cell_h)
    return int(cell_w), int(cell_h)


def tile_pixel(grid, index, columns, rows, tile_h, dy=None):
    """Pixel at the horizontal centre of cell `index`, `dy` below its top (default: mid-tile)."""
    cell_w, cell_h = cell_size(grid, columns, rows)
    x = (index % columns) * (cell_w + GAP) + cell_w // 2
    y = (index // columns) * (cell_h + GAP) + (tile_h // 2 if dy is None else dy)
    return grid.getpixel((x, y))


def test_size_without_captions():
    grid = image_grid(solid(distinct_colours(6)), columns=3, scale=2)
    assert grid.size == (3 * 20 + 2 * GAP, 2 * 16 + GAP)
    assert grid.mode == "RGB"


def test_n_not_a_multiple_of_columns_leaves_blank_cells():
    colours = distinct_colours(5)
    grid = image_grid(solid(colours), columns=3, scale=2)
    assert grid.size == (3 * 20 + 2 * GAP, 2 * 16 + GAP)  # same as 6 images
    for i, colour in enumerate(colours):
        assert tile_pixel(grid, i, 3, 2, tile_h=16) == colour
    assert tile_pixel(grid, 5, 3, 2, tile_h=16) == BACKGROUND


def test_captions_add_a_strip_under_each_tile():
    colours = distinct_colours(5)
    images = solid(colours, height=32, width=32)
    plain = image_grid(images, columns=2, scale=4)
    captioned = image_grid(images, columns=2, captions=[f"g{i} b0 best 0.5 (A +1.00)" for i in range(5)], scale=4)
    assert plain.size == (2 * 128 + GAP, 3 * 128 + 2 * GAP)
    assert captioned.height > plain.height and captioned.width >= plain.width
    cell_w, cell_h = cell_size(captioned, 2, 3)
    assert cell_h > 128 + 2 * PAD  # room for a line of text
    for i, colour in enumerate(colours):
        assert tile_pixel(captioned, i, 2, 3, tile_h=128, dy=0) == colour  # top row of the tile
        assert tile_pixel(captioned, i, 2, 3, tile_h=128, dy=127) == colour  # bottom row: 32 px * 4
        assert tile_pixel(captioned, i, 2, 3, tile_h=128, dy=128) == BACKGROUND  # caption strip starts
        strip = np.asarray(captioned)[(i // 2) * (cell_h + GAP) + 128:(i // 2) * (cell_h + GAP) + cell_h,
                                      (i % 2) * (cell_w + GAP):(i % 2) * (cell_w + GAP) + cell_w]
        assert (strip.sum(axis=-1) < 200).any()  # dark text was drawn


def test_caption_wider_than_tile_widens_the_cell():
    images = solid(distinct_colours(2), height=4, width=4)
    grid = image_grid(images, columns=2, captions=["a rather long caption for a 4 px tile", "x"])
    cell_w, _ = cell_size(grid, 2, 1)
    assert cell_w > 4 * 10
    assert tile_pixel(grid, 0, 2, 1, tile_h=4) == tuple(images[0, 0, 0])
    assert tile_pixel(grid, 1, 2, 1, tile_h=4) == tuple(images[1, 0, 0])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        image_grid(np.zeros((2, 4, 4, 3), dtype=np.float32), columns=2)
    with pytest.raises(ValueError, match="captions"):
        image_grid(solid(distinct_colours(2)), columns=2, captions=["one"])


# Three groups of three branches, in shuffled sample order; group 1 holds a NaN score.
GROUP_ID = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
BRANCH_ID = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
SCORES = np.array([0.30, 0.50, 0.90, 0.71, 0.10, np.nan, 0.20, 0.40, 0.60])
ADVANTAGES = np.array([-0.1, 0.3, 1.2, 1.25, -1.4, np.nan, -1.31, np.nan, 0.9])


def test_picks_best_and_worst_in_group_order():
    indices, captions = best_worst_picks(GROUP_ID, BRANCH_ID, SCORES, ADVANTAGES)
    # group 0: samples 1, 3, 6 -> best 3 (0.71), worst 6 (0.20); group 1: 2, 7 (5 is NaN); group 2: 8, 4
    assert indices == [3, 6, 2, 7, 8, 4]
    assert captions == ["g0 b1 best 0.710 (A +1.25)", "g0 b2 worst 0.200 (A -1.31)",
                        "g1 b0 best 0.900 (A +1.20)", "g1 b2 worst 0.400 (A n/a)",
                        "g2 b2 best 0.600 (A +0.90)", "g2 b1 worst 0.100 (A -1.40)"]


def test_picks_skip_unscored_groups_and_stop_at_max_groups():
    scores = SCORES.copy()
    scores[GROUP_ID == 0] = np.nan
    indices, _ = best_worst_picks(GROUP_ID, BRANCH_ID, scores, ADVANTAGES, max_groups=1)
    assert indices == [2, 7]  # group 0 has no finite score, so group 1 is the first shown
    indices, _ = best_worst_picks(GROUP_ID, BRANCH_ID, scores, ADVANTAGES)
    assert indices == [2, 7, 8, 4]


def test_group_with_one_scored_branch_gets_a_blank_worst():
    indices, captions = best_worst_picks([0, 0], [0, 1], [math.nan, 0.5], [math.nan, 0.0])
    assert indices == [1, -1]
    assert captions[0] == "g0 b1 best 0.500 (A +0.00)"
    assert "only one scored branch" in captions[1]


def test_best_worst_grid_shows_the_picked_images():
    colours = distinct_colours(9)
    images = solid(colours, height=32, width=32)
    grid = best_worst_grid(images, GROUP_ID, BRANCH_ID, SCORES, ADVANTAGES, scale=4)
    rows = 3
    cell_w, cell_h = cell_size(grid, 2, rows)
    assert cell_w >= 128 and cell_h > 128
    for tile, sample in enumerate([3, 6, 2, 7, 8, 4]):
        assert tile_pixel(grid, tile, 2, rows, tile_h=128, dy=5) == colours[sample]
        assert tile_pixel(grid, tile, 2, rows, tile_h=128, dy=120) == colours[sample]


def test_best_worst_grid_max_groups_and_blank_worst():
    colours = distinct_colours(9)
    grid = best_worst_grid(solid(colours), GROUP_ID, BRANCH_ID, SCORES, ADVANTAGES, max_groups=2, scale=2)
    cell_size(grid, 2, 2)  # two rows
    images = solid(distinct_colours(2))
    grid = best_worst_grid(images, [0, 0], [0, 1], [math.nan, 0.5], [math.nan, 0.0], scale=2)
    assert tile_pixel(grid, 0, 2, 1, tile_h=16) == tuple(images[1, 0, 0])
    assert tile_pixel(grid, 1, 2, 1, tile_h=16) == BACKGROUND


def test_best_worst_grid_without_any_finite_score_is_an_error():
    with pytest.raises(ValueError, match="finite"):
        best_worst_grid(solid(distinct_colours(2)), [0, 0], [0, 1], [math.nan, math.nan], [0.0, 0.0])


def test_prompts_go_under_the_scores():
    prompts = [f"prompt {g}" for g in GROUP_ID[:-1]] + ["a very long prompt " * 4]
    _, captions = best_worst_picks(GROUP_ID, BRANCH_ID, SCORES, ADVANTAGES, prompts=prompts)
    assert captions[0] == "g0 b1 best 0.710 (A +1.25)\nprompt 0"
    assert captions[4].startswith("g2 b2 best 0.600 (A +0.90)\na very long prompt")
    assert len(captions[4].split("\n")[1]) == 32 and captions[4].endswith("…")
    grid = best_worst_grid(solid(distinct_colours(9)), GROUP_ID, BRANCH_ID, SCORES, ADVANTAGES, prompts=prompts)
    one_line = best_worst_grid(solid(distinct_colours(9)), GROUP_ID, BRANCH_ID, SCORES, ADVANTAGES)
    assert grid.height > one_line.height  # two lines of caption


def test_save_grid_round_trip(tmp_path):
    from PIL import Image

    from b2diffurl.grids import save_grid

    grid = image_grid(solid(distinct_colours(3)), columns=2, captions=["a", "b", "c"], scale=2)
    save_grid(grid, str(tmp_path / "new" / "grid.png"))
    with Image.open(tmp_path / "new" / "grid.png") as saved:
        assert saved.format == "PNG"
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
