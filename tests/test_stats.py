"""Per-prompt score history and normalisation (b2diffurl/stats.py) on hand-computed numbers."""

import copy
import json

import numpy as np
import pytest

from b2diffurl.stats import new_history, normalise, record_stage

R = 1.224744871391589  # 1 / sqrt(2/3): population-std advantage of 1 and 3 among [1, 2, 3]


def test_single_stage_population_std():
    h = record_stage(new_history(8), 0, ["a", "a", "a"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(normalise(h, ["a", "a", "a"], [1.0, 2.0, 3.0]), [-R, 0.0, R], rtol=1e-6)


def test_pooling_window_of_h_stages():
    h = record_stage(new_history(2), 0, ["a"] * 3, [1.0, 2.0, 3.0])
    h = record_stage(h, 1, ["a"], [5.0])
    # pool [1, 2, 3, 5]: mean 2.75, var 8.75/4 = 2.1875, std 1.479019946
    np.testing.assert_allclose(normalise(h, ["a"], [5.0]), [2.25 / 1.479019946], rtol=1e-6)
    h = record_stage(h, 2, ["a", "a"], [7.0, 9.0])
    # stage 0 dropped: pool [5, 7, 9], mean 7, std sqrt(8/3)
    np.testing.assert_allclose(normalise(h, ["a", "a"], [7.0, 9.0]), [0.0, R], rtol=1e-6, atol=1e-9)


def test_redone_stage_replaces_its_scores():
    h = record_stage(new_history(8), 0, ["a", "a"], [10.0, 20.0])
    h = record_stage(h, 0, ["a"] * 3, [1.0, 2.0, 3.0])  # stage 0 redone
    np.testing.assert_allclose(normalise(h, ["a"] * 3, [1.0, 2.0, 3.0]), [-R, 0.0, R], rtol=1e-6)


def test_redone_stage_keeps_earlier_stages():
    h = record_stage(new_history(8), 0, ["a"], [1.0])
    h = record_stage(h, 1, ["a"], [100.0])
    h = record_stage(h, 1, ["a", "a"], [2.0, 3.0])  # pool [1, 2, 3], not [1, 100, 2, 3]
    np.testing.assert_allclose(normalise(h, ["a", "a"], [1.0, 3.0]), [-R, R], rtol=1e-6)


def test_non_finite_scores_are_not_recorded_and_get_nan():
    scores = [1.0, float("nan"), 3.0, float("inf"), -float("inf")]
    h = record_stage(new_history(8), 0, ["a"] * 5, scores)
    adv = normalise(h, ["a"] * 5, scores)  # pool [1, 3]: mean 2, std 1
    np.testing.assert_allclose(adv[[0, 2]], [-1.0, 1.0], rtol=1e-6)
    assert np.isnan(adv[[1, 3, 4]]).all()


def test_prompts_are_normalised_separately():
    prompts = ["a", "b", "a", "b", "a"]
    scores = [1.0, 10.0, 2.0, 30.0, 3.0]
    h = record_stage(new_history(8), 0, prompts, scores)
    # a: [1, 2, 3] -> [-R, 0, R]; b: [10, 30], mean 20, std 10 -> [-1, 1]
    np.testing.assert_allclose(normalise(h, prompts, scores), [-R, -1.0, 0.0, 1.0, R], rtol=1e-6, atol=1e-9)


def test_prompt_seen_once_has_zero_advantage():
    h = record_stage(new_history(8), 0, ["a", "b", "b"], [4.0, 1.0, 3.0])
    adv = normalise(h, ["a"], [4.0])
    assert adv[0] == 0.0  # (4 - 4) / (0 + 1e-8)


def test_std_epsilon_is_added():
    h = record_stage(new_history(8), 0, ["a", "a"], [1.0, 1.0])
    np.testing.assert_allclose(normalise(h, ["a"], [1.5]), [0.5 / 1e-8], rtol=1e-9)


def test_record_stage_does_not_mutate_its_input():
    h0 = record_stage(new_history(2), 0, ["a"], [1.0])
    before = copy.deepcopy(h0)
    record_stage(h0, 1, ["a"], [2.0])
    record_stage(h0, 3, ["b"], [2.0])
    assert h0 == before


def test_history_is_json_serialisable():
    h = record_stage(new_history(2), 0, ["a", "b", "a"], [1.0, float("nan"), 2.0])
    h = record_stage(h, 1, ["a", "b"], [4.0, 5.0])
    text = json.dumps(h, allow_nan=False)
    loaded = json.loads(text)
    prompts, scores = ["a", "b", "a"], [1.0, 5.0, 4.0]
    np.testing.assert_array_equal(normalise(loaded, prompts, scores), normalise(h, prompts, scores))
    # the loaded history keeps working: at stage 2 stage 0 drops, pool of "a" is [4, 4]
    h2 = record_stage(loaded, 2, ["a"], [4.0])
    assert normalise(h2, ["a"], [0.0])[0] == pytest.approx(-4.0 / 1e-8)
