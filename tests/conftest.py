"""Shared fixtures: the tiny offline pipeline, built once per test session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
for _name in ("B2DIFFURL_JOB_ID", "SLURM_JOB_ID", "MACHINE_RANK"):  # run inside a Slurm job, the tests still
    os.environ.pop(_name, None)  # see one run per folder (b2diffurl.stage.lock) and one machine

if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers share the cores: one thread each, and the
    os.environ["OMP_NUM_THREADS"] = "1"  # scripts they start inherit it (same arithmetic in and out)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny SD-architecture pipeline saved as a diffusers folder."""
    from b2diffurl.world.random_model import save_tiny_pipeline

    return save_tiny_pipeline(str(tmp_path_factory.mktemp("models") / "tiny-sd"))


def make_tiny_config(model_dir: str, folder) -> "ml_collections.ConfigDict":
    """config/tiny_random.py pointing at `model_dir`, its runs and logs below `folder`."""
    from config import tiny_random as tiny

    config = tiny.get_config()
    config.pretrained.model = model_dir
    config.pretrained.build_tiny = False
    config.save_path = os.path.join(folder, "runs")
    config.log_dir = os.path.join(folder, "log")
    return config


def run_two_stages(config, folder: str) -> tuple[str, str]:
    """Stages 0 and 1 of `config` in this process (the library code the three scripts call).
    Returns (a copy of the run folder as stage 0 left it, in `folder`; the run folder)."""
    import shutil

    from b2diffurl.stage.sample import sample_stage
    from b2diffurl.stage.select import select_stage
    from b2diffurl.stage.train import train_stage

    config.stages.num_stages = 2
    run = os.path.join(config.save_path, config.exp_name)
    after_stage0 = os.path.join(folder, "after_stage0")
    for stage in range(2):
        config.stage = stage
        sample_stage(config)
        select_stage(config)
        train_stage(config)
        if stage == 0:
            shutil.copytree(run, after_stage0)
    return after_stage0, run


@pytest.fixture()
def tiny_config(tiny_model_dir, tmp_path):
    """config/tiny_random.py pointing at the session's tiny model and a fresh run folder."""
    return make_tiny_config(tiny_model_dir, str(tmp_path))
