"""The shapes world at the paper's scale of update: the run that tests whether B2-DiffuRL learns.

config/shapes.py with 3,072 images a stage (8 prompts x 48 batches x K = 8), the branch point
at x_T in every stage (s = T = 10: the layout of a scene, where the main failure lies, is set in
the first steps), the release's update of 128 samples an optimiser step counted across 2
epochs (as forward batches of 16 x accumulation 8 rather than the release's 2 x 64: the same
loss, a mean over 128 samples, with 8 times fewer UNet calls, which on a CPU cost their overhead
more than their work; an epoch leaves out up to 15 samples instead of 1), lr 3e-3, clip range
0.2, and 9 stages: 27,648 images sampled (about 70 minutes on 2 CPU cores; the previous world's
runs went to 17 stages, 52,224 images). Held-out evaluation every 3 stages, 4 images per caption
(1,248 held-out two-object images, 95% interval about +-0.025), on the same noise as the base.

    python -m b2diffurl.analysis.compare --config config/shapes_scale.py --out model/scale \
        --methods b2diffurl,b2diffurl_control,ddpo --seeds 0,1 --keep docs/results/shapes_scale
"""

from config import shapes


def get_config():
    config = shapes.get_config()
    config.exp_name = "shapes_scale"
    config.stages.num_stages = 9
    config.stages.split_step_min = config.stages.split_step_max = config.sample.num_steps
    config.sample.num_batches_per_stage = 48  # x 8 prompts x K = 8: 3,072 images a stage
    config.sample.save_png = False  # 52k PNGs help nobody; best_worst.png shows each stage
    config.train.batch_size = 16
    config.train.gradient_accumulation_steps = 8
    config.train.learning_rate = 3e-3
    config.train.clip_range = 0.2
    config.eval.num_images_per_prompt = 4
    config.eval.every = 3
    return config
