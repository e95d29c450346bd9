"""Reward functions: the registry, batching, and each reward on images whose answer is known."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from b2diffurl.cli import check_config
from b2diffurl.errors import UserError
from b2diffurl.models import rewards
from b2diffurl.models.rewards import COLOURS, REWARDS, build_reward, prompt_colour, score_images
from config import base
from config import tiny_random as tiny

PROMPTS = ["a red apple", "a blue plum", "a green pear"]


def _config(name, **keys):
    """config/base.py's reward block with `name` and the given keys."""
    config = base.get_config().reward
    config.update({"name": name, "model": "", **keys})
    return config


def _reward(name, **keys):
    return build_reward(_config(name, **keys))


def _solid(rgb, size=32):
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (size, size, 3)).copy()


def _random_images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_dir(tiny_model_dir, tmp_path_factory):
    """A tiny random-weight CLIPModel + CLIPProcessor folder (projection_dim 16)."""
    return _save_clip(tiny_model_dir, tmp_path_factory.mktemp("clip") / "clip")


def _save_clip(tiny_model_dir, directory):
    from transformers import CLIPTokenizer

    from b2diffurl.world.random_model import save_tiny_clip

    return save_tiny_clip(str(directory), CLIPTokenizer.from_pretrained(f"{tiny_model_dir}/tokenizer"))


def test_registry_has_the_core_and_extra_rewards():
    assert {"clip_score", "jpeg_compressibility", "jpeg_incompressibility", "colour_match",
            "pickscore", "aesthetic", "weighted"} <= set(REWARDS)


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


# ---- CLIP-based rewards on a tiny random CLIP ----


def test_clip_score_loads_a_local_clip_model_and_scores_in_range(clip_dir):
    reward = _reward("clip_score", model=clip_dir)
    images = _random_images(3)
    scores = score_images(reward, images, PROMPTS, batch_size=2)
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1.0 + 1e-6)
    # batching does not change a score, and a different prompt gives a different one
    np.testing.assert_allclose(reward(images[2:], PROMPTS[2:]), scores[2:], rtol=1e-5)
    assert not np.isclose(reward(images[:1], ["a black grape"])[0], scores[0])


def test_pickscore_is_the_logit_scaled_clip_score(clip_dir):
    from transformers import CLIPModel

    scale = CLIPModel.from_pretrained(clip_dir).logit_scale.exp().item()
    images = _random_images(3)
    pick = score_images(_reward("pickscore", model=clip_dir), images, PROMPTS, batch_size=2)
    clip = score_images(_reward("clip_score", model=clip_dir), images, PROMPTS, batch_size=2)
    assert scale > 1 and np.all(np.abs(pick) <= scale * (1 + 1e-6))
    np.testing.assert_allclose(pick, scale * clip, rtol=1e-5, atol=1e-6)
    # a separate processor folder (PickScore's lives in another repo) is used as given
    separate = score_images(_reward("pickscore", model=clip_dir, processor=clip_dir), images, PROMPTS, 2)
    np.testing.assert_allclose(separate, pick, rtol=1e-6)


def test_clip_rewards_share_one_model_per_process(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import CLIPModel

    directory = _save_clip(tiny_model_dir, tmp_path / "clip")
    loads, load = [], CLIPModel.from_pretrained
    monkeypatch.setattr(CLIPModel, "from_pretrained", lambda *args, **kw: loads.append(args) or load(*args, **kw))
    reward = _reward("weighted", model=directory, components="clip_score:1.0,pickscore:0.5")
    _reward("clip_score", model=directory)
    assert len(loads) == 1
    assert reward(_random_images(2), PROMPTS[:2]).shape == (2,)


def _aesthetic_state(dim, seed=None):
    """A LAION aesthetic v2 state dict, written out by hand: zeros with last bias 3.0, or random."""
    shapes = {"layers.0": (1024, dim), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
              "layers.7": (1, 16)}
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    state = {}
    for name, (out_features, in_features) in shapes.items():
        if generator is None:
            weight, bias = torch.zeros(out_features, in_features), torch.zeros(out_features)
        else:
            weight = torch.randn(out_features, in_features, generator=generator) / in_features ** 0.5
            bias = torch.randn(out_features, generator=generator)
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    if generator is None:
        state["layers.7.bias"] = torch.tensor([3.0])
    return state


def test_aesthetic_with_a_constant_head_scores_its_bias(clip_dir, tmp_path):
    path = str(tmp_path / "constant.pth")
    torch.save(_aesthetic_state(16), path)
    scores = score_images(_reward("aesthetic", model=clip_dir, aesthetic_weights=path), _random_images(3), PROMPTS, 2)
    np.testing.assert_allclose(scores, 3.0)


def test_aesthetic_is_the_mlp_of_the_normalised_clip_image_embedding(clip_dir, tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPModel, CLIPProcessor

    state = _aesthetic_state(16, seed=0)
    pth, safetensors = str(tmp_path / "random.pt"), str(tmp_path / "random.safetensors")
    torch.save(state, pth)
    save_file(state, safetensors)
    images = _random_images(3)
    scores = score_images(_reward("aesthetic", model=clip_dir, aesthetic_weights=pth), images, PROMPTS, 2)
    assert np.ptp(scores) > 1e-3  # different images, different scores
    # the same chain of linear layers (eval mode: no dropout) on CLIPModel.forward's image_embeds
    with torch.no_grad():
        inputs = CLIPProcessor.from_pretrained(clip_dir)(text=PROMPTS, images=list(images), return_tensors="pt",
                                                         padding=True)
        x = CLIPModel.from_pretrained(clip_dir)(**inputs).image_embeds
        for layer in (0, 2, 4, 6, 7):
            x = x @ state[f"layers.{layer}.weight"].T + state[f"layers.{layer}.bias"]
    np.testing.assert_allclose(scores, x.squeeze(-1).numpy(), rtol=1e-4, atol=1e-5)
    from_safetensors = _reward("aesthetic", model=clip_dir, aesthetic_weights=safetensors)
    np.testing.assert_allclose(from_safetensors(images, ["", "", ""]), scores, rtol=1e-5)  # prompts are ignored


def test_aesthetic_weights_missing_or_not_fitting_are_user_errors(clip_dir, tmp_path):
    with pytest.raises(UserError, match="reward.aesthetic_weights"):
        _reward("aesthetic", model=clip_dir, aesthetic_weights=str(tmp_path / "missing.pth"))
    path = str(tmp_path / "for_vit_l.pth")
    torch.save(_aesthetic_state(768), path)  # made for a 768-dim CLIP, not the tiny 16-dim one
    with pytest.raises(UserError, match="reward.aesthetic_weights.*16-dim"):
        _reward("aesthetic", model=clip_dir, aesthetic_weights=path)


# ---- weighted sums and user functions ----

USER_MODULE = '''
import numpy as np

NOT_A_FUNCTION = 3


def red_fraction(images, prompts):
    return (images[..., 0] > 127).mean(axis=(1, 2))
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A module `user_rewards_for_test` on sys.path, as a user's own file would be."""
    (tmp_path / "user_rewards_for_test.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_rewards_for_test"
    sys.modules.pop("user_rewards_for_test", None)


def test_a_user_function_is_the_reward(user_module):
    images = np.stack([_solid((255, 0, 0)), _solid((0, 0, 255))])
    images[0, :8] = 0  # a quarter of the first image is not red
    reward = _reward(f"{user_module}:red_fraction")
    np.testing.assert_allclose(score_images(reward, images, ["", ""], batch_size=1), [0.75, 0.0])


@pytest.mark.parametrize("name, why", [
    ("nope", "one of"), ("no_such_module_for_test:f", "cannot import"), (":f", "cannot import"),
    ("{module}:missing", "no function"), ("{module}:NOT_A_FUNCTION", "no function"),
])
def test_a_bad_reward_name_is_a_user_error_naming_the_key(user_module, name, why):
    config = tiny.get_config()
    config.reward.name = name.format(module=user_module)
    with pytest.raises(UserError, match=f"reward.name.*{why}"):
        build_reward(config.reward)
    with pytest.raises(UserError, match=f"reward.name.*{why}"):
        check_config(config)


def test_weighted_is_the_weighted_sum_of_its_components(user_module):
    images = np.stack([_solid(COLOURS["red"]), _random_images(1)[0], _solid((0, 0, 0))])
    prompts = ["a red apple", "a blue plum", "a green pear"]
    components = f"colour_match:1.0, jpeg_compressibility:0.01,{user_module}:red_fraction:-2"
    scores = score_images(_reward("weighted", components=components), images, prompts, batch_size=2)
    expected = (_reward("colour_match")(images, prompts) + 0.01 * _reward("jpeg_compressibility")(images, prompts)
                - 2 * _reward(f"{user_module}:red_fraction")(images, prompts))
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert rewards.parse_components(components)[2] == (f"{user_module}:red_fraction", -2.0)


@pytest.mark.parametrize("components", ["", "colour_match", "colour_match:heavy", "weighted:1",
                                        "colour_match:1,nope:1", "colour_match:nan"])
def test_bad_weighted_components_are_user_errors_naming_the_key(components):
    config = tiny.get_config()
    config.reward.name = "weighted"
    config.reward.components = components
    with pytest.raises(UserError, match="reward.components"):
        check_config(config)


def test_check_config_accepts_user_functions_and_checks_aesthetic_weights(user_module, tmp_path):
    config = tiny.get_config()
    for name, components in [(f"{user_module}:red_fraction", ""), ("weighted", f"{user_module}:red_fraction:1")]:
        config.reward.name, config.reward.components = name, components
        check_config(config)
    config.reward.components = "colour_match:1,aesthetic:0.1"
    config.reward.aesthetic_weights = str(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="reward.aesthetic_weights"):
        check_config(config)
    (tmp_path / "missing.pth").write_bytes(b"")
    check_config(config)  # the file exists; whether it loads is the factory's to say


def test_required_models_lists_what_model_rewards_load():
    assert rewards.required_models(_config("colour_match")) == []
    assert rewards.required_models(_config("pickscore", model="m", processor="p")) == [
        ("reward.model", "m"), ("reward.processor", "p")]
    assert rewards.required_models(_config("weighted", model="m", components="colour_match:1,aesthetic:1")) == [
        ("reward.model", "m")]


# ---- a user's reward through the three scripts ----


def test_a_custom_reward_runs_a_stage_through_the_three_scripts(tiny_config):
    from b2diffurl.stage.sample_file import load_samples
    from examples.my_reward import brightness

    flags = ["--config", "config/tiny_random.py", "--config.pretrained.model", tiny_config.pretrained.model,
             "--config.pretrained.build_tiny=False", "--config.save_path", tiny_config.save_path,
             "--config.reward.name", "examples.my_reward:brightness"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for script in ("run_sample.py", "run_select.py", "run_train.py"):
        result = subprocess.run([sys.executable, script, *flags], cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    stage0 = os.path.join(tiny_config.save_path, "tiny_random", "stage0")
    assert os.path.exists(os.path.join(stage0, "COMPLETE"))
    images = torch.load(os.path.join(stage0, "images.pt"), weights_only=True).numpy()
    samples = load_samples(os.path.join(stage0, "sample.pkl"))
    selected = load_samples(os.path.join(stage0, "sample_stage.pkl"), selected=True)
    assert len(selected["prompts"]) > 0
    row = {(g, b): i for i, (g, b) in enumerate(zip(samples["group_id"].tolist(), samples["branch_id"].tolist()))}
    rows = [row[g, b] for g, b in zip(selected["group_id"].tolist(), selected["branch_id"].tolist())]
    np.testing.assert_allclose(selected["rewards"].numpy(), brightness(images[rows], []), rtol=1e-6)
