"""The reference B2-DiffuRL run on Stable Diffusion v1.4 (DESIGN.md section 3).

T = 20, s from 14 to 20 over N = 100 stages, B = 8 x 32 batches, K = 5, 2 epochs, lr 1e-4,
gradient accumulation 64, H = 8, fp16, LoRA rank 4, CFG 5.0, CLIP ViT-H-14 reward.

    bash run_process.sh config/stage_process.py
"""

from config import base


def get_config():
    config = base.get_config()
    config.exp_name = "stage_process"
    return config
