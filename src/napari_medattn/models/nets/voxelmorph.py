"""A VoxelMorph-style registration network: a plain convolutional U-Net returning a
stationary velocity field (the baseline of the attention network
:class:`~napari_medattn.models.nets.transmorph.TransMorph`).

After Balakrishnan et al., "VoxelMorph: A Learning Framework for Deformable Medical Image
Registration", IEEE TMI 2019, and its diffeomorphic variant (Dalca et al., MICCAI 2018):
strided 3x3x3 convolutions with LeakyReLU(0.2) down, nearest upsampling and skip
connections up, a velocity integrated by scaling and squaring outside the net. Like the
diffeomorphic VoxelMorph, the velocity lives at reduced resolution (``shrink``, see
:mod:`._velocity`);
any input size runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.models.nets._config import ConfiguredNet, positive_int, positive_ints
from napari_medattn.models.nets._velocity import VelocityNet, velocity_head

__all__ = ["VoxelMorph"]


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
                         nn.LeakyReLU(0.2))


class VoxelMorph(ConfiguredNet, VelocityNet):
    """Convolutional U-Net, velocity out.

    Parameters
    ----------
    in_channels : int
        Input channels: the fixed and the moving image (2).
    channels : sequence of int
        Encoder channels; level ``s`` works at ``1 / (shrink 2**s)`` of the input (each
        level after the first strided by 2).
    shrink : int
        The body (and the velocity it outputs) works at ``1 / shrink`` of the input
        resolution; the velocity is upsampled back.

    Notes
    -----
    Input ``(B, in_channels, *grid)``, any grid; output ``(B, 3, *grid)``: the velocity in
    voxels of the input grid along its array axes.
    """

    architecture = "voxelmorph"

    def __init__(self, in_channels: int = 2, channels: Sequence[int] = (16, 32, 32, 32),
                 shrink: int = 2) -> None:
        super().__init__()
        in_channels = positive_int(in_channels, "in_channels")
        channels = positive_ints(channels, "channels", min_length=2)
        self.shrink = positive_int(shrink, "shrink")
        self._store_config(in_channels=in_channels, channels=channels, shrink=shrink)
        self.in_channels = in_channels
        self.multiple = 2 ** (len(channels) - 1)
        widths = [in_channels, *channels]
        self.encoder = nn.ModuleList(_conv(widths[i], widths[i + 1], 1 if i == 0 else 2)
                                     for i in range(len(channels)))
        # Decoder level i joins the upsampled deeper map with encoder level i.
        self.decoder = nn.ModuleList(_conv(channels[i + 1] + channels[i], channels[i])
                                     for i in reversed(range(len(channels) - 1)))
        self.refine = _conv(channels[0], channels[0])
        self.head = velocity_head(channels[0])

    def body(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv in self.encoder:
            x = conv(x)
            skips.append(x)
        y = skips.pop()
        for conv in self.decoder:
            y = conv(torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"),
                                skips.pop()], 1))
        return self.head(self.refine(y))
