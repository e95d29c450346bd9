"""The DDIM step as a Gaussian policy: its mean, its standard deviation and the log-density.

One function computes the step for sampling and for training, so the log-prob recorded while
sampling and the one recomputed under the same weights agree exactly (the PPO ratio starts at 1).

Names and the paper's symbols (Song et al. 2021, "Denoising Diffusion Implicit Models"):

| here                 | paper                      |
|----------------------|----------------------------|
| `alpha_prod`         | α_t (cumulative product)   |
| `alpha_prod_prev`    | α_{t-1}                    |
| `eps`                | ε_θ(x_t, t) (guided)       |
| `pred_x0`            | predicted x_0, eq. (12)    |
| `std`                | σ_t(η), eq. (16)           |
| `mean`               | x_{t-1} without noise, eq. (12) |

The policy step i maps latent x_i (at timestep τ_i) to x_{i+1} ~ N(mean, std²).
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler


def _gather(values: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[index] shaped [N, 1, 1, ...] to broadcast against `like` ([N, ...])."""
    out = values.to(like.device)[index.to(like.device)]
    return out.reshape(-1, *([1] * (like.ndim - 1))).to(torch.float32)


def _alpha_prods(scheduler: DDIMScheduler, timestep: torch.Tensor, like: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """α_t and α_{t-1} for long timesteps [N], shaped to broadcast against `like` ([N, ...]).
    The previous timestep is diffusers'; a negative one uses the final α (1 or α_0)."""
    prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.to(torch.float32)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    padded = torch.cat([alphas, final_alpha.reshape(1)])  # index -1 -> final α
    return _gather(alphas, timestep, like), _gather(padded, torch.where(prev_timestep >= 0, prev_timestep, -1), like)


def _std(alpha_prod: torch.Tensor, alpha_prod_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η·sqrt((1-α_{t-1})/(1-α_t)·(1-α_t/α_{t-1})), eq. (16)."""
    return eta * ((1 - alpha_prod_prev) / (1 - alpha_prod) * (1 - alpha_prod / alpha_prod_prev)).sqrt()


def ddim_std(scheduler: DDIMScheduler, timesteps: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) of the DDIM step at each of `timesteps` (long, any shape), fp32 of the same shape:
    the `std` that ddim_step_mean_std uses."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    flat = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1)
    return _std(*_alpha_prods(scheduler, flat, flat), eta).reshape(torch.as_tensor(timesteps).shape)


def ddim_step_mean_std(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of p(x_{t-1} | x_t) under DDIM with noise level `eta`.

    model_output, sample: [N, C, H, W] (any float dtype; the math runs in fp32).
    timestep: int or long [N] (per-sample timesteps are allowed, the trainer shuffles steps).
    Returns mean [N, C, H, W] and std [N, 1, 1, 1], both fp32. Equals the noise-free part of
    `DDIMScheduler.step` and its `std_dev_t`. With eta = 0 the step is deterministic (std = 0).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if scheduler.config.thresholding:
        raise ValueError("dynamic thresholding is not supported by the log-prob step")
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    model_output = model_output.to(torch.float32)
    sample = sample.to(torch.float32)
    timestep = torch.as_tensor(timestep, dtype=torch.long).reshape(-1).expand(sample.shape[0])

    # 1. α_t and α_{t-1}
    alpha_prod, alpha_prod_prev = _alpha_prods(scheduler, timestep, sample)
    beta_prod = 1 - alpha_prod

    # 2. predicted x_0 and ε, eq. (12)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        pred_x0 = (sample - beta_prod.sqrt() * model_output) / alpha_prod.sqrt()
        pred_eps = model_output
    elif prediction_type == "v_prediction":
        pred_x0 = alpha_prod.sqrt() * sample - beta_prod.sqrt() * model_output
        pred_eps = alpha_prod.sqrt() * model_output + beta_prod.sqrt() * sample
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported")

    # 3. clip x_0 as the scheduler is configured to
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        pred_x0 = pred_x0.clamp(-limit, limit)

    # 4. σ_t(η), eq. (16)
    std = _std(alpha_prod, alpha_prod_prev, eta)

    # 5. direction pointing to x_t and the mean of x_{t-1}, eq. (12)
    direction = (1 - alpha_prod_prev - std**2).sqrt() * pred_eps
    mean = alpha_prod_prev.sqrt() * pred_x0 + direction
    return mean, std


def gaussian_log_prob(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(value; mean, std²) **averaged** over all non-batch elements (as the reference does).

    value, mean: [N, C, H, W]; std: broadcastable. Returns [N], fp32. Averaging rather than
    summing keeps the ratio exp(Δ log π) in a range where the PPO clip range of the reference
    (0.1) is meaningful; it is a per-element log-density, not the density of the whole latent.
    """
    value = value.to(torch.float32)
    log_prob = (
        -((value - mean) ** 2) / (2 * std**2)
        - torch.log(std)
        - 0.5 * math.log(2 * math.pi)
    )
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def standard_normal(shape: tuple[int, ...], generator, device: torch.device | str | None = None) -> torch.Tensor:
    """z ~ N(0, I) of `shape` on `device`, drawn on the generator's device.

    `generator` is a torch.Generator, None, or a list of one generator per row: row i is then
    drawn from generator i alone, so that it does not depend on the rows beside it (as
    diffusers draws with a list of generators).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
        return torch.cat([standard_normal((1, *shape[1:]), g, device) for g in generator])
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device).to(device)


def _draw(mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype, generator):
    """mean + std·z (z from standard_normal), rounded to `dtype`."""
    return (mean + std * standard_normal(mean.shape, generator, mean.device)).to(dtype)


def ddim_step(scheduler: DDIMScheduler, model_output: torch.Tensor, timestep: torch.Tensor | int,
              sample: torch.Tensor, eta: float, generator=None) -> torch.Tensor:
    """x_{t-1} without its log-prob, for generation; with eta = 0 no noise is drawn (as in diffusers).
    `generator`: as standard_normal takes it."""
    mean, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
    return _draw(mean, std, sample.dtype, generator) if eta > 0 else mean.to(sample.dtype)


def ddim_step_with_log_prob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One policy step: draw x_{t-1} (or take the given `prev_sample`) and its log-prob.

    A drawn `prev_sample` is rounded to `sample.dtype` *before* its log-prob is taken, so the
    stored latent and the stored log-prob describe the same value and training recomputes
    the same number. Returns prev_sample [N, C, H, W] (dtype of `sample`) and log_prob [N] (fp32).
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0 so that every step has a density, got {eta}")
    mean, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
    if prev_sample is None:
        prev_sample = _draw(mean, std, sample.dtype, generator)
    return prev_sample, gaussian_log_prob(prev_sample, mean, std)
