"""B2-DiffuRL in the shapes world, offline on a CPU in a few minutes: the quickstart.

The model (model/shapes-sd, made by b2diffurl.lab.pretrain and shipped in the repository)
draws coloured circles, squares and triangles from captions such as "a blue square to the
left of a green triangle", and follows two-object captions only part of the time. The reward,
`shapes`, reads the objects back from the pixels: 1.0 when colour, shape, relation and count
all hold, else 0.0. Held-out evaluation is on captions never trained on (held-out colour-shape
bindings and held-out pairs), one image each; the run ends by printing base and trained
held-out success. config/shapes.py is the same run, longer.

    bash run_process.sh config/tiny.py
"""

from config import base


def get_config():
    config = base.get_config()
    config.exp_name = "tiny"
    # fp32: bf16 with classic attention (the faster candidate of docs/performance.md, "The lab's
    # CPU settings") learned less in the one check run that compared them, so it is not the default.
    config.mixed_precision = "no"
    config.prompt_file = "config/prompt/shapes/train.json"
    config.num_branches = 4
    config.stages.num_stages = 3
    config.stages.split_step_min = 6
    config.stages.split_step_max = 10
    config.pretrained.model = "model/shapes-sd"
    config.lora.rank = 8
    config.lora.alpha = 8
    config.sample.num_steps = 10
    config.sample.guidance_scale = 5.0
    config.sample.batch_size = 8
    config.sample.num_batches_per_stage = 8  # 64 groups x K = 256 images a stage
    config.sample.unet_chunk_size = 64
    config.reward.name = "shapes"
    config.reward.model = ""
    config.reward.batch_size = 256
    config.eval.history_cnt = 4
    config.eval.prompt_file = "config/prompt/shapes/test.json"
    config.eval.num_images_per_prompt = 1  # 315 images, 312 of them held-out two-object captions
    config.eval.every = 3
    config.train.batch_size = 8
    config.train.gradient_accumulation_steps = 2
    config.train.learning_rate = 5e-4
    return config
