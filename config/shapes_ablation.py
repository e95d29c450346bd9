"""The ablation study's B2-DiffuRL: config/shapes_scale.py with backward progressive training.

The trained interval grows backwards over the 9 stages, s = 7, 7, 7, 8, 8, 9, 9, 10, 10 of T = 10
(the release's s = 14 -> 20 of T = 20, scaled), each stage branching K = 8 ways at the interval's
start; otherwise shapes_scale's update (3,072 images a stage, 128 samples an optimiser step over
2 epochs, lr 3e-3, clip 0.2; 27,648 images a run). b2diffurl.analysis.compare derives the
ablations from it: `branch` (s = T every stage), `progressive` (K = 1, the same schedule, every
sample trained), `ddpo` (both removed), each with a shuffled-reward control; `--study ablation`
runs the study's 18 runs in the order docs/shapes-results.md gives:

    python -m b2diffurl.analysis.compare --config config/shapes_ablation.py --out model/ablation \
        --study ablation --keep docs/results/shapes_ablation
"""

from config import shapes_scale


def get_config():
    config = shapes_scale.get_config()
    config.exp_name = "shapes_ablation"
    config.stages.split_step_min = 7
    config.stages.split_step_max = config.sample.num_steps
    return config
