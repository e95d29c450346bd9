"""Branch sampler invariants, and agreement with diffusers' own pipeline."""

import torch
from diffusers import StableDiffusionPipeline

from b2diffurl.method.branch_sampling import latent_shape, sample_branches
from b2diffurl.method.ddim import ddim_step_with_log_prob
from b2diffurl.method.guidance import guided_noise
from b2diffurl.models.pipeline import load_pipeline, lora_merged
from b2diffurl.models.prompts import encode_prompts

PROMPTS = ["a red apple", "a blue plum", "a green pear"]


def _sample(pipe, num_steps, branch_point, num_branches, seed=0, eta=1.0, chunk_size=None):
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    unet = pipe.unet
    shape = latent_shape(unet)
    out = sample_branches(
        unet, pipe.scheduler, embeds, negative, num_steps=num_steps, branch_point=branch_point,
        num_branches=num_branches, eta=eta, guidance_scale=5.0, latent_shape=shape,
        generator=torch.Generator().manual_seed(seed), chunk_size=chunk_size,
    )
    return out, embeds, negative


def test_branches_share_the_prefix_bit_for_bit_and_differ_after(tiny_config):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    num_steps, branch_point, k = 8, 3, 4
    out, _, _ = _sample(pipe, num_steps, branch_point, k)
    s = num_steps - branch_point
    n = len(PROMPTS) * k
    assert out["latents"].shape == (n, s + 1, 4, 8, 8)
    assert out["log_probs"].shape == out["timesteps"].shape == (n, s)
    assert torch.equal(out["group_id"], torch.arange(3).repeat_interleave(k))
    assert torch.equal(out["branch_id"], torch.arange(k).repeat(3))
    assert torch.equal(out["timesteps"][0], pipe.scheduler.timesteps[branch_point:])
    x_b = out["latents"][:, 0].reshape(3, k, -1)
    assert torch.equal(x_b, x_b[:, :1].expand_as(x_b))  # shared prefix, exactly
    assert not torch.equal(x_b[0, 0], x_b[1, 0])  # groups have their own prefix
    after = out["latents"][:, 1:].reshape(3, k, -1)
    for g in range(3):
        for a in range(k):
            for b in range(a + 1, k):
                assert not torch.allclose(after[g, a], after[g, b])
    assert torch.isfinite(out["log_probs"]).all()


def test_chunking_does_not_change_the_trajectories(tiny_config):
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    whole, _, _ = _sample(pipe, 6, 2, 3, chunk_size=None)
    chunked, _, _ = _sample(pipe, 6, 2, 3, chunk_size=4)  # 9 branch latents: chunks 4, 4, 1
    torch.testing.assert_close(chunked["latents"], whole["latents"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked["log_probs"], whole["log_probs"], rtol=1e-5, atol=1e-5)


def _perturbed_lora(pipe, scale=0.05):
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero LoRA, so the adapter is part of the computation
        for param in pipe.unet.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn_like(param))


def _recompute(pipe, out, embeds, negative, rows, j):
    x, t = out["latents"][rows, j], out["timesteps"][rows, j]
    with torch.no_grad():
        eps = guided_noise(pipe.unet, x, t, embeds[rows], negative, 5.0)
    _, log_prob = ddim_step_with_log_prob(pipe.scheduler, eps, t, x, 1.0, prev_sample=out["latents"][rows, j + 1])
    return log_prob


def test_recomputed_log_prob_under_unchanged_weights_gives_ratio_one(tiny_config):
    """What the trainer recomputes from the stored transition equals what the sampler stored."""
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    _perturbed_lora(pipe)
    out, embeds, negative = _sample(pipe, 6, 2, 3)
    embeds = embeds.repeat_interleave(3, dim=0)
    every = torch.arange(9)
    for j in range(4):  # the same batch as sampling: bit for bit, ratio exactly 1
        log_prob = _recompute(pipe, out, embeds, negative, every, j)
        assert torch.equal(torch.exp(log_prob - out["log_probs"][:, j]), torch.ones(9))
    for n in [0, 4, 8]:  # another batch composition: equal up to float32 rounding of the UNet
        for j in range(4):
            log_prob = _recompute(pipe, out, embeds, negative, torch.tensor([n]), j)
            torch.testing.assert_close(torch.exp(log_prob - out["log_probs"][n, j]), torch.ones(1), rtol=0, atol=1e-5)


def test_without_branches_the_sampler_is_the_diffusers_pipeline(tiny_model_dir, tiny_config):
    """K = 1 and b = 0: same noise order as StableDiffusionPipeline, so the same final latents."""
    ours = load_pipeline(tiny_config, torch.device("cpu"), with_lora=False)
    out, _, _ = _sample(ours, 7, 0, 1, seed=3, eta=1.0)
    reference = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    reference.scheduler = ours.scheduler.__class__.from_config(reference.scheduler.config)
    expected = reference(PROMPTS, num_inference_steps=7, guidance_scale=5.0, eta=1.0,
                         generator=torch.Generator().manual_seed(3), output_type="latent").images
    torch.testing.assert_close(out["latents"][:, -1], expected, rtol=1e-4, atol=1e-4)


def test_classic_attention_is_sdpa_up_to_float_rounding(tiny_config):
    sdpa = load_pipeline(tiny_config, torch.device("cpu"), with_lora=False).unet
    tiny_config.unet_attention = "classic"
    classic = load_pipeline(tiny_config, torch.device("cpu"), with_lora=False).unet
    assert type(classic.attn_processors["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"]).__name__ \
        == "AttnProcessor"
    x, text = torch.randn(3, 4, 8, 8), torch.randn(3, 77, sdpa.config.cross_attention_dim)
    with torch.no_grad():
        torch.testing.assert_close(classic(x, 500, text).sample, sdpa(x, 500, text).sample, rtol=1e-5, atol=1e-5)


def test_under_bf16_the_sampled_log_probs_are_what_training_recomputes(tiny_config):
    """The faster CPU candidate (bf16 frozen models, classic attention, the LoRA left
    unmerged while sampling): training's recomputation, in train mode with gradients on and
    one sample a call, gives the stored log-probs back. Merged into bf16 weights, the LoRA's
    rounding moves them, which is why the candidate samples unmerged."""
    tiny_config.mixed_precision, tiny_config.unet_attention = "bf16", "classic"
    pipe = load_pipeline(tiny_config, torch.device("cpu"))
    _perturbed_lora(pipe)
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    def sample(merged):
        with torch.no_grad(), bf16, lora_merged(pipe.unet, merged):
            return sample_branches(pipe.unet, pipe.scheduler, embeds, negative, num_steps=6, branch_point=2,
                                   num_branches=3, eta=1.0, guidance_scale=5.0, latent_shape=latent_shape(pipe.unet),
                                   generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)

    def largest_difference(out):
        pipe.unet.train()
        differences = []
        for n in range(9):
            for j in range(4):
                x, t = out["latents"][n:n + 1, j], out["timesteps"][n:n + 1, j]
                with bf16:
                    eps = guided_noise(pipe.unet, x, t, embeds[n // 3:n // 3 + 1], negative, 5.0)
                assert eps.requires_grad
                _, log_prob = ddim_step_with_log_prob(pipe.scheduler, eps.detach(), t, x, 1.0,
                                                      prev_sample=out["latents"][n:n + 1, j + 1])
                differences.append((log_prob - out["log_probs"][n, j]).abs().item())
        pipe.unet.eval()
        return max(differences)

    assert largest_difference(sample(merged=False)) <= 1e-5
    assert largest_difference(sample(merged=True)) > 1e-3  # what the unmerged sampling avoids
