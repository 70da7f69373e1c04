"""Concurrent spatial and channel squeeze-and-excitation (Roy et al., MICCAI 2018)."""

from __future__ import annotations

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_input, conv_nd, global_pool


class SpatialChannelSE(nn.Module):
    """Concurrent scSE: a channel gate (cSE) and a spatial gate (sSE) applied in parallel.

    ``cSE = sigmoid(W2 relu(W1 GAP(x))) * x`` and ``sSE = sigmoid(conv1x1(x)) * x``, combined
    by element-wise addition (``combine="add"``, as in Roy, Navab, Wachinger, "Concurrent
    Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks", MICCAI
    2018) or element-wise maximum (``combine="max"``, the max-out aggregation of their
    IEEE TMI 2019 extension).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Number of channels C.
    reduction : int
        cSE bottleneck ratio; hidden width ``max(1, C // reduction)``.
    combine : {"add", "max"}
        How the two recalibrated maps are merged.

    Notes
    -----
    Capture records ``channel`` (channel kind, ``(B, C)``) and ``spatial``
    (spatial kind, ``(B, 1, *grid)``).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 2,
                 combine: str = "add") -> None:
        super().__init__()
        if combine not in ("add", "max"):
            raise ModelError(f"combine must be 'add' or 'max', not {combine!r}.")
        conv = conv_nd(spatial_dims)
        hidden = max(1, channels // reduction)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.combine = combine
        self.fc1 = conv(channels, hidden, 1)
        self.fc2 = conv(hidden, channels, 1)
        self.spatial = conv(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        channel_gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(global_pool(x)))))
        spatial_gate = torch.sigmoid(self.spatial(x))
        if capture.active():
            capture.record(self, "channel", channel_gate.flatten(1), capture.MapKind.CHANNEL)
            capture.record(self, "spatial", spatial_gate, capture.MapKind.SPATIAL)
        if self.combine == "add":
            return x * channel_gate + x * spatial_gate
        return torch.maximum(x * channel_gate, x * spatial_gate)
