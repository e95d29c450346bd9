"""Reward functions: the registry, batching, and each reward on images whose answer is known."""

import ml_collections
import numpy as np
import pytest

from b2diffurl.rewards import COLOURS, REWARDS, build_reward, prompt_colour, score_images


def _reward(name, model=""):
    return build_reward(ml_collections.ConfigDict({"name": name, "model": model, "batch_size": 2}))


def _solid(rgb, size=32):
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (size, size, 3)).copy()


def test_registry_has_the_core_rewards():
    assert {"clip_score", "jpeg_compressibility", "jpeg_incompressibility", "colour_match"} <= set(REWARDS)


def test_colour_match_scores_the_named_colour_highest():
    reward = _reward("colour_match")
    images = np.stack([_solid(COLOURS["red"]), _solid(COLOURS["blue"])])
    red, blue = reward(images, ["a red apple", "a red apple"])
    assert red == pytest.approx(1.0) and blue < 0.7
    # the same image scores differently for different prompts: the reward depends on the prompt
    assert reward(images[:1], ["a blue plum"])[0] == pytest.approx(blue)
    assert prompt_colour("An Orange banana") == "orange"
    with pytest.raises(ValueError, match="colour word"):
        reward(images[:1], ["a cat riding a bike"])


def test_jpeg_rewards_prefer_flat_or_detailed_images():
    flat = _solid((128, 128, 128), 64)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    images = np.stack([flat, noisy])
    compress = _reward("jpeg_compressibility")(images, ["", ""])
    incompress = _reward("jpeg_incompressibility")(images, ["", ""])
    assert compress[0] > compress[1] and incompress[1] > incompress[0]
    np.testing.assert_allclose(compress, -incompress)


def test_score_images_batches_include_the_last_short_one():
    calls = []

    def reward(images, prompts):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, 0].astype(float)

    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(3, axis=-1)
    scores = score_images(reward, images, list("abcde"), batch_size=2)
    assert calls == [2, 2, 1]
    np.testing.assert_array_equal(scores, [0, 1, 2, 3, 4])


def test_clip_score_loads_a_local_clip_model_and_scores_in_range(tiny_model_dir, tmp_path):
    from transformers import CLIPTokenizer

    from b2diffurl.tiny import save_tiny_clip

    tokenizer = CLIPTokenizer.from_pretrained(f"{tiny_model_dir}/tokenizer")
    clip_dir = save_tiny_clip(str(tmp_path / "clip"), tokenizer)
    reward = _reward("clip_score", clip_dir)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    prompts = ["a red apple", "a blue plum", "a green pear"]
    scores = score_images(reward, images, prompts, batch_size=2)
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1.0 + 1e-6)
    # batching does not change a score, and a different prompt gives a different one
    np.testing.assert_allclose(reward(images[2:], prompts[2:]), scores[2:], rtol=1e-5)
    assert not np.isclose(reward(images[:1], ["a black grape"])[0], scores[0])
