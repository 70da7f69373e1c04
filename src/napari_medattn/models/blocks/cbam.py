"""Convolutional block attention module (Woo et al., ECCV 2018)."""

from __future__ import annotations

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_input, conv_nd, global_pool


class CBAM(nn.Module):
    """CBAM: channel attention, then spatial attention, both sigmoid gates.

    Channel: ``Mc = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x)))`` with one shared MLP
    (C -> C/r -> C), ``x' = Mc * x``. Spatial: ``Ms = sigmoid(conv_k([mean_c(x'); max_c(x')]))``,
    ``out = Ms * x'`` (Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module",
    ECCV 2018).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Number of channels C.
    reduction : int
        MLP bottleneck ratio r; hidden width ``max(1, C // r)``.
    spatial_kernel : int
        Odd kernel size (voxels) of the spatial-attention convolution.

    Notes
    -----
    Capture records ``channel`` (channel kind, ``(B, C)``) and ``spatial``
    (spatial kind, ``(B, 1, *grid)``).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16,
                 spatial_kernel: int = 7) -> None:
        super().__init__()
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ModelError(f"spatial_kernel must be odd and positive, not {spatial_kernel}.")
        conv = conv_nd(spatial_dims)
        hidden = max(1, channels // reduction)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.mlp = nn.Sequential(conv(channels, hidden, 1), nn.ReLU(inplace=True),
                                 conv(hidden, channels, 1))
        self.spatial = conv(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        mc = torch.sigmoid(self.mlp(global_pool(x, "avg")) + self.mlp(global_pool(x, "max")))
        x = x * mc
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        ms = torch.sigmoid(self.spatial(descriptor))
        if capture.active():
            capture.record(self, "channel", mc.flatten(1), capture.MapKind.CHANNEL)
            capture.record(self, "spatial", ms, capture.MapKind.SPATIAL)
        return x * ms
