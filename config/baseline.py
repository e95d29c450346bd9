"""DDPO-style baseline in the same tool: no branches, no progression, every sample trained.

K = 1 and s = T for every stage; selection "all" trains every sample with its per-prompt
advantage. Same model, reward, sampling batch and sample budget per stage as
config/stage_process.py: sample.batch_size is scaled by K, so that every sampling batch holds as
many images as a B2-DiffuRL batch of B prompts x K branches (1,280 images a stage: 32 batches of 40).

    bash run_process.sh config/baseline.py
"""

from config import stage_process


def without_branches(config) -> dict:
    """K = 1, every sample trained with its per-prompt advantage, B x K prompts a sampling batch:
    the same images a stage, in batches of the same size (flattened keys)."""
    return {"num_branches": 1, "sample.batch_size": config.sample.batch_size * config.num_branches,
            "eval.selection": "all"}


def branch_at_x_T(config) -> dict:
    """s = T in every stage: the whole trajectory trained, branches (if any) forked at x_T."""
    steps = config.sample.num_steps
    return {"stages.split_step_min": steps, "stages.split_step_max": steps}


def ddpo_overrides(config) -> dict:
    """The changes (flattened keys) that turn a B2-DiffuRL config into its DDPO-style baseline
    with the same number of sampled images a stage (b2diffurl.analysis.compare uses them too)."""
    return {**without_branches(config), **branch_at_x_T(config)}


def get_config():
    config = stage_process.get_config()
    config.exp_name = "baseline"
    config.update_from_flattened_dict(ddpo_overrides(config))
    return config
