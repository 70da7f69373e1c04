"""Dimension-generic pieces shared by the attention blocks and the nets.

Everything here works on channels-first tensors ``(B, C, *grid)`` with ``len(grid)`` equal
to ``spatial_dims`` (2 or 3), so one block definition serves 2D slices and 3D volumes.
Token sequences are ``(B, N, C)`` with ``N = prod(grid)`` in row-major (C) order of the
grid, which is the order :func:`napari_medattn.models.capture.query_tokens` indexes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import DimensionError

__all__ = [
    "check_spatial_dims",
    "check_input",
    "as_tuple",
    "conv_nd",
    "conv_transpose_nd",
    "pool_nd",
    "norm_nd",
    "ChannelsLayerNorm",
    "DropPath",
    "ConvMLP",
    "PreNormBlock",
    "global_pool",
    "pad_to_multiple",
    "crop_to",
    "flatten_tokens",
    "unflatten_tokens",
    "query_attention_row",
]


def check_spatial_dims(spatial_dims: int) -> int:
    """Validate ``spatial_dims`` (2 or 3) and return it.

    Raises
    ------
    DimensionError
        If ``spatial_dims`` is not 2 or 3.
    """
    if spatial_dims not in (2, 3):
        raise DimensionError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}.")
    return int(spatial_dims)


def check_input(x: torch.Tensor, spatial_dims: int, channels: int | None = None,
                name: str = "input") -> None:
    """Raise a :class:`DimensionError` unless ``x`` is ``(B, channels, *grid)`` with
    ``len(grid) == spatial_dims``."""
    if x.ndim != spatial_dims + 2:
        raise DimensionError(
            f"The {name} must have shape (batch, channels, {'depth, ' if spatial_dims == 3 else ''}"
            f"height, width) for a {spatial_dims}D block, not {tuple(x.shape)}."
        )
    if channels is not None and x.shape[1] != channels:
        raise DimensionError(
            f"The {name} has {x.shape[1]} channels but the block was built for {channels}."
        )


def as_tuple(value: int | Sequence[int], spatial_dims: int, name: str = "value") -> tuple[int, ...]:
    """``value`` repeated per spatial axis if it is an int, else checked to have one entry
    per axis."""
    if isinstance(value, int):
        return (int(value),) * spatial_dims
    values = tuple(int(v) for v in value)
    if len(values) != spatial_dims:
        raise DimensionError(
            f"{name} needs {spatial_dims} entries (one per spatial axis), not {len(values)}."
        )
    return values


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {
    "avg": {2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "max": {2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "adaptive_avg": {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d},
    "adaptive_max": {2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d},
}
_NORM = {
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _CONV_T[check_spatial_dims(spatial_dims)]


def pool_nd(spatial_dims: int, kind: str = "avg") -> type[nn.Module]:
    """Pooling class for ``kind`` in ``{"avg", "max", "adaptive_avg", "adaptive_max"}``."""
    if kind not in _POOL:
        raise ValueError(f"Unknown pooling {kind!r}; choose one of {sorted(_POOL)}.")
    return _POOL[kind][check_spatial_dims(spatial_dims)]


def norm_nd(spatial_dims: int, kind: str = "batch") -> type[nn.Module]:
    """Normalisation class for ``kind`` in ``{"batch", "instance"}``.

    Layer norm over channels is :class:`ChannelsLayerNorm` (the same for every
    ``spatial_dims``); group norm is ``nn.GroupNorm``.
    """
    if kind not in _NORM:
        raise ValueError(f"Unknown normalisation {kind!r}; choose one of {sorted(_NORM)}.")
    return _NORM[kind][check_spatial_dims(spatial_dims)]


class ChannelsLayerNorm(nn.Module):
    """Layer normalisation over the channel axis of a channels-first map ``(B, C, *grid)``.

    Equal to ``nn.LayerNorm(channels)`` applied to every position's channel vector, which is
    what transformer blocks need on feature maps (``GroupNorm(1, C)`` would normalise over
    space as well).

    Parameters
    ----------
    channels : int
        Number of channels C.
    eps : float
        Added to the variance for stability.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop a residual branch per sample in training.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged;
    in eval mode (or with ``drop_prob == 0``) it is the identity.

    Parameters
    ----------
    drop_prob : float
        Probability in [0, 1) of dropping the branch for a sample.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), not {drop_prob}.")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class ConvMLP(nn.Module):
    """Transformer MLP on a channels-first map: 1x1 conv, GELU, dropout, 1x1 conv, dropout.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Input channels.
    hidden_channels : int, optional
        Hidden width; default ``round(channels * mlp_ratio)``.
    out_channels : int, optional
        Output channels; default ``channels``.
    mlp_ratio : float
        Hidden width relative to ``channels`` when ``hidden_channels`` is not given.
    drop : float
        Dropout probability after each layer.
    """

    def __init__(self, spatial_dims: int, channels: int, hidden_channels: int | None = None,
                 out_channels: int | None = None, mlp_ratio: float = 4.0,
                 drop: float = 0.0) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        hidden = hidden_channels or max(1, round(channels * mlp_ratio))
        self.fc1 = conv(channels, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = conv(hidden, out_channels or channels, kernel_size=1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def global_pool(x: torch.Tensor, kind: str = "avg") -> torch.Tensor:
    """Average (``"avg"``) or maximum (``"max"``) over the spatial axes of ``(B, C, *grid)``,
    kept as ``(B, C, 1, ...)`` so it broadcasts back onto ``x``."""
    axes = tuple(range(2, x.ndim))
    if kind == "avg":
        return x.mean(dim=axes, keepdim=True)
    if kind == "max":
        return x.amax(dim=axes, keepdim=True)
    raise ValueError(f"Unknown global pooling {kind!r}; choose 'avg' or 'max'.")


class PreNormBlock(nn.Module):
    """Pre-norm transformer block around any token mixer, on channels-first maps.

    ``x = x + DropPath(attn(LN(x)))`` then ``x = x + DropPath(MLP(LN(x)))``, the layout of
    ViT and Swin (layer norm over channels, :class:`ChannelsLayerNorm`).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C of input and output.
    attn : nn.Module
        The token mixer, mapping ``(B, C, *grid)`` to the same shape.
    mlp_ratio : float
        MLP hidden width relative to C.
    drop_path : float
        Stochastic-depth probability of each residual branch, in [0, 1).
    """

    def __init__(self, spatial_dims: int, channels: int, attn: nn.Module,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.norm1 = ChannelsLayerNorm(channels)
        self.attn = attn
        self.norm2 = ChannelsLayerNorm(channels)
        self.mlp = ConvMLP(spatial_dims, channels, mlp_ratio=mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def pad_to_multiple(x: torch.Tensor, multiples: int | Sequence[int],
                    value: float = 0.0) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes of ``x`` at their end up to a multiple of ``multiples``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, *grid)``.
    multiples : int or sequence of int
        Multiple per spatial axis (voxels).
    value : float
        Fill value of the padding.

    Returns
    -------
    padded : torch.Tensor
        ``x`` itself when no padding is needed, else the padded copy.
    pads : tuple of int
        Voxels appended per spatial axis; :func:`crop_to` with the original grid undoes it.
    """
    grid = x.shape[2:]
    mult = as_tuple(multiples, len(grid), "multiples")
    pads = tuple((-n) % m for n, m in zip(grid, mult))
    if not any(pads):
        return x, pads
    # F.pad lists (before, after) pairs from the last axis backwards.
    spec: list[int] = []
    for p in reversed(pads):
        spec += [0, p]
    return F.pad(x, spec, value=value), pads


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Keep the first ``shape[i]`` voxels of each spatial axis of ``(B, C, *grid)``."""
    index = (slice(None), slice(None)) + tuple(slice(0, int(n)) for n in shape)
    return x[index]


def flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *grid)`` to a token sequence ``(B, N, C)``, tokens in row-major grid order."""
    return x.flatten(2).transpose(1, 2)


def unflatten_tokens(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Token sequence ``(B, N, C)`` back to ``(B, C, *grid)``; the inverse of
    :func:`flatten_tokens`."""
    b, n, c = tokens.shape
    if n != math.prod(grid):
        raise DimensionError(f"{n} tokens cannot fill a grid of shape {tuple(grid)}.")
    return tokens.transpose(1, 2).reshape(b, c, *grid)


def query_attention_row(q: torch.Tensor, k: torch.Tensor, index: int, scale: float,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """One query token's attention row ``softmax(q_i K^T * scale + bias_i)``, for capture.

    Computes only the row of token ``index``, never the N x N matrix, so a capture costs
    O(N) memory per head.

    Parameters
    ----------
    q : torch.Tensor
        Queries ``(B, H, N, d)``.
    k : torch.Tensor
        Keys ``(B, H, M, d)``.
    index : int
        The query token (row-major on the query grid).
    scale : float
        Logit scale, usually ``d ** -0.5``.
    bias : torch.Tensor, optional
        Additive logit bias broadcastable to ``(B, H, 1, M)`` (position bias, masks).

    Returns
    -------
    torch.Tensor
        ``(B, H, 1, M)`` attention weights summing to one over the last axis.
    """
    logits = (q[:, :, index:index + 1] @ k.transpose(-2, -1)) * scale
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)
