"""DDPO-style baseline in the same tool: no branches, no progression, every sample trained.

K = 1 and s = T for every stage; selection "all" trains every sample with its per-prompt
advantage. Same model, reward and sample budget per stage as config/stage_process.py when
sample.num_batches_per_stage is scaled by K (1,280 images a stage: 160 batches of 8).

    bash run_process.sh config/baseline.py
"""

from config import stage_process


def ddpo_overrides(config) -> dict:
    """The changes (flattened keys) that turn a B2-DiffuRL config into its DDPO-style baseline
    with the same number of sampled images a stage (b2diffurl.analysis.compare uses them too)."""
    steps = config.sample.num_steps
    return {"num_branches": 1, "stages.split_step_min": steps, "stages.split_step_max": steps,
            "sample.num_batches_per_stage": config.sample.num_batches_per_stage * config.num_branches,
            "eval.selection": "all"}


def get_config():
    config = stage_process.get_config()
    config.exp_name = "baseline"
    config.update_from_flattened_dict(ddpo_overrides(config))
    return config
