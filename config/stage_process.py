"""The reference B2-DiffuRL run on Stable Diffusion v1.4, as the authors' release runs it.

T = 20, s from 14 to 20 over N = 100 stages, B = 8 x 32 batches, K = 5 (1,280 images a stage),
thresholds +-0.5, per-prompt statistics over this stage and H = 8 earlier ones, 2 epochs, lr 1e-4,
train batch 2 x gradient accumulation 64 (128 samples an optimiser step, counted across the
epochs), fp16 frozen models, LoRA rank 4, CFG 5.0, CLIP ViT-H-14 reward, prompts of the paper's
template 1 (config/prompt/template1_train.json; held out: template1_test.json). Every value
lives in config/base.py. config/template2_colour_fruit.py and config/template3_object_place.py
are the same run on the paper's other two prompt sets.

    bash run_process.sh config/stage_process.py
"""

from config import base


def get_config():
    config = base.get_config()
    config.exp_name = "stage_process"
    return config


def on_template(template: int, exp_name: str):
    """The reference run on the paper's prompt set `template` (config/prompt/template{n}_*.json)."""
    config = get_config()
    config.exp_name = exp_name
    config.prompt_file = f"config/prompt/template{template}_train.json"
    config.eval.prompt_file = f"config/prompt/template{template}_test.json"
    return config
