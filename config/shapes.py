"""config/tiny.py, larger and longer: the shapes-world run that the README's outcome quotes.

K = 8 branches of 8 prompts x 8 batches (512 images a stage), s from 8 to 10 of T = 10 over
10 stages (an early branch point: the layout of a scene is set in the first steps), LoRA rank 8 on the attention and feed-forward layers, lr 1e-3, clip range 0.2.

    bash run_process.sh config/shapes.py
    python -m b2diffurl.analysis.compare --config config/shapes.py     # against the DDPO-style baseline
"""

from config import tiny


def get_config():
    config = tiny.get_config()
    config.exp_name = "shapes"
    config.num_branches = 8
    config.stages.num_stages = 10
    config.stages.split_step_min = 8
    config.lora.target_modules = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
    config.eval.every = 5
    config.train.learning_rate = 1e-3
    config.train.clip_range = 0.2
    return config
