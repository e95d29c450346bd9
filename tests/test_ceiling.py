"""The world's ceiling: the shipped autoencoder keeps every shape the reward reads."""

import os
import types

import torch
import torch.nn.functional as F

from b2diffurl.files import REPO
from b2diffurl.lab.ceiling import GROUPS, ceiling, format_ceiling, load_vae

SHIPPED = os.path.join(REPO, "model", "shapes-sd")


class _Codec(torch.nn.Module):
    """A stand-in autoencoder: the latent is the image average-pooled by `factor`, decoded by
    nearest upsampling (factor 1: the identity)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def encode(self, x):
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mean=F.avg_pool2d(x, self.factor)))

    def decode(self, z):
        return types.SimpleNamespace(sample=F.interpolate(z, scale_factor=self.factor, mode="nearest"))


def test_the_ceiling_is_one_without_a_codec_and_falls_with_a_blurring_one():
    exact = ceiling(_Codec(1), renders_per_caption=1)
    assert list(exact) == list(GROUPS) and all(r["success"] == 1.0 for r in exact.values())
    assert exact["one object"]["n"] == 12
    assert exact["two objects, train"]["n"] + exact["two objects, held-out"]["n"] == 528
    blurred = ceiling(_Codec(4), renders_per_caption=1)  # 8x8 blocks: squares survive, circles and triangles do not
    assert blurred["two objects, with a triangle"]["success"] < 0.5


def test_the_shipped_autoencoder_decodes_every_caption_group_right():
    result = ceiling(load_vae(SHIPPED), renders_per_caption=4, seed=0)
    print(format_ceiling(result))
    assert result["one object"]["n"] == 48 and sum(result[g]["n"] for g in GROUPS[1:3]) == 4 * 528
    assert all(r["success"] >= 0.99 for r in result.values()), format_ceiling(result)
