"""Build a random-weight pipeline with the Stable Diffusion v1.4 architecture, for GPU checks.

Same UNet, VAE and text-encoder shapes as SD v1.4 (860M-parameter UNet, 512x512 images,
64x64x4 latents), random weights, the tiny project tokenizer, saved in fp16 as a diffusers
folder. Timings and memory on it are those of SD v1.4; images are noise.

    python tools/build_sd_random.py /tmp/sd-random
"""

import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from b2diffurl.world.random_model import assemble_pipeline, make_tokenizer


def build(directory: str) -> None:
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower, as SD v1.4 uses
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
    )
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
    )
    pipe = assemble_pipeline(tokenizer, text_encoder, vae, unet).to(torch.float16)
    pipe.save_pretrained(directory)
    print(f"saved to {directory}: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    build(sys.argv[1])
