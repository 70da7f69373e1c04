"""Non-attention layers the nets share: the nnU-Net conv block, the convolutional stem,
patch merging (down) and patch expanding (up). All 2D/3D from the same code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.models.blocks.common import (
    ChannelsLayerNorm,
    conv_nd,
    conv_transpose_nd,
    norm_nd,
)


def resize_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bi- or trilinear resampling of ``(B, C, *grid)`` to ``size`` (voxels), cell-centred
    (``align_corners=False``), so maps of one field of view at different strides line up."""
    mode = {4: "bilinear", 5: "trilinear"}[x.ndim]
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _norm_act(spatial_dims: int, channels: int, act: bool = True) -> list[nn.Module]:
    # nnU-Net: affine instance norm, LeakyReLU(0.01). Instance norm is batch-size independent,
    # which matters for the batch of 1-2 volumes 3D training can afford.
    layers: list[nn.Module] = [norm_nd(spatial_dims, "instance")(channels, affine=True)]
    if act:
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    return layers


class ConvBlock(nn.Module):
    """Two 3x3(x3) convolutions, each followed by instance norm and LeakyReLU (nnU-Net).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels, out_channels : int
        Channels in and out.
    stride : int
        Stride of the first convolution (2 halves every spatial axis).
    residual : bool
        Add a shortcut (1x1 conv + norm when shape changes) before the last activation,
        as UNETR's residual blocks do.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.conv1 = nn.Sequential(
            conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            *_norm_act(spatial_dims, out_channels),
        )
        self.conv2 = nn.Sequential(
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            *_norm_act(spatial_dims, out_channels, act=not residual),
        )
        self.shortcut: nn.Module | None = None
        if residual:
            if stride != 1 or in_channels != out_channels:
                self.shortcut = nn.Sequential(
                    conv(in_channels, out_channels, 1, stride=stride, bias=False),
                    *_norm_act(spatial_dims, out_channels, act=False),
                )
            else:
                self.shortcut = nn.Identity()
            self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.shortcut is None:
            return y
        return self.act(y + self.shortcut(x))


class UpConv(nn.Module):
    """2x upsampling by a transposed convolution with kernel 2 and stride 2 (U-Net decoders)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = conv_transpose_nd(spatial_dims)(in_channels, out_channels, 2, stride=2,
                                                  bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class ConvStem(nn.Module):
    """Two stride-2 3x3(x3) convolutions to 1/4 resolution (BiFormer/MedFormer stem).

    Returns the 1/4-resolution map; ``forward_features`` also returns the 1/2 map for
    decoders that want a convolutional skip from it.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        half = max(1, out_channels // 2)
        self.conv1 = nn.Sequential(conv(in_channels, half, 3, stride=2, padding=1),
                                   ChannelsLayerNorm(half), nn.GELU())
        self.conv2 = nn.Sequential(conv(half, out_channels, 3, stride=2, padding=1),
                                   ChannelsLayerNorm(out_channels))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.conv1(x)
        return half, self.conv2(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


class PatchMerging(nn.Module):
    """Halve every spatial axis: a stride-2 3x3(x3) convolution and a channel layer norm
    (the overlapping patch merging of BiFormer/MedFormer)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = conv_nd(spatial_dims)(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = ChannelsLayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduce(x))


class PatchExpanding(nn.Module):
    """Double every spatial axis (Swin-Unet's patch expanding): a 1x1 projection to
    ``out_channels * 2**spatial_dims`` channels, each group of ``2**spatial_dims`` channels
    rearranged into a 2x2(x2) block of voxels, then a channel layer norm."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.expand = conv_nd(spatial_dims)(in_channels, out_channels * 2 ** spatial_dims, 1,
                                            bias=False)
        self.norm = ChannelsLayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x)
        b, _, *grid = y.shape
        d = self.spatial_dims
        # (B, C, 2, .., 2, g1, .., gd) -> (B, C, g1, 2, .., gd, 2) -> (B, C, 2 g1, .., 2 gd)
        y = y.reshape(b, -1, *([2] * d), *grid)
        order = [0, 1] + [p for i in range(d) for p in (2 + d + i, 2 + i)]
        y = y.permute(order).reshape(b, -1, *(2 * n for n in grid))
        return self.norm(y)
