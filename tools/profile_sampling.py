"""Where a stage's sampling time goes, piece by piece, beside a plain diffusers pipeline.

    python tools/profile_sampling.py MODEL_DIR [--fp16] [--branches K] [--quick]

B = 8 prompts, K branches, T = 20, s = 14, CFG 5. Prints the median seconds (3 runs after a
warm-up) of: UNet calls at the trunk's and the branches' batch sizes, with the LoRA policy
under autocast and with the plain UNet; the branch sampler with each; the VAE decode in chunks
of 8 and in one; the prompt encoding; writing the sample and image files; and the whole plain
pipeline. Also the largest |log-prob| difference between sampling and training's recomputation,
sampling with the LoRA merged into the weights and unmerged (a LoRA with random B stands in
for a trained one). --quick: only the samplers, the log-prob check and the pipeline. python tools/bench.py gives the end-to-end ratios; this says what they are made of.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from b2diffurl.files import atomic_torch_save
from b2diffurl.method.branch_sampling import decode_images, latent_shape, sample_branches
from b2diffurl.method.ddim import ddim_step_with_log_prob
from b2diffurl.method.guidance import guided_noise
from b2diffurl.models.pipeline import load_pipeline, lora_merged
from b2diffurl.models.prompts import encode_prompts
from b2diffurl.stage.context import make_accelerator
from config import tiny

B, T, S = 8, 20, 14
PROMPTS = ["a red apple", "a blue plum", "a green pear", "a yellow lemon", "a purple grape", "a black tomato",
           "a white onion", "an orange carrot"]


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    model = sys.argv[1]
    k = int(sys.argv[sys.argv.index("--branches") + 1]) if "--branches" in sys.argv else 5
    config = tiny.get_config()
    config.pretrained.model, config.pretrained.build_tiny = model, False
    config.mixed_precision = "fp16" if "--fp16" in sys.argv else "no"
    config.report_to = "none"
    accelerator = make_accelerator(config)
    device = accelerator.device
    pipe = load_pipeline(config, device)
    with torch.no_grad():  # a LoRA as after some training (a fresh one has B = 0 and merges exactly)
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.01 * torch.randn_like(param))
    plain = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, dtype=pipe.unet.dtype).to(device)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    unet = pipe.unet
    c, h, _ = latent_shape(unet)
    dtype = unet.dtype
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    figures = {}
    quick = "--quick" in sys.argv
    with torch.no_grad():
        for rows in () if quick else (2 * B, 2 * B * k):
            x = torch.randn(rows, c, h, h, device=device, dtype=dtype)
            text = torch.randn(rows, 77, embeds.shape[-1], device=device, dtype=dtype)
            t = torch.full((rows,), 500, device=device)
            figures[f"unet_plain_{rows}_rows"] = timed(lambda: plain.unet(x, t, encoder_hidden_states=text))
            with accelerator.autocast():
                figures[f"unet_lora_autocast_{rows}_rows"] = timed(lambda: unet(x, t, encoder_hidden_states=text))

        def sampler(network, autocast: bool):
            def run():
                with accelerator.autocast() if autocast else torch.autocast(device.type, enabled=False):
                    return sample_branches(network, pipe.scheduler, embeds, negative, num_steps=T, branch_point=T - S,
                                           num_branches=k, eta=1.0, guidance_scale=5.0, latent_shape=latent_shape(unet),
                                           generator=torch.Generator().manual_seed(0), chunk_size=B * k, dtype=dtype)
            return run

        figures["sampler_lora_autocast"] = timed(sampler(unet, True))
        with lora_merged(unet):
            figures["sampler_lora_merged"] = timed(sampler(unet, True))
        if not quick:
            figures["sampler_plain_unet"] = timed(sampler(plain.unet, False))

        # How far sampled log-probs are from those training recomputes (unmerged LoRA, batches
        # of one sample), sampling with the LoRA unmerged and merged.
        def recompute_error(out, rows=8) -> float:
            errors = []
            group_embeds = embeds.repeat_interleave(k, dim=0)
            for row in range(rows):
                for j in range(S):
                    x, t = out["latents"][row : row + 1, j], out["timesteps"][row : row + 1, j]
                    with accelerator.autocast():
                        eps = guided_noise(unet, x, t, group_embeds[row : row + 1], negative, 5.0)
                        _, log_prob = ddim_step_with_log_prob(pipe.scheduler, eps, t, x, 1.0,
                                                              prev_sample=out["latents"][row : row + 1, j + 1])
                    errors.append((log_prob - out["log_probs"][row, j]).abs().item())
            return max(errors)

        with lora_merged(unet):
            merged_out = sampler(unet, True)()
        figures["logprob_error_merged"] = recompute_error(merged_out)
        out = sampler(unet, True)()
        figures["logprob_error_unmerged"] = recompute_error(out)
        if not quick:
            final = out["latents"][:, -1]
            for chunk in (8, B * k):
                figures[f"decode_chunk_{chunk}"] = timed(lambda: decode_images(pipe.vae, final, chunk))
            figures["encode_prompts"] = timed(lambda: encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS + [""]))
            record = {key: value.cpu() for key, value in out.items()}
            images = decode_images(pipe.vae, final, 8)
            with tempfile.TemporaryDirectory() as tmp:
                figures["save_files_fsync"] = timed(lambda: (atomic_torch_save(record, os.path.join(tmp, "s.pkl")),
                                                             atomic_torch_save(images, os.path.join(tmp, "i.pt"))))
                figures["save_files_no_fsync"] = timed(lambda: (torch.save(record, os.path.join(tmp, "s2.pkl")),
                                                                torch.save(images, os.path.join(tmp, "i2.pt"))))
        figures["diffusers_pipeline"] = timed(lambda: plain(
            [p for p in PROMPTS for _ in range(k)], num_inference_steps=T, guidance_scale=5.0, eta=1.0,
            generator=torch.Generator().manual_seed(0), output_type="np"))
    for name, value in figures.items():
        print(f"{name}: {value:.3g}" if name.startswith("logprob") else f"{name}: {value:.4f} s")


if __name__ == "__main__":
    main()
