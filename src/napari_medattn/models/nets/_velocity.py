"""What the registration networks share: any input size in, a velocity field out.

A registration net reads the fixed and moving images as two channels ``(B, 2, *grid)``
on the fixed grid and returns a stationary velocity ``(B, 3, *grid)`` in voxels of that
grid along its array axes. The body works at ``1 / shrink`` of the input resolution
(VoxelMorph's diffeomorphic variant integrates at half resolution: a velocity is smooth,
and each halving makes the body eight times cheaper on a CPU). The wrapper pads the input
at its end to the body's multiple, shrinks it by average pooling, runs the body, upsamples
the velocity (trilinear, cell-centred) and crops back, so every input size runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.models.blocks.common import check_input, crop_to, pad_to_multiple
from napari_medattn.models.nets._layers import resize_linear

#: Spatial dimensions of every registration net (velocity components = axes).
SPATIAL_DIMS = 3
#: Standard deviation of the velocity head's initial weights: the untrained net starts
#: at (almost) the identity transform, as VoxelMorph's flow layer does.
HEAD_INIT_STD = 1e-5


def velocity_head(channels: int) -> nn.Conv3d:
    """3x3x3 convolution to the 3 velocity components, initialised near zero."""
    head = nn.Conv3d(channels, SPATIAL_DIMS, 3, padding=1)
    nn.init.normal_(head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    return head


class VelocityNet(nn.Module):
    """Base of the registration nets: subclasses set ``shrink`` (1, 2, 4, ...: the body's
    resolution is the input's divided by it) and ``multiple`` (what the body's grid must be
    a multiple of) and implement :meth:`body` from the shrunk pair to the velocity on the
    shrunk grid (in voxels of the input grid)."""

    in_channels: int
    shrink: int
    multiple: int

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Velocity ``(B, 3, *grid)`` (voxels, array axes) of a pair ``(B, 2, *grid)``."""
        check_input(x, SPATIAL_DIMS, self.in_channels)
        grid = tuple(x.shape[2:])
        padded, _ = pad_to_multiple(x, self.shrink * self.multiple)
        shrunk = F.avg_pool3d(padded, self.shrink) if self.shrink > 1 else padded
        velocity = self.body(shrunk)
        if self.shrink > 1:
            velocity = resize_linear(velocity, padded.shape[2:])
        return crop_to(velocity, grid)
