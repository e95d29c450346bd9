"""Best/worst branch selection (b2diffurl/selection.py) on hand-made groups and advantages."""

import numpy as np

from b2diffurl.method.selection import SELECTIONS, contrast_census, select_all, select_best_worst


def best_worst(group_id, advantages, pos=0.5, neg=-0.5):
    out = select_best_worst(np.asarray(group_id), np.asarray(advantages, dtype=float), pos, neg)
    assert out.dtype == np.int64
    return out.tolist()


def test_group_with_best_and_worst_gives_two():
    assert best_worst([0, 0, 0], [0.7, -0.8, 0.1]) == [0, 1]


def test_only_best_or_only_worst():
    assert best_worst([0, 0, 0], [0.9, 0.2, -0.1]) == [0]
    assert best_worst([0, 0, 0], [0.2, -0.9, 0.1]) == [1]


def test_groups_that_select_nothing():
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    adv = [0.7, -0.8, 0.1,  0.4, -0.4, 0.0,  0.6, 0.55]
    # group 0: best 0 and worst 1; group 1: nothing; group 2: best 6, worst 0.55 is not < -0.5
    assert best_worst(groups, adv) == [0, 1, 6]


def test_all_nothing_returns_empty_int64():
    out = select_best_worst(np.array([0, 0, 1, 1]), np.array([0.1, -0.1, 0.49, -0.49]), 0.5, -0.5)
    assert out.dtype == np.int64 and out.shape == (0,)


def test_threshold_equality():
    assert best_worst([0, 0], [0.5, 0.0]) == [0]  # A == rho+ is selected
    assert best_worst([0, 0], [0.0, -0.5]) == []  # A == rho- is not
    assert best_worst([0, 0], [0.5, -0.5]) == [0]


def test_nan_advantages_are_ignored():
    assert best_worst([0, 0, 0], [np.nan, 0.6, -0.7]) == [1, 2]
    assert best_worst([0, 0, 0], [np.nan, 0.6, 0.55]) == [1]  # NaN is neither best nor worst
    assert best_worst([0, 0, 1], [np.nan, np.nan, 0.9]) == [2]  # an all-NaN group gives nothing


def test_output_is_sorted():
    # groups interleaved: per-group order would be [1, 3, 2, 0]
    assert best_worst([1, 0, 1, 0], [-1.0, 1.0, 1.0, -1.0]) == [0, 1, 2, 3]


def test_single_branch_groups_never_repeat_an_index():
    assert best_worst([0, 1, 2], [0.9, -0.9, 0.0]) == [0, 1]
    assert best_worst([0, 1], [0.0, -0.1], pos=0.0, neg=0.0) == [0, 1]


def test_select_all_returns_every_finite_index():
    adv = np.array([0.1, np.nan, -3.0, np.inf, 0.0])
    out = select_all(np.array([0, 0, 1, 1, 2]), adv, 0.5, -0.5)
    assert out.dtype == np.int64
    assert out.tolist() == [0, 2, 4]


def test_registry():
    assert SELECTIONS["best_worst"] is select_best_worst
    assert SELECTIONS["all"] is select_all


def test_contrast_census_counts_which_sides_of_each_contrasting_group_were_trained():
    # group 0: rewards differ, both sides picked; group 1: all equal (no contrast);
    # group 2: one success among failures at a low success rate: only the success clears a threshold;
    # group 3: a contrast where nothing clears the thresholds
    group_id = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3])
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    advantages = np.array([1.0, -1.0, -0.4, -0.4, 2.0, -0.4, -0.4, 0.3, -0.3])
    chosen = select_best_worst(group_id, advantages, 0.5, -0.5)
    assert chosen.tolist() == [0, 1, 4]
    assert contrast_census(group_id, rewards, advantages, chosen) == {
        "contrast_groups": 3, "contrast_both": 1, "contrast_positive_only": 1, "contrast_negative_only": 0,
        "contrast_neither": 1}
    # a group whose only negative pick is left: negative only
    assert contrast_census(group_id, rewards, advantages, np.array([1]))["contrast_negative_only"] == 1
