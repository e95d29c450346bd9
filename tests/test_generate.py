"""Generation and evaluation: a LoRA from this project gives the same images in plain diffusers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from b2diffurl.analysis.generate import generate_images
from b2diffurl.models.metrics import (
    mean_pairwise_distance,
    paired_change,
    paired_order,
    pixel_embeddings,
    summarise,
    wilson_interval,
)
from b2diffurl.method.branch_sampling import sub_seed
from b2diffurl.method.update import lora_parameters
from b2diffurl.models.checkpoint import save_checkpoint
from b2diffurl.models.pipeline import load_pipeline

PROMPTS = ["a red apple", "a blue plum"]


def save_random_lora(config, directory: str) -> str:
    """A LoRA checkpoint with non-zero weights for `config`'s model, as a stage leaves it."""
    pipe = load_pipeline(config, torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in lora_parameters(pipe.unet):
            param.add_(0.3 * torch.randn_like(param))
    save_checkpoint(pipe.unet, directory)
    return directory


@pytest.fixture()
def trained_lora(tiny_config, tmp_path):
    return save_random_lora(tiny_config, str(tmp_path / "lora"))


def _diffusers_images(model_dir, lora=None):
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if lora:
        pipe.load_lora_weights(lora)
    out = pipe(PROMPTS, num_images_per_prompt=3, num_inference_steps=8, guidance_scale=5.0, eta=0.0,
               generator=[torch.Generator().manual_seed(sub_seed(7, i, wide=True)) for i in range(3 * len(PROMPTS))],
               output_type="np").images
    return np.round(out * 255).astype(np.int16)


def test_lora_images_equal_plain_diffusers_after_load_lora_weights(tiny_config, tiny_model_dir, trained_lora):
    from b2diffurl.models.checkpoint import load_lora

    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    load_lora(pipe.unet, trained_lora)
    ours, prompts = generate_images(pipe, PROMPTS, 3, num_steps=8, eta=0.0, guidance_scale=5.0, seed=7, batch_size=6)
    assert prompts == [p for p in PROMPTS for _ in range(3)]
    ours = ours.numpy().astype(np.int16)
    theirs = _diffusers_images(tiny_model_dir, trained_lora)
    assert np.abs(ours - theirs).max() <= 1  # equal up to rounding to 8 bits
    base = _diffusers_images(tiny_model_dir)
    assert np.abs(ours - base).mean() > 2  # and the LoRA changes the images


def test_generated_images_do_not_depend_on_the_batch_size(tiny_config):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    settings = dict(num_steps=4, eta=1.0, guidance_scale=5.0, seed=3)
    one_batch, _ = generate_images(pipe, PROMPTS, 2, batch_size=2 * len(PROMPTS), **settings)
    small_batches, _ = generate_images(pipe, PROMPTS, 2, batch_size=3, **settings)
    # Equal up to float rounding, which differs with the batch's blocking on some CPUs (one pixel
    # in 12,000 off by one level was seen); a noise or seeding error moves most pixels by far more.
    difference = (one_batch.int() - small_batches.int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3
    other_seed, _ = generate_images(pipe, PROMPTS, 2, batch_size=3, **{**settings, "seed": 4})
    assert (one_batch.float() - other_seed.float()).abs().mean() > 2
    assert (one_batch[0].float() - one_batch[1].float()).abs().mean() > 2  # same prompt, other noise


def test_generate_command_writes_images_and_a_grid(tiny_config, trained_lora, tmp_path):
    out = tmp_path / "generated"
    result = subprocess.run(
        [sys.executable, "-m", "b2diffurl.analysis.generate", "--config", "config/tiny_random.py",
         "--config.pretrained.model", tiny_config.pretrained.model, "--config.pretrained.build_tiny=False",
         "--lora", trained_lora, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num-images", "3",
         "--eta", "0", "--out", str(out)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(os.listdir(out))
    assert "grid.png" in names and len(names) == 7 and "000_a-red-apple.png" in names
    assert Image.open(out / "000_a-red-apple.png").size == (32, 32)
    assert Image.open(out / "grid.png").size[0] >= 3 * 32


def test_pixel_embedding_distances_are_in_unit_range():
    black = np.zeros((1, 32, 32, 3), np.uint8)
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    emb = pixel_embeddings(np.concatenate([black, white, black]))
    assert emb.shape == (3, 192)
    assert mean_pairwise_distance(emb[:2]) == pytest.approx(1.0)
    assert mean_pairwise_distance(emb) == pytest.approx(2 / 3)  # pairs: 1, 0, 1
    assert np.isnan(mean_pairwise_distance(emb[:1]))


def test_summarise_per_prompt_and_overall():
    prompts = ["a", "a", "b", "b"]
    scores = np.array([1.0, 3.0, 2.0, 2.0])
    embeddings = np.array([[0.0], [1.0], [0.0], [0.0]])
    s = summarise(prompts, scores, embeddings)
    assert s["per_prompt"]["a"] == {"reward_mean": 2.0, "reward_std": 1.0, "diversity": 1.0}
    assert s["per_prompt"]["b"]["diversity"] == 0.0
    assert s["reward_mean"] == 2.0 and s["diversity_mean"] == 0.5 and s["num_images"] == 4
    assert s["reward_ci95"] == pytest.approx(1.96 * np.std(scores, ddof=1) / 2)
    assert s["scores"] == [1.0, 3.0, 2.0, 2.0] and s["prompts"] == prompts  # every image, in order: evaluations pair image by image


def test_paired_change_counts_gains_and_losses_with_mcnemar():
    before = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.5] + [0.0] * 14 + [1.0] * 9)
    after = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0] + [1.0] * 14 + [0.0] * 9)
    # gained: 0, 4, 5 and the 14; lost: 3 and the 9; 0.5 is not a success
    change = paired_change(before, after)
    assert (change["gained"], change["lost"]) == (17, 10)
    assert change["mcnemar_chi2"] == pytest.approx(49 / 27) and not change["significant"]
    strong = paired_change(np.zeros(20), np.r_[np.ones(16), np.zeros(4)])  # 16 gained, 0 lost: chi2 16
    assert strong["mcnemar_chi2"] == 16.0 and strong["significant"]
    assert paired_change(np.ones(3), np.ones(3)) == {"gained": 0, "lost": 0, "mcnemar_chi2": 0.0, "significant": False}


def test_paired_order_counts_the_images_placed_both_times():
    s, r, w, c = "success", "reversed order", "wrong object", "wrong count"
    before = [r, r, r, s, s, r, w, None, s]
    after = [s, s, r, r, s, w, s, None, c]
    # placed both times: the first five; gained the first two, lost the fourth
    order = paired_order(before, after)
    assert (order["images"], order["gained"], order["lost"]) == (5, 2, 1)
    assert order["mcnemar_chi2"] == pytest.approx(1 / 3) and not order["significant"]
    assert paired_order([r] * 10, [s] * 10)["significant"]


def test_success_rates_per_group_with_wilson_intervals():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook example
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    prompts = ["x1", "x1", "y1", "y1", "y2", "y2"]
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 1.0])  # 0.5: not a success
    s = summarise(prompts, scores, np.zeros((6, 1)), group_of=lambda p: p[0])
    assert s["success"]["all"]["success_rate"] == pytest.approx(4 / 6) and s["success"]["all"]["num_images"] == 6
    assert s["success"]["x"]["success_rate"] == 0.5 and s["success"]["y"]["success_rate"] == 0.75
    low, high = wilson_interval(3, 4)
    assert (s["success"]["y"]["ci95_low"], s["success"]["y"]["ci95_high"]) == (low, high)
    assert "success" not in summarise(prompts, scores, np.zeros((6, 1)))
    several = summarise(prompts, scores, np.zeros((6, 1)), group_of=lambda p: (p[0], p[1]))  # two groups each
    assert several["success"]["1"]["success_rate"] == 0.75 and several["success"]["2"]["num_images"] == 2
    assert several["success"]["x"] == s["success"]["x"]


def test_evaluate_command_reports_base_and_lora(tiny_config, trained_lora, tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "b2diffurl.analysis.evaluate", "--config", "config/tiny_random.py",
         "--config.pretrained.model", tiny_config.pretrained.model, "--config.pretrained.build_tiny=False",
         "--config.eval.max_prompts", "3", "--lora", trained_lora, "--num-images", "2", "--out", str(out)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["diversity_embedding"] == "pixels-8x8" and report["lora"] == trained_lora
    for name in ("base", "lora"):
        assert report["results"][name]["num_images"] == 6 and len(report["results"][name]["per_prompt"]) == 3
    assert report["results"]["base"]["reward_mean"] != report["results"]["lora"]["reward_mean"]


def test_evaluate_reports_success_rates_per_group_for_the_shapes_reward(tiny_config, tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "b2diffurl.analysis.evaluate", "--config", "config/tiny_random.py",
         "--config.pretrained.model", tiny_config.pretrained.model, "--config.pretrained.build_tiny=False",
         "--config.reward.name", "shapes", "--prompt-file", "config/prompt/shapes/test.json",
         "--config.eval.max_prompts", "4", "--num-images", "2", "--out", str(out)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    success = json.loads(out.read_text())["results"]["base"]["success"]
    # the first 4 test prompts: 3 single objects with held-out bindings, then a two-object one
    assert success["one object, held-out binding"]["num_images"] == 6
    assert success["two objects, held-out binding"]["num_images"] == 2 and success["all"]["num_images"] == 8
    assert success["two objects, held-out"]["num_images"] == 2  # the headline group pools both held-out kinds
    assert "success" in result.stderr


def _readme_block(marker: str) -> str:
    """The README's python code block that contains `marker`."""
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = f.read().split("```python\n")[1:]
    (block,) = [b.split("```")[0] for b in blocks if marker in b]
    return block


def test_the_shipped_model_runs_the_readme_example_with_plain_diffusers_defaults(tmp_path):
    """A new user's first try: from_pretrained with no dtype, load_lora_weights, a caption (the
    README's block as written, only the LoRA folder and the output file moved to tmp_path)."""
    from config import tiny

    config = tiny.get_config()
    config.pretrained.model = os.path.join(REPO, config.pretrained.model)
    save_random_lora(config, str(tmp_path / "lora"))

    block = _readme_block('from_pretrained("model/shapes-sd")')
    assert 'load_lora_weights("model/tiny/stage2/checkpoints")' in block
    with_lora = block.replace("model/tiny/stage2/checkpoints", str(tmp_path / "lora")).replace(
        "red-circle-above-blue-square.png", str(tmp_path / "lora.png"))
    without = "\n".join(line for line in block.splitlines() if "load_lora_weights" not in line).replace(
        "red-circle-above-blue-square.png", str(tmp_path / "base.png"))
    for script in (with_lora, without):
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
    lora_image, base_image = (np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("lora.png", "base.png"))
    assert lora_image.shape == (32, 32, 3) and base_image.std() > 0
    assert np.abs(lora_image - base_image).mean() > 2  # the LoRA was applied


@pytest.mark.parametrize("mixed_precision", ["no", "fp16", "bf16"])
def test_frozen_models_load_in_the_configured_dtype(tiny_config, mixed_precision):
    tiny_config.mixed_precision = mixed_precision
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    expected = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        frozen = [p.dtype for name, p in module.named_parameters() if "lora_" not in name]
        assert set(frozen) == {expected}, type(module).__name__
    assert {p.dtype for p in lora_parameters(pipe.unet)} == {torch.float32}  # the LoRA trains in fp32


def test_the_summary_pairs_each_evaluation_s_order_with_the_base(tmp_path):
    from b2diffurl.analysis.stage_table import success_lines

    prompts = ["a red circle above a blue square"] * 4 + ["a red circle"]
    s, r, w = "success", "reversed order", "wrong object"

    def result(modes, right, of):
        return {"prompts": prompts, "modes": modes, "outcomes": {"two objects": {
            "order_right": right, "order_of": of, "order_accuracy": right / of}}}

    (tmp_path / "evaluation_base.json").write_text(json.dumps({"results": {"base": result([r, r, s, w, None], 1, 3)}}))
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "evaluation.json").write_text(json.dumps({"results": {"lora": result([s, s, s, r, None], 3, 4)}}))
    lines = success_lines(str(tmp_path))
    assert lines[0] == "order        base: two objects 0.333 (1 of 3 with the stated objects on the stated axis)"
    assert lines[1].startswith("order     stage 1: two objects 0.750 (3 of 4 ")
    assert lines[1].endswith("; vs base 2 gained / 0 lost of 3 (McNemar chi2 2.0)")
