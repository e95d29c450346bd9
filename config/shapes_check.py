"""The basic check that the update learns what it is rewarded for: the quickest test of any
change to it.

Four training captions, one pair of objects in each relation ("a red circle to the left of /
to the right of / above / below a green triangle", config/prompt/shapes/check.json): only the
relation words tell them apart. config/shapes_scale.py's update (K = 8, branch point at x_T,
lr 3e-3, clip range 0.2, 128 samples an optimiser step) on 2,048 images a stage, 512 of each
caption; after every stage the LoRA draws 128 images of each caption from the same noise as
the base (512 paired images, 95% interval about +-0.04), so its success on these captions is
measured against the base image by image.

    bash run_process.sh config/shapes_check.py
"""

from config import shapes_scale


def get_config():
    config = shapes_scale.get_config()
    config.exp_name = "shapes_check"
    config.prompt_file = config.eval.prompt_file = "config/prompt/shapes/check.json"
    config.stages.num_stages = 5
    config.sample.num_batches_per_stage = 32  # x 8 prompts x K = 8: 2,048 images a stage
    config.eval.num_images_per_prompt = 128
    config.eval.every = 1
    return config
