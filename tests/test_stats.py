"""Per-prompt score history and normalisation (b2diffurl/stats.py) on hand-computed numbers,
and against the authors' release's computation on a hand-made multi-stage history."""

import copy
import json

import numpy as np
import pytest

from b2diffurl.method.statistics import new_history, normalise, record_stage


def test_single_stage_sample_std():
    h = record_stage(new_history(8), 0, ["a", "a", "a"], [1.0, 2.0, 3.0])
    # mean 2, sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1
    np.testing.assert_allclose(normalise(h, ["a", "a", "a"], [1.0, 2.0, 3.0]), [-1.0, 0.0, 1.0], rtol=1e-6)


def test_pool_is_this_stage_and_h_earlier_stages():
    h = record_stage(new_history(1), 0, ["a"] * 3, [1.0, 2.0, 3.0])
    h = record_stage(h, 1, ["a"], [6.0])
    # H = 1: pool [1, 2, 3, 6], mean 3, sample var (4 + 1 + 0 + 9) / 3 = 14/3
    np.testing.assert_allclose(normalise(h, ["a"], [6.0]), [3.0 / np.sqrt(14 / 3)], rtol=1e-6)
    h = record_stage(h, 2, ["a", "a"], [7.0, 8.0])
    # stage 0 dropped: pool [6, 7, 8], mean 7, sample std 1
    np.testing.assert_allclose(normalise(h, ["a", "a"], [7.0, 8.0]), [0.0, 1.0], rtol=1e-6, atol=1e-9)


def test_history_zero_pools_this_stage_only():
    h = record_stage(new_history(0), 0, ["a", "a"], [100.0, 200.0])
    h = record_stage(h, 1, ["a"] * 3, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(normalise(h, ["a"] * 3, [1.0, 2.0, 3.0]), [-1.0, 0.0, 1.0], rtol=1e-6)


def test_redone_stage_replaces_its_scores():
    h = record_stage(new_history(8), 0, ["a", "a"], [10.0, 20.0])
    h = record_stage(h, 0, ["a"] * 3, [1.0, 2.0, 3.0])  # stage 0 redone
    np.testing.assert_allclose(normalise(h, ["a"] * 3, [1.0, 2.0, 3.0]), [-1.0, 0.0, 1.0], rtol=1e-6)


def test_redone_stage_keeps_earlier_stages():
    h = record_stage(new_history(8), 0, ["a"], [1.0])
    h = record_stage(h, 1, ["a"], [100.0])
    h = record_stage(h, 1, ["a", "a"], [2.0, 3.0])  # pool [1, 2, 3], not [1, 100, 2, 3]
    np.testing.assert_allclose(normalise(h, ["a", "a"], [1.0, 3.0]), [-1.0, 1.0], rtol=1e-6)


def test_non_finite_scores_are_not_recorded_and_get_nan():
    scores = [1.0, float("nan"), 3.0, float("inf"), -float("inf")]
    h = record_stage(new_history(8), 0, ["a"] * 5, scores)
    adv = normalise(h, ["a"] * 5, scores)  # pool [1, 3]: mean 2, sample std sqrt(2)
    np.testing.assert_allclose(adv[[0, 2]], [-1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-6)
    assert np.isnan(adv[[1, 3, 4]]).all()


def test_prompts_are_normalised_separately():
    prompts = ["a", "b", "a", "b", "a"]
    scores = [1.0, 10.0, 2.0, 30.0, 3.0]
    h = record_stage(new_history(8), 0, prompts, scores)
    # a: [1, 2, 3] -> [-1, 0, 1]; b: [10, 30], mean 20, sample std sqrt(200) -> -+10/sqrt(200)
    b = 10 / np.sqrt(200)
    np.testing.assert_allclose(normalise(h, prompts, scores), [-1.0, -b, 0.0, b, 1.0], rtol=1e-6, atol=1e-9)


def test_prompt_with_one_pooled_score_has_no_advantage():
    h = record_stage(new_history(8), 0, ["a", "b", "b"], [4.0, 1.0, 3.0])
    adv = normalise(h, ["a", "b"], [4.0, 3.0])
    assert np.isnan(adv[0])  # one score: no sample std, never selected
    assert adv[1] == pytest.approx(1 / np.sqrt(2))


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
    h = record_stage(new_history(1), 0, ["a", "b", "a"], [1.0, float("nan"), 2.0])
    h = record_stage(h, 1, ["a", "b", "b"], [4.0, 5.0, 7.0])
    text = json.dumps(h, allow_nan=False)
    loaded = json.loads(text)
    prompts, scores = ["a", "b", "a"], [1.0, 5.0, 4.0]
    np.testing.assert_array_equal(normalise(loaded, prompts, scores), normalise(h, prompts, scores))
    # the loaded history keeps working: at stage 2 stage 0 drops, the pool of "a" is [4, 4, 5]
    h2 = record_stage(loaded, 2, ["a", "a"], [4.0, 5.0])
    mean, std = 13 / 3, np.std([4.0, 4.0, 5.0], ddof=1)
    assert normalise(h2, ["a"], [5.0])[0] == pytest.approx((5.0 - mean) / std)


def release_advantages(stages: list[tuple[list[str], list[float]]], history_cnt: int) -> list[np.ndarray]:
    """The release's run_select.py computation, restated: a list of per-stage {prompt: scores}
    of at most H entries; each stage pools its scores with every kept entry, normalises with
    torch's default (unbiased) std, then appends itself and keeps the last H."""
    import torch

    history, out = [], []
    for prompts, scores in stages:
        current = {}
        for prompt, score in zip(prompts, scores):
            current.setdefault(prompt, []).append(score)
        current = {k: torch.tensor(v, dtype=torch.float64) for k, v in current.items()}
        stats = {}
        for prompt, values in current.items():
            pooled = torch.cat([d[prompt] for d in history if prompt in d] + [values])
            stats[prompt] = (pooled.mean().item(), pooled.std().item())
        out.append(np.array([(s - stats[p][0]) / (stats[p][1] + 1e-8) for p, s in zip(prompts, scores)]))
        history = (history + [current])[-history_cnt:] if history_cnt > 0 else []
    return out


@pytest.mark.filterwarnings("ignore:std")  # a prompt with one pooled score: NaN, in both
@pytest.mark.parametrize("history_cnt", [0, 1, 3, 8])
def test_advantages_equal_the_release_on_a_hand_made_history(history_cnt):
    rng = np.random.default_rng(0)
    prompts_all = ["a cat", "a dog", "a fox", "a bee"]
    stages = []
    for stage in range(12):  # more stages than H, prompts drawn unevenly, some absent in a stage
        prompts = list(rng.choice(prompts_all[: 2 + stage % 3], size=10))
        stages.append((prompts, list(rng.normal(loc=stage * 0.1, size=10))))
    expected = release_advantages(stages, history_cnt)
    history = new_history(history_cnt)
    for stage, (prompts, scores) in enumerate(stages):
        history = record_stage(history, stage, prompts, scores)
        np.testing.assert_allclose(normalise(history, prompts, scores), expected[stage], rtol=1e-10, atol=1e-12)
