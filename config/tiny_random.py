"""The machinery on a tiny random-weight SD-architecture model, offline on a CPU, in a minute.

The tests run on this preset: a random model has nothing to align, so it shows branching,
selection, training and resuming, not learning (config/tiny.py is the demo that learns).

The model is built by b2diffurl.world.random_model into model/tiny-sd on first use. The reward,
colour_match, needs no weights: how close the image's pixels are to the colour the prompt
names. T = 10, s from 4 to 8 over 3 stages, B = 4 x 2 batches, K = 4: 32 images a stage.

    bash run_process.sh config/tiny_random.py
"""

from config import base


def get_config():
    config = base.get_config()
    config.exp_name = "tiny_random"
    config.keep_sample_files = "all"  # a few MB: the tests read every stage's
    config.num_branches = 4
    config.mixed_precision = "no"
    config.prompt_file = "config/prompt/extra/colour_fruit_train.json"
    config.stages.num_stages = 3
    config.stages.split_step_min = 4
    config.stages.split_step_max = 10
    config.pretrained.model = "model/tiny-sd"
    config.pretrained.build_tiny = True
    config.sample.num_steps = 10
    config.sample.batch_size = 4
    config.sample.num_batches_per_stage = 2
    config.sample.unet_chunk_size = 16
    config.reward.name = "colour_match"
    config.reward.model = ""
    config.eval.history_cnt = 2
    config.eval.prompt_file = "config/prompt/extra/colour_fruit_test.json"
    config.eval.num_images_per_prompt = 4
    config.eval.max_prompts = 16
    config.eval.every = 2
    config.train.batch_size = 4
    config.train.gradient_accumulation_steps = 2
    config.train.learning_rate = 3e-4
    return config
