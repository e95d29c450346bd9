"""Backward progressive curriculum (b2diffurl/stages.py) against hand-computed split steps."""

import pytest

from b2diffurl.stage.plan import plan_stage, split_step_for_stage
from config import base
from config import tiny_random as tiny


def test_reference_run_endpoints_and_boundaries():
    # N=100, s 14..20: s_k = 14 + floor(7k/100)
    assert split_step_for_stage(0, 100, 14, 20) == 14
    assert split_step_for_stage(14, 100, 14, 20) == 14  # floor(98/100) = 0
    assert split_step_for_stage(15, 100, 14, 20) == 15  # floor(105/100) = 1
    assert split_step_for_stage(85, 100, 14, 20) == 19  # floor(595/100) = 5
    assert split_step_for_stage(86, 100, 14, 20) == 20  # floor(602/100) = 6
    assert split_step_for_stage(99, 100, 14, 20) == 20


def test_reference_run_monotone_and_covers_range():
    values = [split_step_for_stage(k, 100, 14, 20) for k in range(100)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert set(values) == set(range(14, 21))


def test_tiny_config_curriculum():
    stages = tiny.get_config().stages  # N=3, s 4..10: 4 + floor(7k/3)
    got = [split_step_for_stage(k, stages.num_stages, stages.split_step_min, stages.split_step_max)
           for k in range(3)]
    assert got == [4, 6, 8]


@pytest.mark.parametrize("stage", [-1, 100, 101])
def test_out_of_range_stage_raises(stage):
    with pytest.raises(ValueError):
        split_step_for_stage(stage, 100, 14, 20)


@pytest.mark.parametrize("lo,hi", [(20, 14), (0, 5)])
def test_invalid_split_range_raises(lo, hi):
    with pytest.raises(ValueError):
        split_step_for_stage(0, 100, lo, hi)


def test_plan_stage_zero_of_reference_config():
    plan = plan_stage(base.get_config(), 0)
    assert (plan.stage, plan.split_step, plan.branch_point, plan.seed) == (0, 14, 6, 42)
    assert plan.resume_from is None
    assert plan.paths.root == "model/b2diffurl/stage0"


def test_plan_stage_later_stage_resumes_from_previous_checkpoint():
    plan = plan_stage(base.get_config(), 15)
    assert (plan.split_step, plan.branch_point, plan.seed) == (15, 5, 57)
    assert plan.resume_from == "model/b2diffurl/stage14/checkpoints"


def test_plan_stage_defaults_to_config_stage():
    config = tiny.get_config()
    config.stage = 2
    plan = plan_stage(config)
    assert (plan.stage, plan.split_step, plan.branch_point, plan.seed) == (2, 8, 2, 44)
    assert plan.resume_from == "model/tiny_random/stage1/checkpoints"


def test_stage_zero_resumes_from_configured_checkpoint():
    config = base.get_config()
    config.resume_from = "somewhere/lora"
    assert plan_stage(config, 0).resume_from == "somewhere/lora"
    assert plan_stage(config, 1).resume_from == "model/b2diffurl/stage0/checkpoints"


def test_split_step_override_wins_over_curriculum():
    config = base.get_config()
    config.split_step = 3
    for stage in (0, 50, 99):
        plan = plan_stage(config, stage)
        assert (plan.split_step, plan.branch_point) == (3, 17)


@pytest.mark.parametrize("split_step", [21, 100])
def test_split_step_above_num_steps_raises(split_step):
    config = base.get_config()
    config.split_step = split_step
    with pytest.raises(ValueError):
        plan_stage(config, 0)


def test_curriculum_beyond_num_steps_raises():
    config = base.get_config()
    config.stages.split_step_max = 25  # stage 99: 14 + floor(99*12/100) = 25 > T = 20
    assert plan_stage(config, 0).split_step == 14
    with pytest.raises(ValueError):
        plan_stage(config, 99)
