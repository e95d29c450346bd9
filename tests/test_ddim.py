"""The log-prob step against diffusers' DDIMScheduler, the reference implementation."""

import pytest
import torch
from diffusers import DDIMScheduler

from b2diffurl.method.ddim import ddim_std, ddim_step, ddim_step_mean_std, ddim_step_with_log_prob, gaussian_log_prob

SD_SCHEDULER = dict(  # the scheduler_config.json of Stable Diffusion v1.4
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
)


@pytest.mark.parametrize("config", [SD_SCHEDULER, {}], ids=["sd-v1.4", "diffusers-default"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_step_matches_diffusers_with_same_noise(config, prediction_type, eta):
    scheduler = DDIMScheduler(**config, prediction_type=prediction_type)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    for t in scheduler.timesteps:  # every step, the last one (previous timestep < 0) included
        sample = torch.randn(3, 4, 8, 8, generator=gen)
        model_output = torch.randn(3, 4, 8, 8, generator=gen)
        noise = torch.randn(3, 4, 8, 8, generator=gen)
        expected = scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample
        mean, std = ddim_step_mean_std(scheduler, model_output, t, sample, eta)
        torch.testing.assert_close(mean + std * noise, expected, rtol=1e-5, atol=1e-5)
        prev_t = t - scheduler.config.num_train_timesteps // 20
        expected_std = eta * scheduler._get_variance(t, prev_t) ** 0.5
        torch.testing.assert_close(std.flatten(), expected_std.expand(3).float())


@pytest.mark.parametrize("config", [SD_SCHEDULER, {}], ids=["sd-v1.4", "diffusers-default"])
def test_ddim_std_is_diffusers_std_dev_at_every_timestep(config):
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.reshape(2, 5)  # any shape
    prev = timesteps - scheduler.config.num_train_timesteps // 10
    expected = torch.stack([0.7 * scheduler._get_variance(t, p) ** 0.5 for t, p in zip(timesteps.flatten(), prev.flatten())])
    torch.testing.assert_close(ddim_std(scheduler, timesteps, 0.7), expected.reshape(2, 5).float())
    assert ddim_std(scheduler, timesteps, 1.0)[0, 0] > 10 * ddim_std(scheduler, timesteps, 1.0)[1, 4]  # early >> late


def test_per_sample_timesteps_equal_one_call_per_timestep():
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    sample, model_output = torch.randn(2, 2, 4, 4, 4, generator=gen)
    timesteps = scheduler.timesteps[torch.tensor([2, 7])]
    mean, std = ddim_step_mean_std(scheduler, model_output, timesteps, sample, 1.0)
    for n in range(2):
        mean_n, std_n = ddim_step_mean_std(scheduler, model_output[n : n + 1], timesteps[n], sample[n : n + 1], 1.0)
        torch.testing.assert_close(mean[n : n + 1], mean_n)
        torch.testing.assert_close(std[n : n + 1], std_n)


def test_log_prob_is_the_element_mean_of_the_gaussian_density():
    gen = torch.Generator().manual_seed(2)
    value, mean = torch.randn(2, 2, 3, 5, 5, generator=gen)
    std = torch.tensor([0.3, 1.7]).reshape(2, 1, 1, 1)
    expected = torch.distributions.Normal(mean, std).log_prob(value).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(value, mean, std), expected)


def test_recomputed_log_prob_of_a_drawn_sample_is_identical():
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(4, 4, 8, 8, generator=gen).half()  # stored in half: rounding must not matter
    model_output = torch.randn(4, 4, 8, 8, generator=gen)
    t = scheduler.timesteps[5]
    prev, log_prob = ddim_step_with_log_prob(scheduler, model_output, t, sample, 1.0, generator=gen)
    assert prev.dtype == torch.float16
    _, again = ddim_step_with_log_prob(scheduler, model_output, t, sample, 1.0, prev_sample=prev)
    assert torch.equal(log_prob, again)
    # a different x_{t-1} has a different density: the check above is not vacuous
    _, other = ddim_step_with_log_prob(scheduler, model_output, t, sample, 1.0, prev_sample=prev + 0.1)
    assert not torch.allclose(other, log_prob)


def test_eta_zero_is_the_deterministic_diffusers_step_and_has_no_log_prob():
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    scheduler.set_timesteps(5)
    gen = torch.Generator().manual_seed(4)
    x, eps = torch.randn(2, 1, 4, 2, 2, generator=gen)
    t = scheduler.timesteps[1]
    expected = scheduler.step(eps, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ddim_step(scheduler, eps, t, x, 0.0), expected)
    with pytest.raises(ValueError, match="eta"):
        ddim_step_with_log_prob(scheduler, eps, t, x, 0.0)
    with pytest.raises(ValueError, match="eta"):
        ddim_step_mean_std(scheduler, eps, t, x, -0.1)
