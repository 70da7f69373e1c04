"""MedFormer: a four-stage pyramid of DSSA blocks with classification and FPN segmentation heads.

The backbone (Xia et al., MedFormer, after BiFormer): a convolutional stem to 1/4 of the
input size, then four stages of :class:`~napari_medattn.models.blocks.dssa.DSSABlock`
separated by patch merging to 1/8, 1/16 and 1/32. :class:`DSSAPyramid` is that backbone;
the DSSA-UNet reuses it as its encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models.blocks.common import (
    ChannelsLayerNorm,
    check_input,
    conv_nd,
    crop_to,
    pad_to_multiple,
)
from napari_medattn.models.blocks.dssa import DSSABlock
from napari_medattn.models.nets._config import (
    ConfiguredNet,
    check_choice,
    check_io,
    positive_int,
    positive_ints,
    positive_number,
    stage_topk,
    unit_interval,
)
from napari_medattn.models.nets._layers import ConvStem, PatchMerging, resize_linear
from napari_medattn.models.nets.unet import dssa_stage_kwargs

__all__ = ["ClassificationHead", "DSSAPyramid", "MedFormer", "FPNHead", "dssa_stage"]


def check_dssa_arguments(n_stages: int, widths: Any, depths: Any, topk: Any, n_win: Any,
                         head_dim: Any, mlp_ratio: Any, token_keep: Any,
                         drop_path: Any) -> dict[str, Any]:
    """Validate the DSSA pyramid arguments shared by MedFormer and DSSA-UNet.

    Returns them normalised: tuples for the per-stage values (``n_win`` expanded to one
    entry per stage), floats for the rates.
    """
    widths = positive_ints(widths, "widths", length=n_stages)
    depths = positive_ints(depths, "depths", length=n_stages)
    topk = stage_topk(topk, n_stages)
    if isinstance(n_win, int) and not isinstance(n_win, bool):
        n_win = (n_win,) * n_stages
    n_win = positive_ints(n_win, "n_win", length=n_stages)
    head_dim = positive_int(head_dim, "head_dim")
    mlp_ratio = positive_number(mlp_ratio, "mlp_ratio")
    token_keep = unit_interval(token_keep, "token_keep", closed_right=True)
    if token_keep == 0.0:
        raise ModelError(f"token_keep must be in (0, 1], not {token_keep!r}.")
    drop_path = unit_interval(drop_path, "drop_path")
    return dict(widths=widths, depths=depths, topk=topk, n_win=n_win, head_dim=head_dim,
                mlp_ratio=mlp_ratio, token_keep=token_keep, drop_path=drop_path)


def dssa_stage(spatial_dims: int, width: int, depth: int, topk: int | None, n_win: int,
               head_dim: int, mlp_ratio: float, token_keep: float,
               drop_paths: Sequence[float]) -> nn.Sequential:
    """``depth`` DSSA blocks of one stage; ``topk`` None makes them full attention."""
    kwargs = dssa_stage_kwargs(topk, n_win, token_keep)
    return nn.Sequential(*(DSSABlock(spatial_dims, width, head_dim=head_dim, mlp_ratio=mlp_ratio,
                                     drop_path=drop_paths[i], **kwargs)
                           for i in range(depth)))


def drop_path_schedule(total_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``total_rate`` over all blocks,
    split per stage (the Swin/BiFormer rule)."""
    n = sum(depths)
    rates = [total_rate * i / max(n - 1, 1) for i in range(n)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


class DSSAPyramid(nn.Module):
    """MedFormer backbone: conv stem to 1/4, four DSSA stages at 1/4, 1/8, 1/16, 1/32.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Input channels.
    widths, depths : sequence of int
        Channels and number of DSSA blocks per stage (four entries each).
    topk : sequence of (int or None)
        Key regions each query region keeps, per stage; None = full attention.
    n_win : sequence of int
        Regions per axis, per stage (unused by full-attention stages).
    head_dim, mlp_ratio, token_keep
        As in :class:`~napari_medattn.models.blocks.dssa.DSSABlock`.
    drop_path : float
        Largest stochastic-depth rate (the last block's), rising linearly from 0.
    """

    def __init__(self, spatial_dims: int, in_channels: int, widths: Sequence[int],
                 depths: Sequence[int], topk: Sequence[int | None], n_win: Sequence[int],
                 head_dim: int, mlp_ratio: float, token_keep: float, drop_path: float) -> None:
        super().__init__()
        self.stem = ConvStem(spatial_dims, in_channels, widths[0])
        self.downsample = nn.ModuleList(
            [nn.Identity()] + [PatchMerging(spatial_dims, widths[i - 1], widths[i])
                               for i in range(1, len(widths))])
        rates = drop_path_schedule(drop_path, depths)
        self.stages = nn.ModuleList(
            dssa_stage(spatial_dims, widths[i], depths[i], topk[i], n_win[i], head_dim,
                       mlp_ratio, token_keep, rates[i]) for i in range(len(widths)))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's 1/2-resolution map and the four stage outputs (1/4 ... 1/32)."""
        half, x = self.stem.forward_features(x)
        features = []
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
            features.append(x)
        return half, features


class FPNHead(nn.Module):
    """Feature pyramid (top-down sum of 1x1 laterals, 3x3 smoothing), every level brought to
    the finest level's grid and fused by concatenation and a 3x3 convolution."""

    def __init__(self, spatial_dims: int, in_widths: Sequence[int], channels: int) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.lateral = nn.ModuleList(conv(w, channels, 1) for w in in_widths)
        self.smooth = nn.ModuleList(
            nn.Sequential(conv(channels, channels, 3, padding=1), ChannelsLayerNorm(channels),
                          nn.GELU()) for _ in in_widths)
        self.fuse = nn.Sequential(conv(channels * len(in_widths), channels, 3, padding=1),
                                  ChannelsLayerNorm(channels), nn.GELU())

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1],
                                                      size=laterals[i].shape[2:], mode="nearest")
        size = laterals[0].shape[2:]
        levels = [resize_linear(s(lat), size) if i else s(lat) for i, (s, lat) in enumerate(zip(self.smooth, laterals))]
        return self.fuse(torch.cat(levels, dim=1))


class ClassificationHead(nn.Module):
    """One logit per class from one stage's tokens: layer norm, pooling over the grid,
    dropout and a linear layer.

    Parameters
    ----------
    in_width : int
        Channels of the pooled stage.
    out_channels : int
        Classes (logits).
    dropout : float
        Dropout rate on the features, in [0, 1) (0: none).
    pool : {"mean", "max"}
        ``"mean"``: global average of the features, then the linear layer. ``"max"``: the
        linear layer on every token (one logit per class and token, :meth:`token_logits`),
        then the maximum over the tokens: a finding that fills one token out of hundreds
        sets the scan's logit instead of being averaged away (multiple-instance pooling).
    """

    def __init__(self, in_width: int, out_channels: int, dropout: float = 0.0,
                 pool: str = "mean") -> None:
        super().__init__()
        self.pool = check_choice(pool, ("mean", "max"), "classification head pooling")
        self.norm = ChannelsLayerNorm(in_width)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_width, out_channels)

    def token_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, out_channels, *grid)`` logits of each token of ``features``."""
        tokens = self.dropout(self.norm(features).flatten(2).transpose(1, 2))
        return self.linear(tokens).transpose(1, 2).reshape(
            features.shape[0], -1, *features.shape[2:])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.pool == "max":
            return self.token_logits(features).flatten(2).amax(dim=2)
        return self.linear(self.dropout(self.norm(features).flatten(2).mean(dim=2)))


class MedFormer(ConfiguredNet, nn.Module):
    """MedFormer in 2D or 3D: DSSA pyramid backbone with a classification or FPN head.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Input channels.
    out_channels : int
        Classes (logits).
    task : str
        ``"classification"``: :class:`ClassificationHead` on the last stage, output
        ``(B, out_channels)``. ``"segmentation"``: an FPN over the four stages fused at 1/4,
        a 1x1 classifier and linear upsampling to the input size, output
        ``(B, out_channels, *input_grid)``.
    widths, depths : sequence of int
        Channels and DSSA blocks per stage (four entries). Defaults are a CPU-sized model;
        ``preset="paper"`` gives BiFormer-T's sizes (64/128/256/512, 2/2/8/2), on which
        MedFormer builds.
    topk : sequence of (int or None)
        Regions kept per query region, per stage (default 1, 4, 16, all).
    n_win : int or sequence of int
        Regions per axis (per stage if a list).
    head_dim : int
        Features per attention head.
    mlp_ratio : float
        MLP width relative to the stage width.
    token_keep : float
        Fraction of gathered keys each query token keeps (DSSA's token-level selection).
    drop_path : float
        Largest stochastic-depth rate.
    fpn_channels : int, optional
        FPN width; default ``widths[0]``.
    head_dropout : float
        Dropout rate of the classification head (unused for segmentation).
    head_pool : {"mean", "max"}
        Pooling of the classification head (see :class:`ClassificationHead`).
    head_stage : int
        The stage (0-3) whose tokens the classification head pools; default the last.

    Notes
    -----
    For segmentation the input is padded at the end of each axis to a multiple of 32 and
    the logits are cropped back; classification pools over the unpadded input.
    """

    architecture = "medformer"
    TASKS = ("classification", "segmentation")
    PRESETS = {"paper": {"widths": [64, 128, 256, 512], "depths": [2, 2, 8, 2],
                         "drop_path": 0.1}}

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 task: str = "segmentation", widths: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] = (1, 1, 2, 1),
                 topk: Sequence[int | None] = (1, 4, 16, None), n_win: int | Sequence[int] = 7,
                 head_dim: int = 32, mlp_ratio: float = 3.0, token_keep: float = 1 / 8,
                 drop_path: float = 0.0, fpn_channels: int | None = None,
                 head_dropout: float = 0.0, head_pool: str = "mean",
                 head_stage: int = 3) -> None:
        super().__init__()
        spatial_dims, in_channels, out_channels = check_io(spatial_dims, in_channels,
                                                           out_channels)
        check_choice(task, self.TASKS, "MedFormer task")
        args = check_dssa_arguments(4, widths, depths, topk, n_win, head_dim, mlp_ratio,
                                    token_keep, drop_path)
        fpn = args["widths"][0] if fpn_channels is None else positive_int(fpn_channels,
                                                                          "fpn_channels")
        head_dropout = unit_interval(head_dropout, "head_dropout")
        check_choice(head_pool, ("mean", "max"), "head_pool")
        if not isinstance(head_stage, int) or not 0 <= head_stage < 4:
            raise ModelError(f"head_stage must be a stage index 0-3, not {head_stage!r}.")
        # Only a classifier's config names its head: segmentation configs (and the cards
        # holding them) stay as they were, and so do classifiers' of the default head.
        head = {}
        if task == "classification":
            head = {"head_dropout": head_dropout}
            if (head_pool, head_stage) != ("mean", 3):
                head.update(head_pool=head_pool, head_stage=head_stage)
        self._store_config(spatial_dims=spatial_dims, in_channels=in_channels,
                           out_channels=out_channels, task=task, **args, fpn_channels=fpn_channels,
                           **head)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.task = task
        self.backbone = DSSAPyramid(spatial_dims, in_channels, **args)
        self.head_stage = head_stage
        if task == "classification":
            self.head = ClassificationHead(args["widths"][head_stage], out_channels,
                                           head_dropout, head_pool)
        else:
            self.fpn = FPNHead(spatial_dims, args["widths"], fpn)
            self.head = conv_nd(spatial_dims)(fpn, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels)
        if self.task == "classification":
            _, features = self.backbone.forward_features(x)
            return self.head(features[self.head_stage])
        size = x.shape[2:]
        x, _ = pad_to_multiple(x, 32)
        _, features = self.backbone.forward_features(x)
        logits = self.head(self.fpn(features))
        return crop_to(resize_linear(logits, x.shape[2:]), size)
