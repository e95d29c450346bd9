"""DDPO-style baseline in the same tool: no branches, no progression, every sample trained.

K = 1 and s = T for every stage; selection "all" trains every sample with its per-prompt
advantage. Same model, reward and sample budget per stage as config/stage_process.py when
sample.num_batches_per_stage is scaled by K (1,280 images a stage: 160 batches of 8).

    bash run_process.sh config/baseline.py
"""

from config import stage_process


def get_config():
    config = stage_process.get_config()
    config.exp_name = "baseline"
    config.num_branches = 1
    config.stages.split_step_min = config.sample.num_steps
    config.stages.split_step_max = config.sample.num_steps
    config.sample.num_batches_per_stage *= 5  # the branch run's K, so the image budget matches
    config.eval.selection = "all"
    return config
