"""PPO-clip loss and advantage weighting (b2diffurl/loss.py) on hand-computed numbers."""

import math

import pytest
import torch

from b2diffurl.method.loss import clipped_pg_loss, step_weights, weighted_advantages

LOG15, LOG05 = math.log(1.5), math.log(0.5)


@pytest.mark.parametrize("log_ratio,a,expected", [
    (LOG15, 1.0, -1.1),  # max(-1.5, -1.1)
    (LOG05, 1.0, -0.5),  # max(-0.5, -0.9)
    (LOG15, -1.0, 1.5),  # max(1.5, 1.1)
    (LOG05, -1.0, 0.9),  # max(0.5, 0.9)
    (math.log(1.05), 2.0, -2.1),  # inside the clip range: -a * ratio
])
def test_single_sample_terms(log_ratio, a, expected):
    loss, _ = clipped_pg_loss(torch.tensor([log_ratio - 3.0]), torch.tensor([-3.0]), torch.tensor([a]), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_batch_mean_and_diagnostics():
    log_ratio = torch.tensor([LOG15, LOG05, LOG15, LOG05, math.log(1.05)], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    old = torch.full((5,), -2.0, dtype=torch.float64)
    loss, info = clipped_pg_loss(old + log_ratio, old, adv, 0.1)
    assert loss.item() == pytest.approx((-1.1 - 0.5 + 1.5 + 0.9 - 1.05) / 5)
    assert info["clipfrac"].item() == pytest.approx(4 / 5)
    # 0.5 * mean(ln(1.5)^2, ln(0.5)^2, ln(1.5)^2, ln(0.5)^2, ln(1.05)^2)
    expected_kl = 0.5 * (2 * 0.1644019 + 2 * 0.4804530 + 0.0023805) / 5
    assert info["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    assert not info["approx_kl"].requires_grad and not info["clipfrac"].requires_grad


def test_gradient_at_ratio_one_is_minus_a_over_n():
    adv = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    old = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    log_prob = old.clone().requires_grad_(True)
    loss, info = clipped_pg_loss(log_prob, old, adv, 0.1)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-2 / 3, 1 / 3, -1 / 6], dtype=torch.float64))
    assert info["approx_kl"].item() == 0.0 and info["clipfrac"].item() == 0.0


def test_gradient_is_zero_for_clipped_samples():
    log_ratio = torch.tensor([LOG15, LOG05, LOG15, LOG05], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    log_prob = log_ratio.clone().requires_grad_(True)
    loss, _ = clipped_pg_loss(log_prob, torch.zeros(4, dtype=torch.float64), adv, 0.1)
    loss.backward()
    # d(-a * ratio)/d log_prob = -a * ratio / N where unclipped is the max, 0 where clipped is
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, -0.125, 0.375, 0.0], dtype=torch.float64))


def test_weighted_advantages():
    adv = torch.tensor([7.0, 2.0, 0.0, -3.0, -9.0])
    out = weighted_advantages(adv, adv_clip_max=5.0, pos_weight=2.0, neg_weight=0.5)
    torch.testing.assert_close(out, torch.tensor([10.0, 4.0, 0.0, -1.5, -2.5]))


def test_weighted_advantages_keeps_dtype():
    out = weighted_advantages(torch.tensor([1.0, -1.0], dtype=torch.float64), 5.0, 3.0, 1.0)
    assert out.dtype == torch.float64
    assert out.tolist() == [3.0, -1.0]


def test_weights_scale_each_term_and_its_gradient():
    adv = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    old = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    log_ratio = torch.tensor([math.log(1.05), LOG15, LOG05], dtype=torch.float64)
    weights = torch.tensor([0.5, 2.0, 0.25], dtype=torch.float64)
    log_prob = (old + log_ratio).requires_grad_(True)
    loss, _ = clipped_pg_loss(log_prob, old, adv, 0.1, weights)
    loss.backward()
    # terms: -2 * 1.05 (inside the range), max(1.5, 1.1) = 1.5, max(-0.25, -0.45) = -0.25
    assert loss.item() == pytest.approx((0.5 * -2.1 + 2.0 * 1.5 + 0.25 * -0.25) / 3)
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.5 * -2 * 1.05, 2.0 * 1.5, 0.25 * -0.5 * 0.5],
                                                           dtype=torch.float64) / 3)
    unweighted, _ = clipped_pg_loss(old + log_ratio, old, adv, 0.1, torch.ones(3, dtype=torch.float64))
    assert unweighted.item() == pytest.approx(clipped_pg_loss(old + log_ratio, old, adv, 0.1)[0].item())


def test_step_weights():
    stds = torch.tensor([[0.8, 0.4, 0.2, 0.2], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(step_weights(stds, "uniform"), torch.ones(2, 4))
    weights = step_weights(stds, "std")
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(weights.mean(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="step weighting 'snr'"):
        step_weights(stds, "snr")
