"""The metrics of scored images: reward and diversity of N images per prompt, success rates and
paired changes, for held-out evaluation (b2diffurl.analysis.evaluate) and a stage's selection.

Diversity of a prompt is the mean pairwise Euclidean distance between the embeddings of its
images: CLIP image embeddings (unit length, so distances lie in [0, 2]) when the reward has a
CLIP model, else `pixels-8x8`: the image average-pooled to 8x8x3, scaled to [0, 1] and divided by
sqrt(192), so that distances lie in [0, 1]. Needs no downloaded weights.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Embedder = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] -> float [N, D]


def pixel_embeddings(images: np.ndarray, size: int = 8) -> np.ndarray:
    """[N, size*size*3]: average-pooled pixels in [0, 1], divided by sqrt(D)."""
    n, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"image size {h}x{w} is not a multiple of {size}")
    pooled = images.astype(np.float64).reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4)) / 255.0
    flat = pooled.reshape(n, -1)
    return flat / math.sqrt(flat.shape[1])


def build_embedder(config, device) -> tuple[Embedder, str]:
    """The diversity embedding the config asks for, and its name for the report."""
    from b2diffurl.models.rewards import CLIP_REWARDS, clip_embedder, component_names

    choice = config.eval.diversity_embedding
    if choice == "auto":
        uses_clip = any(name in CLIP_REWARDS for name in component_names(config.reward))
        choice = "clip" if uses_clip and config.reward.model else "pixels"
    if choice == "clip":
        _, embed = clip_embedder(config.reward, device)
        return lambda images: embed(images)[0].float().cpu().numpy(), f"clip:{config.reward.model}"
    if choice == "pixels":
        return pixel_embeddings, "pixels-8x8"
    raise ValueError(f"eval.diversity_embedding must be auto, clip or pixels, got {choice!r}")


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows (NaN for fewer than two rows)."""
    n = len(embeddings)
    if n < 2:
        return float("nan")
    e = np.asarray(embeddings, np.float64)
    squared = (e**2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * e @ e.T, 0.0))
    return float(distances[np.triu_indices(n, 1)].mean())


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at rates near 0 and 1, unlike p ± 1.96·se)."""
    if trials == 0:
        return float("nan"), float("nan")
    rate = successes / trials
    centre = (rate + z**2 / (2 * trials)) / (1 + z**2 / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z**2 / (4 * trials**2)) / (1 + z**2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def success_rates(prompts: list[str], scores: np.ndarray, group_of: Callable[[str], str | tuple[str, ...]]) -> dict:
    """Fraction of images scoring 1.0, with its 95% interval, overall and per prompt group
    (`group_of` gives a prompt's group, or a tuple of the several groups it belongs to)."""
    memberships = [{g} if isinstance(g, str) else set(g) for g in map(group_of, prompts)]
    groups = {"all": np.ones(len(prompts), bool)}
    for name in sorted(set().union(*memberships)):
        groups[name] = np.array([name in m for m in memberships])
    out = {}
    for name, rows in groups.items():
        successes, trials = int((scores[rows] == 1.0).sum()), int(rows.sum())
        low, high = wilson_interval(successes, trials)
        out[name] = {"success_rate": successes / trials, "ci95_low": low, "ci95_high": high, "num_images": trials}
    return out


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite values; NaN (without numpy's warning) when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(prompts: list[str], scores: np.ndarray, embeddings: np.ndarray,
              group_of: Callable[[str], str | tuple[str, ...]] | None = None) -> dict:
    """Per prompt and overall: reward mean/std (and a 95% interval of the mean), diversity (per
    prompt, averaged; and `diversity_all` over all images, which is defined with one image a prompt); with
    `group_of` (prompt -> group name), also success rates per group (see success_rates). `scores`
    keeps every image's score in generation order, so that two evaluations on the same noise
    pair image by image (see paired_change)."""
    per_prompt = {}
    for prompt in dict.fromkeys(prompts):
        rows = np.asarray([i for i, p in enumerate(prompts) if p == prompt])
        per_prompt[prompt] = {"reward_mean": float(np.mean(scores[rows])), "reward_std": float(np.std(scores[rows])),
                              "diversity": mean_pairwise_distance(embeddings[rows])}
    finite = scores[np.isfinite(scores)]
    return {
        "num_images": len(scores),
        "reward_mean": float(finite.mean()),
        "reward_std": float(finite.std()),
        "reward_ci95": float(1.96 * finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else float("nan"),
        "diversity_mean": _finite_mean([v["diversity"] for v in per_prompt.values()]),
        "diversity_all": mean_pairwise_distance(embeddings),
        "per_prompt": per_prompt,
        "prompts": list(prompts),
        "scores": [float(s) for s in scores],
        **({"success": success_rates(prompts, scores, group_of)} if group_of else {}),
    }


def paired_change(before: np.ndarray, after: np.ndarray) -> dict:
    """Success (score 1.0) of the same images, on the same noise, before and after training:
    `gained` images wrong before and right after, `lost` the reverse, and McNemar's statistic
    (gained - lost)^2 / (gained + lost), chi-square with one degree of freedom under no change
    (above 3.84: significant at the 5% level)."""
    right_before, right_after = np.asarray(before) == 1.0, np.asarray(after) == 1.0
    gained, lost = int((~right_before & right_after).sum()), int((right_before & ~right_after).sum())
    chi2 = mcnemar_chi2(gained, lost)
    return {"gained": gained, "lost": lost, "mcnemar_chi2": chi2, "significant": chi2 > 3.84}


def paired_order(before: list[str | None], after: list[str | None]) -> dict:
    """The order of the same images, on the same noise, before and after training, from their
    failure modes (world.failures.image_modes): over the images that show the stated objects on
    the stated axis both times (`images`), `gained` in the reversed order before and the stated
    one after, `lost` the reverse, and McNemar's statistic as paired_change gives it."""
    placed = ("success", "reversed order")
    both = [(b, a) for b, a in zip(before, after) if b in placed and a in placed]
    gained = sum(b == "reversed order" and a == "success" for b, a in both)
    lost = sum(b == "success" and a == "reversed order" for b, a in both)
    chi2 = mcnemar_chi2(gained, lost)
    return {"images": len(both), "gained": gained, "lost": lost, "mcnemar_chi2": chi2, "significant": chi2 > 3.84}


def mcnemar_chi2(gained: int, lost: int) -> float:
    """McNemar's statistic of paired outcomes, without continuity correction (0 with no change)."""
    return float((gained - lost) ** 2 / (gained + lost)) if gained + lost else 0.0
