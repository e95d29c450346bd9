"""The shapes world: captions parse, renders read back exactly, and the reward is exact."""

import itertools
import os

import numpy as np
import pytest

from b2diffurl.world import shapes
from b2diffurl.world.shapes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    Caption,
    check,
    parse_caption,
    partial_score,
    render,
    score,
)

ONE = [Caption(((c, s),)) for c in COLOURS for s in SHAPES]
TWO = [Caption(((c1, s1), (c2, s2)), r) for (c1, s1), (c2, s2) in itertools.product(itertools.product(COLOURS, SHAPES),
                                                                                  repeat=2) for r in RELATIONS]


def test_captions_parse_and_print_back():
    for caption in ONE + TWO[::7]:
        assert parse_caption(caption.text()) == caption
    assert parse_caption("A Blue Square above a red circle ") == Caption((("blue", "square"), ("red", "circle")), "above")
    for bad in ("a purple circle", "a red circle next to a blue square", "red circle", "a red circle and"):
        with pytest.raises(ValueError, match="not a shapes-world caption"):
            parse_caption(bad)


@pytest.mark.parametrize("seed", range(3))
def test_every_caption_scores_one_on_its_own_rendering(seed):
    rng = np.random.default_rng(seed)
    for caption in ONE + TWO:
        image = render(caption, rng)
        assert image.shape == (shapes.SIZE, shapes.SIZE, 3) and image.dtype == np.uint8
        assert score(image, caption) == 1.0, (caption.text(), check(image, caption))
        assert partial_score(image, caption) == 1.0


def _broken(caption: Caption) -> list[tuple[str, Caption]]:
    """Captions that differ from `caption` in exactly one attribute, with the attribute's name."""
    (c1, s1), *rest = caption.objects
    other_colour = next(c for c in COLOURS if c != c1 and all(c != c2 for c2, _ in rest))
    other_shape = next(s for s in SHAPES if s != s1)
    out = [("colour0", Caption(((other_colour, s1), *rest), caption.relation)),
           ("shape0", Caption(((c1, other_shape), *rest), caption.relation))]
    if caption.relation is not None and caption.objects[0] != caption.objects[1]:  # two alike: symmetric
        opposite = {"to the left of": "to the right of", "to the right of": "to the left of",
                    "above": "below", "below": "above"}[caption.relation]
        out.append(("relation", Caption(caption.objects, opposite)))
    return out


def test_an_image_that_breaks_one_attribute_scores_zero():
    rng = np.random.default_rng(0)
    for caption in ONE + TWO[::5]:
        for attribute, wrong in _broken(caption):
            image = render(wrong, rng)
            checks = check(image, caption)
            assert score(image, caption) == 0.0, (caption.text(), wrong.text(), checks)
            if len({colour for colour, _ in caption.objects}) == len(caption.objects):
                # (with two objects of one colour, a changed colour can leave that colour present)
                assert not checks[attribute], (caption.text(), wrong.text(), checks)
            assert 0.0 < partial_score(image, caption) < 1.0


def test_an_extra_object_or_an_empty_image_scores_zero():
    rng = np.random.default_rng(1)
    caption = parse_caption("a red circle")
    two = render("a red circle to the left of a blue square", rng)
    assert not check(two, caption)["count"] and score(two, caption) == 0.0
    empty = render("a red circle", rng)
    empty[:] = shapes.BACKGROUND
    assert score(empty, caption) == 0.0 and partial_score(empty, caption) == 0.0


def test_the_image_parser_reads_colour_shape_and_position_through_noise():
    rng = np.random.default_rng(2)
    for caption in TWO[::3]:
        image = render(caption, rng)
        noisy = np.clip(image.astype(int) + rng.normal(0, 20, image.shape).round().astype(int), 0, 255).astype(np.uint8)
        assert score(noisy, caption) == 1.0, (caption.text(), check(noisy, caption))


def _reference_parse(image):
    """parse_image written the plain way: a flood fill per region, every nudged rendering over
    the whole image."""
    palette = np.array([shapes.BACKGROUND, *COLOURS.values()], np.float32)
    nearest = ((image[:, :, None, :].astype(np.float32) - palette) ** 2).sum(-1).argmin(-1)
    found = []
    for index, colour in enumerate(COLOURS, start=1):
        seen = np.zeros(nearest.shape, bool)
        for start in zip(*np.nonzero(nearest == index)):
            if seen[start]:
                continue
            region, stack = [], [start]
            seen[start] = True
            while stack:
                y, x = stack.pop()
                region.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < shapes.SIZE and 0 <= nx < shapes.SIZE and nearest[ny, nx] == index and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            if len(region) < shapes.MIN_PIXELS:
                continue
            mask = np.zeros(nearest.shape, bool)
            mask[tuple(np.array(region).T)] = True
            ys, xs = np.nonzero(mask)
            cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
            half = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 2
            dr, dx, dy = shapes._NUDGES
            iou = {shape: ((m & mask).sum((1, 2)) / (m | mask).sum((1, 2))).max()
                   for shape in SHAPES for m in [shapes._mask(shape, cx + dx, cy + dy, half + dr)]}
            found.append(shapes.Found(colour, max(iou, key=iou.get), xs.mean() + 0.5, ys.mean() + 0.5, len(region)))
    return found


def _ragged_images(rng, n):
    """Scenes a parser finds hard: noisy renders, blocky random colour maps, and a snake (one
    region whose ends are hundreds of steps apart)."""
    colours = np.array([shapes.BACKGROUND, *COLOURS.values()], np.int64)
    images = []
    for i in range(n):
        if i % 2:
            image = render(TWO[(i * 37) % len(TWO)], rng).astype(np.int64)
            image += rng.normal(0, 45, image.shape).round().astype(np.int64)
        else:
            cells = rng.integers(0, len(colours), (8, 8))
            image = colours[np.kron(cells, np.ones((4, 4), np.int64))]
            image += rng.normal(0, 30, image.shape).round().astype(np.int64)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    snake = np.zeros((shapes.SIZE, shapes.SIZE), np.int64)
    snake[::2] = 1  # every other row, joined at alternate ends: one region of 528 pixels
    snake[1::4, -1] = snake[3::4, 0] = 1
    images.append(colours[snake * 2].astype(np.uint8))
    return np.stack(images)


def test_the_batched_parser_reads_what_a_plain_flood_fill_reads(monkeypatch):
    images = _ragged_images(np.random.default_rng(5), 60)
    parsed = shapes.parse_images(images)
    assert sum(len(found) for found in parsed) > 150  # many regions, not a few easy ones
    assert [f.pixels for f in parsed[-1]] == [16 * 32 + 16]  # the snake is one region
    for image, found in zip(images, parsed):
        assert found == _reference_parse(image)
    assert shapes.parse_image(images[3]) == parsed[3]
    monkeypatch.setattr(shapes, "PARSE_CHUNK", 16)
    assert shapes.parse_images(images) == parsed


def test_the_shapes_rewards_score_batches_through_the_registry():
    from b2diffurl.models.rewards import build_reward, score_images
    from config import base

    config = base.get_config().reward
    rng = np.random.default_rng(3)
    prompts = ["a red circle", "a blue square above a green triangle", "a yellow triangle"]
    images = np.stack([render(prompts[0], rng), render(prompts[1], rng), render("a yellow square", rng)])
    config.name = "shapes"
    np.testing.assert_array_equal(score_images(build_reward(config), images, prompts, batch_size=2), [1.0, 1.0, 0.0])
    config.name = "shapes_partial"
    np.testing.assert_allclose(score_images(build_reward(config), images, prompts, batch_size=2), [1.0, 1.0, 2 / 3])


def test_test_prompts_hold_out_bindings_and_pairs_never_trained_on():
    import json
    import os

    from conftest import REPO

    def load(name):
        with open(os.path.join(REPO, "config", "prompt", "shapes", name)) as f:
            return [parse_caption(text) for text in json.load(f)]

    train, test = load("train.json"), load("test.json")
    assert len(train) + len(test) == len(shapes.all_captions()) == 12 + 12 * 11 * 4
    trained_objects = {obj for caption in train for obj in caption.objects}
    trained_pairs = {frozenset(caption.objects) for caption in train if len(caption.objects) == 2}
    assert not trained_objects & set(shapes.HELD_OUT_BINDINGS)
    groups = {}
    for caption in test:
        groups.setdefault(shapes.split_of(caption), []).append(caption)
        assert (set(caption.objects) - trained_objects) or frozenset(caption.objects) not in trained_pairs
    assert set(groups) == {"held-out binding", "held-out pair"}
    assert all(len(c.objects) == 2 for c in groups["held-out pair"]) and len(groups["held-out pair"]) == 72
    assert {len(c.objects) for c in train} == {1, 2}
    headline = [c for c in test if shapes.HELD_OUT_TWO_OBJECTS in shapes.prompt_groups(c.text())]
    assert len(headline) == len(test) - 3 and all(len(c.objects) == 2 for c in headline)  # all but 3 singles
    assert shapes.prompt_groups("a red circle") == ("one object, seen",)
    assert shapes.prompt_groups("a red triangle above a blue square") == (
        "two objects, held-out binding", shapes.HELD_OUT_TWO_OBJECTS)


def test_pretraining_saves_a_pipeline_that_loads_and_generates(tmp_path):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from b2diffurl.analysis.generate import generate_images
    from b2diffurl.lab.pretrain import pretrain

    out = str(tmp_path / "shapes-sd")
    # two steps a phase
    record = pretrain(out, minutes=10.0, seed=0, batch_size=8, max_steps=2, autoencoder_batch_size=4)
    assert record["autoencoder_steps"] == record["denoiser_steps"] == 2 and record["scaling_factor"] > 0
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, dtype=torch.float32)  # saved in fp16
    assert pipe.tokenizer("a red circle above a blue square").input_ids[1:-1] == [
        pipe.tokenizer.convert_tokens_to_ids(word + "</w>") for word in "a red circle above a blue square".split()]
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        images, prompts = generate_images(pipe, ["a red circle"], 2, num_steps=4, eta=1.0, guidance_scale=5.0,
                                          seed=0, batch_size=2)
    assert images.shape == (2, shapes.SIZE, shapes.SIZE, 3) and prompts == ["a red circle"] * 2
    # the same seed again
    pretrain(str(tmp_path / "again"), minutes=10.0, seed=0, batch_size=8, max_steps=2, autoencoder_batch_size=4)
    again = StableDiffusionPipeline.from_pretrained(str(tmp_path / "again"), safety_checker=None)
    assert all(torch.equal(a, b) for a, b in zip(again.unet.state_dict().values(), pipe.unet.state_dict().values()))


def test_failure_modes_name_the_first_thing_wrong_and_the_groups_that_teach():
    import numpy as np

    from b2diffurl.world.failures import stage_failures

    rng = np.random.default_rng(0)
    caption = "a red circle above a blue square"
    drawn = [caption, "a red circle below a blue square", "a green circle above a blue square", "a red circle",
             caption, caption]  # group 0: one of each outcome and a success; group 1: successes only
    images = np.stack([render(text, rng) for text in drawn])
    result = stage_failures([caption] * 6, [0, 0, 0, 0, 1, 1], images)
    assert result["images"] == 6 and result["groups"] == 2 and result["contrasting_groups"] == 1
    assert result["all"] == {"success": 0.5, "wrong count": 1 / 6, "wrong object": 1 / 6, "reversed order": 1 / 6,
                             "wrong relation": 0.0}
    assert result["failing_in_contrasting"] == {"success": 0.0, "wrong count": 1 / 3, "wrong object": 1 / 3,
                                                "reversed order": 1 / 3, "wrong relation": 0.0}
    assert result["order_groups"] == 1  # group 0 holds a success and a reversed order


def test_outcomes_per_group_count_the_order_only_where_everything_else_is_right():
    from b2diffurl.world.failures import outcomes

    rng = np.random.default_rng(1)
    seen, held_out = "a red circle above a yellow square", "a red triangle to the left of a blue square"
    drawn = [(seen, seen), (seen, "a red circle below a yellow square"), (seen, "a red circle below a green square"),
             (held_out, held_out), (held_out, "a red triangle to the right of a blue square"),
             (held_out, "a red triangle to the right of a blue square"), ("a red circle", "a red circle")]
    images = np.stack([render(image, rng) for _, image in drawn])
    level = np.full((1, shapes.SIZE, shapes.SIZE, 3), shapes.BACKGROUND, np.uint8)  # side by side, for "above"
    level[0, shapes._mask("circle", 8, 16, 5)] = COLOURS["red"]
    level[0, shapes._mask("square", 24, 16, 5)] = COLOURS["yellow"]
    images, drawn = np.concatenate([images, level]), drawn + [(seen, "level")]
    table = outcomes(images, [caption for caption, _ in drawn])
    assert set(table) == {"two objects", "two objects, seen", "two objects, held-out binding",
                          shapes.HELD_OUT_TWO_OBJECTS}  # single objects have no order
    seen_row, held_row = table["two objects, seen"], table[shapes.HELD_OUT_TWO_OBJECTS]
    # neither the wrong object nor the level pair counts in the order
    assert (seen_row["images"], seen_row["order_right"], seen_row["order_of"]) == (4, 1, 2)
    assert seen_row["modes"] == {"success": 0.25, "wrong count": 0.0, "wrong object": 0.25, "reversed order": 0.25,
                                 "wrong relation": 0.25} and seen_row["order_accuracy"] == 0.5
    assert (held_row["order_right"], held_row["order_of"]) == (1, 3)
    assert held_row["modes"]["reversed order"] == pytest.approx(2 / 3)
    assert table["two objects"]["images"] == 7 and table["two objects"]["order_of"] == 5


def test_the_text_encoder_is_grounded_in_where_each_object_is_drawn():
    import json

    import numpy as np

    from b2diffurl.lab import pretrain

    tokenizer, text_encoder, _, _ = pretrain.build_models(0)
    for caption in ("a red circle", "a blue square to the left of a green triangle", "a red circle above a blue square"):
        ids = tokenizer(caption).input_ids
        words = caption.split()
        for obj, indices in zip(shapes.parse_caption(caption).objects, pretrain.object_token_positions(caption)):
            named = [tokenizer.convert_ids_to_tokens(ids[i]).removesuffix("</w>") for i in indices]
            assert named == ["a", *obj] and all(words[i - 1] == w for i, w in zip(indices, named))
    with open(os.path.join(pretrain.PROMPT_DIR, "train.json")) as f:
        captions = json.load(f)
    untrained = pretrain.train_text_encoder(text_encoder, tokenizer, captions, 0, 8, np.random.default_rng(0))
    result = pretrain.train_text_encoder(text_encoder, tokenizer, captions, 800, 64, np.random.default_rng(0))
    # the centres read from the words of the two objects stand in the stated order (0.5: chance)
    assert untrained["order_read"] < 0.8 and result["order_read"] >= 0.95
    assert not any(p.requires_grad for p in text_encoder.parameters()) and not text_encoder.training
