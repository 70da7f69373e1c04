"""Squeeze-and-excitation channel attention (Hu et al., CVPR 2018)."""

from __future__ import annotations

import torch
from torch import nn

from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_input, conv_nd, global_pool


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: reweight channels by a gate computed from their global mean.

    ``s = sigmoid(W2 relu(W1 GAP(x)))`` and ``out = s * x`` (Hu, Shen, Sun, "Squeeze-and-
    Excitation Networks", CVPR 2018). ``W1`` and ``W2`` are 1x1 convolutions with biases.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Number of channels C of input and output.
    reduction : int
        Bottleneck ratio r: the hidden width is ``max(1, C // r)``.

    Notes
    -----
    Capture records ``excitation`` (channel kind, ``(B, C)``): the gate ``s``.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        hidden = max(1, channels // reduction)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.fc1 = conv(channels, hidden, kernel_size=1)
        self.fc2 = conv(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(global_pool(x)))))
        if capture.active():
            capture.record(self, "excitation", s.flatten(1), capture.MapKind.CHANNEL)
        return x * s
