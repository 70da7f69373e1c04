"""DSSA-UNet: the DSSAU-Net design (a symmetric U of DSSA blocks) in 2D and 3D.

Layout (``w = widths``; resolutions relative to the input):

* **Encoder**: the MedFormer pyramid (:class:`~napari_medattn.models.nets.medformer.DSSAPyramid`):
  a convolutional stem to 1/4, then DSSA stages at 1/4, 1/8, 1/16, 1/32 (``depths``)
  joined by patch merging, with per-stage top-k (default 1, 4, 16, full attention).
* **Pooling pyramid** on the 1/32 bottleneck (PSPNet): average pools to 1, 2, 3 and 6 bins
  per axis, each projected and upsampled back, concatenated with the input and fused.
* **Decoder**, symmetric: at 1/16, 1/8 and 1/4 patch expanding doubles the grid and halves
  the width, a convolutional skip connection (3x3 conv, norm, GELU on the encoder features)
  is concatenated and fused by a 1x1 convolution, then DSSA blocks (``decoder_depths``,
  default the encoder's depths mirrored) with that level's top-k.
* **Feature-pyramid fusion**: the decoder outputs at 1/4, 1/8, 1/16 and the pooling-pyramid
  output at 1/32 are projected to ``w[0]``, brought to 1/4 and fused.
* **Head**: two patch-expanding steps back to full resolution, each with a convolutional
  skip (the stem's 1/2 map, then a conv block on the input) so boundaries come from
  full-resolution evidence, and a 1x1 classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_medattn.models.blocks.common import (
    ChannelsLayerNorm,
    check_input,
    conv_nd,
    crop_to,
    pad_to_multiple,
    pool_nd,
)
from napari_medattn.models.nets._config import (
    ConfiguredNet,
    check_io,
    positive_ints,
)
from napari_medattn.models.nets._layers import ConvBlock, PatchExpanding, resize_linear
from napari_medattn.models.nets.medformer import (
    DSSAPyramid,
    FPNHead,
    check_dssa_arguments,
    drop_path_schedule,
    dssa_stage,
)

__all__ = ["DSSAUNet", "PoolingPyramid"]


def _conv_norm_act(spatial_dims: int, in_channels: int, out_channels: int,
                   kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(conv_nd(spatial_dims)(in_channels, out_channels, kernel_size,
                                               padding=kernel_size // 2),
                         ChannelsLayerNorm(out_channels), nn.GELU())


class PoolingPyramid(nn.Module):
    """Pyramid pooling (Zhao et al., PSPNet, CVPR 2017) on a channels-first map.

    Each branch average-pools to ``b`` bins per axis, projects to ``channels // len(bins)``
    with a 1x1 convolution, and is upsampled back (linear); the branches are concatenated
    with the input and fused by a 3x3 convolution to ``channels``.
    """

    def __init__(self, spatial_dims: int, channels: int,
                 bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        branch = max(1, channels // len(self.bins))
        pool = pool_nd(spatial_dims, "adaptive_avg")
        self.branches = nn.ModuleList(
            nn.Sequential(pool(b), *_conv_norm_act(spatial_dims, channels, branch, 1))
            for b in self.bins)
        self.fuse = _conv_norm_act(spatial_dims, channels + branch * len(self.bins), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = [resize_linear(branch(x), size) for branch in self.branches]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class _DecoderLevel(nn.Module):
    """Patch expanding from the coarser level, conv skip, 1x1 fusion, DSSA blocks."""

    def __init__(self, spatial_dims: int, coarse: int, width: int, blocks: nn.Module) -> None:
        super().__init__()
        self.up = PatchExpanding(spatial_dims, coarse, width)
        self.skip = _conv_norm_act(spatial_dims, width, width)
        self.fuse = conv_nd(spatial_dims)(2 * width, width, 1)
        self.blocks = blocks

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fuse(torch.cat([self.up(coarse), self.skip(skip)], dim=1)))


class _UpHead(nn.Module):
    """Patch expanding by 2 with a convolutional skip and a conv block."""

    def __init__(self, spatial_dims: int, coarse: int, skip: int, width: int) -> None:
        super().__init__()
        self.up = PatchExpanding(spatial_dims, coarse, width)
        self.conv = ConvBlock(spatial_dims, width + skip, width)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(coarse), skip], dim=1))


class DSSAUNet(ConfiguredNet, nn.Module):
    """DSSA-UNet (DSSAU-Net design) for 2D or 3D segmentation.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Input channels.
    out_channels : int
        Classes (logits).
    widths, depths : sequence of int
        Encoder channels and DSSA blocks per stage (four entries). The defaults are a
        CPU-sized model; ``preset="paper"`` gives the DSSAU-Net's 96/192/384/768, 2/2/8/2.
    decoder_depths : sequence of int, optional
        DSSA blocks of the decoder at 1/4, 1/8, 1/16; default ``depths[:3]`` (symmetric).
    topk : sequence of (int or None)
        Regions kept per query region at 1/4, 1/8, 1/16, 1/32 (default 1, 4, 16, all);
        decoder levels use their resolution's value.
    n_win : int or sequence of int
        Regions per axis (per stage if a list).
    head_dim, mlp_ratio, token_keep
        As in :class:`~napari_medattn.models.blocks.dssa.DSSABlock`.
    drop_path : float
        Largest stochastic-depth rate (encoder and decoder schedules each rise from 0).
    pool_bins : sequence of int
        Bins per axis of the pooling pyramid.

    Notes
    -----
    Inputs of any size work: padded at the end of each axis to a multiple of 32 voxels,
    logits cropped back.
    """

    architecture = "dssa_unet"
    PRESETS = {"paper": {"widths": [96, 192, 384, 768], "depths": [2, 2, 8, 2],
                         "drop_path": 0.1}}

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (1, 1, 2, 1),
                 decoder_depths: Sequence[int] | None = None,
                 topk: Sequence[int | None] = (1, 4, 16, None), n_win: int | Sequence[int] = 7,
                 head_dim: int = 32, mlp_ratio: float = 3.0, token_keep: float = 1 / 8,
                 drop_path: float = 0.0, pool_bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        spatial_dims, in_channels, out_channels = check_io(spatial_dims, in_channels,
                                                           out_channels)
        args = check_dssa_arguments(4, widths, depths, topk, n_win, head_dim, mlp_ratio,
                                    token_keep, drop_path)
        dec_depths = (args["depths"][:3] if decoder_depths is None
                      else positive_ints(decoder_depths, "decoder_depths", length=3))
        bins = positive_ints(pool_bins, "pool_bins")
        self._store_config(spatial_dims=spatial_dims, in_channels=in_channels,
                           out_channels=out_channels, **args, decoder_depths=decoder_depths,
                           pool_bins=bins)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        w = args["widths"]
        self.encoder = DSSAPyramid(spatial_dims, in_channels, **args)
        self.pyramid_pool = PoolingPyramid(spatial_dims, w[3], bins)
        rates = drop_path_schedule(args["drop_path"], dec_depths)
        # decoder[i] produces level i (1/4 * 2**-i) from level i+1, fine to coarse like the
        # encoder's stages, so "decoder.1" and "encoder.stages.1" share a resolution.
        self.decoder = nn.ModuleList(
            _DecoderLevel(spatial_dims, w[i + 1], w[i],
                          dssa_stage(spatial_dims, w[i], dec_depths[i], args["topk"][i],
                                     args["n_win"][i], args["head_dim"], args["mlp_ratio"],
                                     args["token_keep"], rates[i]))
            for i in range(3))
        self.fpn = FPNHead(spatial_dims, w, w[0])
        half, full = max(1, w[0] // 2), max(1, w[0] // 4)
        self.input_skip = ConvBlock(spatial_dims, in_channels, full)
        self.up_half = _UpHead(spatial_dims, w[0], half, half)
        self.up_full = _UpHead(spatial_dims, half, full, full)
        self.head = conv_nd(spatial_dims)(full, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels)
        size = x.shape[2:]
        x, _ = pad_to_multiple(x, 32)
        half, features = self.encoder.forward_features(x)
        levels = [*features[:3], self.pyramid_pool(features[3])]
        for i in (2, 1, 0):
            levels[i] = self.decoder[i](levels[i + 1], features[i])
        fused = self.fpn(levels)
        y = self.up_full(self.up_half(fused, half), self.input_skip(x))
        return crop_to(self.head(y), size)
