"""Selective kernel convolution: branch attention (Li et al., CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_input, conv_nd, global_pool, norm_nd


class SelectiveKernel(nn.Module):
    """Selective kernel unit: parallel convolutions of different kernel size, mixed per
    channel by a softmax over branches.

    Split: branch m is ``relu(BN(conv_{k_m}(x)))``. Fuse: ``z = relu(fc(GAP(sum_m U_m)))``.
    Select: ``a_m = softmax_m(fc_m(z))`` per channel, ``out = sum_m a_m * U_m`` (Li, Wang,
    Hu, Yang, "Selective Kernel Networks", CVPR 2019). The paper replaces 5x5 by a dilated
    3x3; here each branch uses its kernel size directly, which is the same receptive field.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels, out_channels : int
        Channels of input and output.
    kernel_sizes : sequence of int
        Odd kernel size (voxels, all axes) of each branch; at least two branches.
    reduction : int
        Ratio of the fuse layer: hidden width ``max(out_channels // reduction, min_hidden)``.
    min_hidden : int
        Lower bound of the hidden width (the paper's L = 32).

    Notes
    -----
    Capture records ``branch_weights`` (channel kind, ``(B, M, C)`` with meta
    ``branches`` = the kernel sizes): the softmax weights, summing to one over M.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 kernel_sizes: Sequence[int] = (3, 5), reduction: int = 16,
                 min_hidden: int = 32) -> None:
        super().__init__()
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(kernel_sizes) < 2 or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ModelError(
                f"SelectiveKernel needs at least two odd kernel sizes, not {kernel_sizes}."
            )
        conv = conv_nd(spatial_dims)
        norm = norm_nd(spatial_dims, "batch")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.kernel_sizes = kernel_sizes
        self.branches = nn.ModuleList(
            nn.Sequential(conv(in_channels, out_channels, k, padding=k // 2, bias=False),
                          norm(out_channels), nn.ReLU(inplace=True))
            for k in kernel_sizes
        )
        hidden = max(out_channels // reduction, min_hidden)
        # No normalisation in the fuse path: it acts on one vector per sample, where
        # batch statistics would fail for a batch of one.
        self.fuse = nn.Sequential(conv(out_channels, hidden, 1), nn.ReLU(inplace=True))
        self.select = conv(hidden, out_channels * len(kernel_sizes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels)
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)  # (B, M, C, *grid)
        z = self.fuse(global_pool(feats.sum(dim=1)))
        b, m, c = feats.shape[:3]
        logits = self.select(z).reshape(b, m, c)
        weights = logits.softmax(dim=1)
        if capture.active():
            capture.record(self, "branch_weights", weights, capture.MapKind.CHANNEL,
                           branches=self.kernel_sizes)
        weights = weights.reshape(b, m, c, *(1,) * self.spatial_dims)
        return (feats * weights).sum(dim=1)
