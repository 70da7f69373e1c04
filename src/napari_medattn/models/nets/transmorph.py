"""A TransMorph-style registration network: a Swin (shifted-window attention) encoder and
a convolutional decoder, returning a stationary velocity field.

After Chen et al., "TransMorph: Transformer for unsupervised medical image registration",
Medical Image Analysis 2022: the pair is encoded by Swin stages at 1/4, 1/8, ... of the
input, decoded by convolutions with skip connections, and the diffeomorphic variant
outputs a velocity whose exponential (scaling and squaring,
:func:`napari_medattn.registration.transforms.exponentiate`) is the deformation. Here the
velocity lives at a fraction of the input resolution (``shrink``, see :mod:`._velocity`) and
any input size runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_medattn.models.blocks.window import SwinBlock
from napari_medattn.models.nets._config import ConfiguredNet, positive_int, positive_ints
from napari_medattn.models.nets._layers import ConvBlock, PatchMerging, UpConv
from napari_medattn.models.nets._velocity import SPATIAL_DIMS, VelocityNet, velocity_head

__all__ = ["TransMorph"]


class TransMorph(ConfiguredNet, VelocityNet):
    """Swin encoder, convolutional decoder, velocity out.

    Parameters
    ----------
    in_channels : int
        Input channels: the fixed and the moving image (2).
    channels : sequence of int
        Channels of the Swin stages; stage ``s`` works at ``1 / (shrink 2**(s + 1))`` of the
        input.
    num_heads : sequence of int
        Attention heads per stage (each must divide its stage's channels).
    window_size : int
        Attention window (voxels per axis), clipped to small inputs.
    shrink : int
        The body (and the velocity it outputs) works at ``1 / shrink`` of the input
        resolution; the velocity is upsampled back.

    Notes
    -----
    Input ``(B, in_channels, *grid)``, any grid; output ``(B, 3, *grid)``: the velocity in
    voxels of the input grid along its array axes. Each stage is one regular and one
    shifted Swin block, so neighbouring windows exchange information.
    """

    architecture = "transmorph"

    def __init__(self, in_channels: int = 2, channels: Sequence[int] = (16, 32, 64),
                 num_heads: Sequence[int] = (2, 4, 8), window_size: int = 4, shrink: int = 2
                 ) -> None:
        super().__init__()
        in_channels = positive_int(in_channels, "in_channels")
        channels = positive_ints(channels, "channels")
        num_heads = positive_ints(num_heads, "num_heads", length=len(channels))
        window_size = positive_int(window_size, "window_size")
        self.shrink = positive_int(shrink, "shrink")
        self._store_config(in_channels=in_channels, channels=channels, num_heads=num_heads,
                           window_size=window_size, shrink=shrink)
        self.in_channels = in_channels
        self.multiple = 2 ** len(channels)
        self.skip = ConvBlock(SPATIAL_DIMS, in_channels, channels[0])
        self.down = nn.ModuleList()
        self.stages = nn.ModuleList()
        previous = channels[0]
        for width, heads in zip(channels, num_heads):
            self.down.append(PatchMerging(SPATIAL_DIMS, previous, width))
            self.stages.append(nn.Sequential(
                SwinBlock(SPATIAL_DIMS, width, heads, window_size, shift=False),
                SwinBlock(SPATIAL_DIMS, width, heads, window_size, shift=True)))
            previous = width
        # Decoder: up from each stage to the one above it; the last step reaches the
        # shrunk grid and joins the convolutional skip there.
        targets = [channels[0], *channels[:-1]]
        self.up = nn.ModuleList(UpConv(SPATIAL_DIMS, c, t)
                                for c, t in zip(channels[::-1], targets[::-1]))
        self.fuse = nn.ModuleList(ConvBlock(SPATIAL_DIMS, 2 * t, t) for t in targets[::-1])
        self.head = velocity_head(channels[0])

    def body(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.skip(x)]
        for down, stage in zip(self.down, self.stages):
            skips.append(stage(down(skips[-1])))
        y = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            y = fuse(torch.cat([up(y), skips.pop()], 1))
        return self.head(y)
