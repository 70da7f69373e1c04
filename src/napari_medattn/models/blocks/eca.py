"""Efficient channel attention (Wang et al., CVPR 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_input, check_spatial_dims, global_pool


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive kernel size ``k = |log2(C) / gamma + beta / gamma|``, made odd.

    As in the authors' code: the value is truncated to an int and raised by one if even,
    so that the 1D convolution over channels is centred (C=64 gives 3, C=256 gives 5).
    """
    if channels < 1:
        raise ValueError(f"channels must be positive, not {channels}.")
    t = int(abs(math.log2(channels) / gamma + beta / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
    """Efficient channel attention: a 1D convolution across the pooled channel descriptor.

    ``w = sigmoid(conv1d_k(GAP(x)))`` and ``out = w * x``, with no dimensionality reduction
    and ``k`` from :func:`eca_kernel_size` (Wang et al., "ECA-Net: Efficient Channel
    Attention for Deep Convolutional Neural Networks", CVPR 2020).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Number of channels C.
    gamma, beta : float
        Constants of the kernel-size mapping.

    Notes
    -----
    Capture records ``weights`` (channel kind, ``(B, C)``).
    """

    def __init__(self, spatial_dims: int, channels: int, gamma: float = 2,
                 beta: float = 1) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.kernel_size = eca_kernel_size(channels, gamma, beta)
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        pooled = global_pool(x).flatten(1)  # (B, C)
        w = torch.sigmoid(self.conv(pooled.unsqueeze(1))).squeeze(1)
        if capture.active():
            capture.record(self, "weights", w, capture.MapKind.CHANNEL)
        return x * w.reshape(*w.shape, *(1,) * self.spatial_dims)
