"""The trainer moves the policy the way the advantages say, and the LoRA checkpoint round-trips."""

import os

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline

from b2diffurl.errors import NonFiniteWeightsError
from b2diffurl.method.branch_sampling import sample_branches
from b2diffurl.method.ddim import ddim_std, ddim_step_with_log_prob
from b2diffurl.method.guidance import guided_noise
from b2diffurl.method.loss import step_weights
from b2diffurl.method.update import TrainSettings, lora_parameters, process_share, train_on_samples, update_schedule
from b2diffurl.models.checkpoint import load_lora, save_checkpoint
from b2diffurl.models.pipeline import load_pipeline, lora_merged
from b2diffurl.models.prompts import encode_prompts
from b2diffurl.stage.sample_file import make_record, subset


def _selected_record(pipe, advantages):
    """Two groups x 2 branches, with the given advantage per branch sample."""
    prompts = ["a red apple", "a blue plum"]
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    out = sample_branches(pipe.unet, pipe.scheduler, embeds, negative, num_steps=6, branch_point=3, num_branches=2,
                          eta=1.0, guidance_scale=5.0, latent_shape=(4, 8, 8),
                          generator=torch.Generator().manual_seed(0))
    record = make_record([out], [prompts[g] for g in out["group_id"].tolist()], meta={})
    adv = torch.tensor(advantages, dtype=torch.float32)
    return subset(record, torch.arange(4), advantages=adv, rewards=adv)


def _embeds(pipe, record):
    """Each sample's prompt embedding [M, L, D] and the empty prompt's [1, L, D], as sampling made them."""
    return (encode_prompts(pipe.tokenizer, pipe.text_encoder, record["prompts"]),
            encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]))


def _log_probs(pipe, record):
    rows = torch.arange(len(record["prompts"]))
    embeds, negative = _embeds(pipe, record)
    out = []
    with torch.no_grad():
        for j in range(record["log_probs"].shape[1]):
            x, t = record["latents"][:, j], record["timesteps"][:, j]
            eps = guided_noise(pipe.unet, x, t, embeds[rows], negative, 5.0)
            out.append(ddim_step_with_log_prob(pipe.scheduler, eps, t, x, 1.0, prev_sample=record["latents"][:, j + 1])[1])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("step_weighting", ["uniform", "std"])
def test_training_raises_log_prob_of_good_and_lowers_it_for_bad_samples(tiny_config, step_weighting):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    record = _selected_record(pipe, [1.0, -1.0, 1.0, -1.0])
    before = record["log_probs"].clone()
    settings = TrainSettings(num_steps=6, eta=1.0, guidance_scale=5.0, batch_size=2, gradient_accumulation_steps=1,
                             num_epochs=3, clip_range=1.0, adv_clip_max=5.0, pos_weight=1.0, neg_weight=1.0,
                             max_grad_norm=1.0, step_weighting=step_weighting)
    params = lora_parameters(pipe.unet)
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    seen = []
    totals = train_on_samples(pipe.unet, pipe.scheduler, record, *_embeds(pipe, record), settings,
                              Accelerator(cpu=True), optimizer, torch.Generator().manual_seed(0), seen.append)
    assert totals == {"optimizer_steps": 6, "skipped_steps": 0, "samples_used": 12, "samples_left_over": 0}
    assert len(seen) == 6
    assert seen[0]["approx_kl"] < 1e-10  # first step: the policy is still π_old
    assert all(np.isfinite(s["grad_norm"]) and s["grad_norm"] > 0 for s in seen)
    # the change of the objective's step mean: each step weighted as the loss weights it
    weights = step_weights(ddim_std(pipe.scheduler, record["timesteps"], 1.0), step_weighting)
    change = ((_log_probs(pipe, record) - before) * weights).mean(dim=1)
    assert (change[[0, 2]] > 0).all() and (change[[1, 3]] < 0).all(), change


def test_lora_checkpoint_loads_into_a_plain_diffusers_pipeline(tiny_config, tiny_model_dir, tmp_path):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    with torch.no_grad():
        for param in lora_parameters(pipe.unet):
            param.add_(0.1 * torch.randn_like(param))
    previous = os.umask(0o022)
    try:
        save_checkpoint(pipe.unet, str(tmp_path / "ckpt"))
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "ckpt").st_mode & 0o777 == 0o755  # readable by a teammate, as mkdir makes it
    assert {name: oct(os.stat(tmp_path / "ckpt" / name).st_mode & 0o777) for name in os.listdir(tmp_path / "ckpt")} == {
        "pytorch_lora_weights.safetensors": "0o644", "training_state.json": "0o644"}  # as open makes them
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=text).sample
        plain = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
        base = plain.unet(x, t, encoder_hidden_states=text).sample
        plain.load_lora_weights(str(tmp_path / "ckpt"))
        torch.testing.assert_close(plain.unet(x, t, encoder_hidden_states=text).sample, expected)
        assert not torch.allclose(base, expected, atol=1e-4)
        again = load_pipeline(tiny_config, torch.device("cpu"))
        load_lora(again.unet, str(tmp_path / "ckpt"))
        torch.testing.assert_close(again.unet(x, t, encoder_hidden_states=text).sample, expected)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tiny_config, tmp_path):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    with torch.no_grad():
        lora_parameters(pipe.unet)[0][0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="non-finite"):
        save_checkpoint(pipe.unet, str(tmp_path / "ckpt"))
    assert not (tmp_path / "ckpt").exists() and list(tmp_path.iterdir()) == []


def test_a_non_finite_loss_skips_the_optimiser_step_and_is_counted(tiny_config):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    record = _selected_record(pipe, [1.0, float("nan"), 1.0, -1.0])  # one NaN advantage poisons its batch
    settings = TrainSettings(num_steps=6, eta=1.0, guidance_scale=5.0, batch_size=4, gradient_accumulation_steps=1,
                             num_epochs=2, clip_range=0.1, adv_clip_max=5.0, pos_weight=1.0, neg_weight=1.0,
                             max_grad_norm=1.0)
    params = lora_parameters(pipe.unet)
    before = [p.detach().clone() for p in params]
    seen = []
    totals = train_on_samples(pipe.unet, pipe.scheduler, record, *_embeds(pipe, record), settings,
                              Accelerator(cpu=True), torch.optim.AdamW(params, lr=1e-3), torch.Generator().manual_seed(0), seen.append)
    assert (totals["optimizer_steps"], totals["skipped_steps"]) == (2, 2) and all(s["skipped"] for s in seen)
    assert all(torch.equal(a, b) for a, b in zip(before, params))  # no NaN reached the weights


def test_gradient_checkpointing_recomputes_the_unet_and_gives_the_same_gradients(tiny_config):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    record = _selected_record(pipe, [1.0, -1.0, 1.0, -1.0])
    embeds, negative = _embeds(pipe, record)
    calls = []
    resnet = pipe.unet.up_blocks[-1].resnets[0]  # a checkpointed block downstream of LoRA layers
    forward = resnet.forward
    resnet.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)  # hooks skip recomputation

    def gradients():
        calls.clear()
        pipe.unet.train()
        x, t = record["latents"][:, 0], record["timesteps"][:, 0]
        guided_noise(pipe.unet, x, t, embeds, negative, 5.0).square().mean().backward()
        grads = [p.grad.clone() for p in lora_parameters(pipe.unet)]
        pipe.unet.zero_grad(set_to_none=True)
        return grads, len(calls)

    plain, plain_calls = gradients()
    pipe.unet.enable_gradient_checkpointing()
    checkpointed, checkpointed_calls = gradients()
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the block ran again in the backward pass
    assert any(g.abs().max() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_a_merged_lora_computes_the_same_unet_and_is_unmerged_bit_for_bit(tiny_config):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    with torch.no_grad():
        for param in lora_parameters(pipe.unet):
            param.add_(0.05 * torch.randn_like(param))
    before = {name: value.clone() for name, value in pipe.unet.state_dict().items()}
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([500, 300]), torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=text).sample
        base = pipe.unet.up_blocks[-1].attentions[0].transformer_blocks[0].attn1.to_q.get_base_layer().weight
        original = base.clone()
        with lora_merged(pipe.unet):
            assert not torch.equal(base, original)  # the LoRA is in the weights now
            merged = pipe.unet(x, t, encoder_hidden_states=text).sample
        after = pipe.unet(x, t, encoder_hidden_states=text).sample
        pipe.unet.disable_adapters()
        without_lora = pipe.unet(x, t, encoder_hidden_states=text).sample
        pipe.unet.enable_adapters()
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)
    assert (merged - without_lora).abs().max() > 100 * (merged - expected).abs().max()
    assert torch.equal(after, expected)
    assert all(torch.equal(value, before[name]) for name, value in pipe.unet.state_dict().items())


def release_optimizer_steps(num_samples: int, split_step: int, batch_size: int = 2, accumulation: int = 64,
                            num_epochs: int = 2) -> int:
    """The optimiser steps of the release's run_train.py, restated: its loop runs
    range(0, M // 2 * 2, batch_size) batches an epoch and `split_step` micro-steps a batch under
    accelerate's accumulate(), whose counter runs over the whole stage and syncs (steps) when it
    reaches a multiple of accumulation * split_step."""
    counter = steps = 0
    for _ in range(num_epochs):
        for _ in range(0, num_samples // 2 * 2, batch_size):
            for _ in range(split_step):
                counter += 1
                steps += counter % (accumulation * split_step) == 0
    return steps


@pytest.mark.parametrize("num_samples", [0, 1, 40, 63, 64, 65, 100, 127, 128, 129, 300, 511, 512])
def test_reference_schedule_makes_the_releases_optimiser_steps(num_samples):
    from config import stage_process

    t = stage_process.get_config().train
    assert (t.batch_size, t.gradient_accumulation_steps, t.num_epochs) == (2, 64, 2)
    schedule = update_schedule(num_samples, 14, t.batch_size, t.gradient_accumulation_steps, t.num_epochs,
                               torch.Generator().manual_seed(0))
    assert len(schedule.steps) == release_optimizer_steps(num_samples, 14)
    assert {100: 1, 300: 4, 40: 0}.get(num_samples, len(schedule.steps)) == len(schedule.steps)  # the figures quoted in the README
    assert all(len(group) == 64 and all(len(b.rows) == 2 for b in group) for group in schedule.steps)
    assert schedule.samples_used == 128 * len(schedule.steps)
    assert schedule.samples_used + schedule.samples_left_over == 2 * num_samples


def test_reference_schedule_step_count_equals_the_releases_for_every_m_up_to_600():
    from config import stage_process

    t = stage_process.get_config().train
    for num_samples in range(601):
        schedule = update_schedule(num_samples, 1, t.batch_size, t.gradient_accumulation_steps, t.num_epochs,
                                   torch.Generator().manual_seed(num_samples))
        assert len(schedule.steps) == release_optimizer_steps(num_samples, 1), num_samples


def test_update_schedule_runs_across_epochs_and_drops_only_the_remainder():
    # M = 7, batch 2, accumulation 4, 3 epochs: 3 full batches an epoch, 9 in the stream, 2 steps
    schedule = update_schedule(7, 5, 2, 4, 3, torch.Generator().manual_seed(1))
    assert len(schedule.steps) == 2 and (schedule.samples_used, schedule.samples_left_over) == (16, 5)
    epochs = [[b.epoch for b in group] for group in schedule.steps]
    assert epochs == [[0, 0, 0, 1], [1, 1, 2, 2]]  # the second step spans epochs 1 and 2
    for epoch in range(2):  # within an epoch, batches hold distinct samples
        rows = torch.cat([b.rows for group in schedule.steps for b in group if b.epoch == epoch])
        assert len(set(rows.tolist())) == len(rows) == 6
    for group in schedule.steps:
        for b in group:  # every sample's step order is a permutation of its s steps
            assert (b.step_order.sort(dim=1).values == torch.arange(5)).all()


def test_process_share_pads_short_shares_with_weightless_passes():
    group = ["b0", "b1", "b2", "b3", "b4"]
    shares = [process_share(group, rank, 2) for rank in range(2)]
    assert shares[0] == [("b0", True), ("b2", True), ("b4", True)]
    assert shares[1] == [("b1", True), ("b3", True), ("b0", False)]
    assert process_share(group, 0, 1) == [(b, True) for b in group]
    real = sorted(b for share in shares for b, is_real in share if is_real)
    assert real == group  # every batch exactly once


def test_fp16_loss_scale_is_carried_from_stage_to_stage(tiny_config, monkeypatch):
    """Under fp16 the grad scaler's state is saved with the checkpoint and restored by the next
    stage (the release carries it in accelerate's state). accelerate makes a scaler only on a
    GPU; here a CPU GradScaler stands in, growing every step so that its scale moves."""
    from b2diffurl.logs import read_run_metrics
    from b2diffurl.stage import sample, select, train
    from b2diffurl.stage.context import make_accelerator

    def with_scaler(config):
        accelerator = make_accelerator(config)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        return accelerator

    for module in (sample, select, train):
        monkeypatch.setattr(module, "make_accelerator", with_scaler)
    tiny_config.train.batch_size, tiny_config.train.gradient_accumulation_steps = 1, 1
    for stage in (0, 1):
        tiny_config.stage = stage
        for step in (sample.sample_stage, select.select_stage, train.train_stage):
            step(tiny_config)
    records = read_run_metrics(f"{tiny_config.save_path}/{tiny_config.exp_name}")
    first, second = [r for r in records if r["event"] == "train"]
    assert first["optimizer_steps"] > 0 and second["optimizer_steps"] > 0
    assert first["loss_scale_start"] == 2.0**10 and first["loss_scale_end"] > 2.0**10
    assert second["loss_scale_start"] == first["loss_scale_end"]  # not a fresh 2 ** 10
    steps = [r for r in records if r["event"] == "optimizer_step" and r["stage"] == 1]
    assert steps[0]["loss_scale"] == first["loss_scale_end"]


@pytest.mark.parametrize("fresh", [False, True])
def test_adam_state_is_carried_from_stage_to_stage_unless_fresh_optimizer(tiny_config, fresh):
    """By default stage k resumes stage k-1's AdamW state, as the release's accelerate state
    does: its step count runs on. train.fresh_optimizer starts each stage from a new state."""
    from b2diffurl.logs import read_run_metrics
    from b2diffurl.stage import sample, select, train

    tiny_config.train.batch_size, tiny_config.train.gradient_accumulation_steps = 1, 1
    tiny_config.train.fresh_optimizer = fresh
    for stage in (0, 1):
        tiny_config.stage = stage
        for step in (sample.sample_stage, select.select_stage, train.train_stage):
            step(tiny_config)
    run = f"{tiny_config.save_path}/{tiny_config.exp_name}"
    first, second = [r["optimizer_steps"] for r in read_run_metrics(run) if r["event"] == "train"]
    assert first > 0 and second > 0
    state = torch.load(f"{run}/stage1/checkpoints/optimizer.pt", weights_only=True)["state"]
    adam_steps = {int(s["step"]) for s in state.values()}
    assert adam_steps == {second if fresh else first + second}


@pytest.mark.parametrize("steps_per_forward", [2, 3])
def test_several_steps_per_forward_make_the_same_update(tiny_config, steps_per_forward):
    """train.steps_per_forward puts several steps of each sample into one UNet call: the same
    optimiser steps, losses, KL and grad norms (relative 1e-4) and LoRA after two steps
    (1e-6) as one step a call: float rounding only (fp32 here)."""
    def run(steps: int):
        pipe = load_pipeline(tiny_config, torch.device("cpu"))
        record = _selected_record(pipe, [1.0, -1.0, 0.5, -2.0])
        settings = TrainSettings(num_steps=6, eta=1.0, guidance_scale=5.0, batch_size=2, gradient_accumulation_steps=2,
                                 num_epochs=2, clip_range=0.2, adv_clip_max=5.0, pos_weight=1.0, neg_weight=1.0,
                                 max_grad_norm=1.0, steps_per_forward=steps)
        # SGD: the weights move by the gradient itself (Adam would blow the rounding of
        # near-zero gradient elements up to a full step of the learning rate)
        optimizer = torch.optim.SGD(lora_parameters(pipe.unet), lr=1.0)
        seen = []
        train_on_samples(pipe.unet, pipe.scheduler, record, *_embeds(pipe, record), settings, Accelerator(cpu=True),
                         optimizer, torch.Generator().manual_seed(0), seen.append)
        return [p.detach().clone() for p in lora_parameters(pipe.unet)], seen

    reference, reference_steps = run(1)
    batched, batched_steps = run(steps_per_forward)
    assert len(batched_steps) == len(reference_steps) == 2
    for a, b in zip(reference_steps, batched_steps):
        for key in ("loss", "approx_kl", "clipfrac", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    assert reference_steps[1]["approx_kl"] > 0  # the second step sees a moved policy
    for a, b in zip(reference, batched):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert any((a != 0).any() for a in reference)
