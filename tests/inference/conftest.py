"""Tiny networks and volumes shared by the inference tests."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn


def symmetric_conv(in_ch: int, out_ch: int, dims: int = 3) -> nn.Module:
    """A conv whose kernel is unchanged by flipping any spatial axis: with zero padding it
    commutes with flips, so the whole net is flip-equivariant."""
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(in_ch, out_ch, 3, padding=1)
    with torch.no_grad():
        w = conv.weight
        flips = [c for r in range(dims + 1) for c in itertools.combinations(range(2, 2 + dims), r)]
        conv.weight.copy_(sum(torch.flip(w, f) if f else w for f in flips) / len(flips))
    return conv


@pytest.fixture
def net3d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1))


@pytest.fixture
def symmetric_net3d() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(symmetric_conv(1, 4), nn.Tanh(), symmetric_conv(4, 3))


@pytest.fixture
def volume3d() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(23, 30, 27)).astype(np.float32)
