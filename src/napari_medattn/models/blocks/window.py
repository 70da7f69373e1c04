"""Shifted-window self-attention with relative position bias (Swin Transformer, Liu et
al., ICCV 2021; 3D as in Video Swin and Swin UNETR)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import (
    PreNormBlock,
    as_tuple,
    check_input,
    check_spatial_dims,
    crop_to,
    pad_to_multiple,
    query_attention_row,
)
from napari_medattn.models.blocks.global_attention import head_dim

# Logit added where a key must not be seen (Swin's value): finite, so a row whose keys are
# all masked (a padded query, cropped away afterwards) stays finite instead of NaN.
_MASKED = -100.0


@functools.lru_cache(maxsize=32)
def relative_position_index(window: tuple[int, ...], table_window: tuple[int, ...]) -> torch.Tensor:
    """Row into the bias table for every (query, key) pair of a window, ``(Wn, Wn)`` long.

    The table is built for ``table_window`` and holds one entry per relative offset
    (``prod(2 T - 1)`` entries); ``window`` may be smaller (a window clipped to a small
    input), whose offsets are a subset.
    """
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij"))
    coords = coords.flatten(1)  # (D, Wn), row-major over the window
    rel = coords[:, :, None] - coords[:, None, :]  # (D, Wn, Wn)
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, t in enumerate(table_window):
        index = index * (2 * t - 1) + rel[axis] + t - 1
    return index


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, C, *grid)`` with grid a multiple of ``window`` to ``(B, nW, Wn, C)``: windows in
    row-major order of the window grid, tokens row-major inside each window."""
    b, c, *grid = x.shape
    dims = len(window)
    counts = [n // w for n, w in zip(grid, window)]
    split = [b, c] + [v for n, w in zip(counts, window) for v in (n, w)]
    perm = [0] + [2 + 2 * i for i in range(dims)] + [3 + 2 * i for i in range(dims)] + [1]
    return x.reshape(split).permute(perm).reshape(b, math.prod(counts), math.prod(window), c)


def window_merge(tokens: torch.Tensor, grid: Sequence[int], window: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, Wn, C)`` to ``(B, C, *grid)``."""
    b, _, _, c = tokens.shape
    dims = len(window)
    counts = [n // w for n, w in zip(grid, window)]
    x = tokens.reshape(b, *counts, *window, c)
    perm = [0, 2 * dims + 1] + [v for i in range(dims) for v in (1 + i, 1 + dims + i)]
    return x.permute(perm).reshape(b, c, *grid)


def _window_mask(grid: Sequence[int], pads: Sequence[int], window: Sequence[int],
                 shifts: Sequence[int], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Which windows need a mask, and their additive masks, on the rolled, padded grid.

    A key is hidden from a query when the cyclic shift brought it from another part of
    the volume (Swin's region labels) or when it is padding. Only windows on the far
    border along a padded or shifted axis are affected, so masks are built for those alone
    (a mask for every window would cost as much memory as the attention itself).

    Returns
    -------
    (windows, mask) or None
        ``windows`` (long, ``(nM,)``) the affected windows in ascending order; ``mask``
        ``(nM, 1, Wn, Wn)`` with 0 (visible) or a large negative logit (hidden). None when
        nothing is padded or shifted.
    """
    if not any(pads) and not any(shifts):
        return None
    dims = len(grid)
    labels = torch.zeros(grid, dtype=torch.long, device=device)
    valid = torch.ones(grid, dtype=torch.bool, device=device)
    for axis, (n, w, s, p) in enumerate(zip(grid, window, shifts, pads)):
        view = [1] * dims
        view[axis] = n
        if s:
            # In the rolled frame the last window mixes [n-w, n-s) with the wrapped [n-s, n).
            region = torch.zeros(n, dtype=torch.long, device=device)
            region[n - w:n - s] = 1
            region[n - s:] = 2
            labels = labels * 3 + region.reshape(view)
        if p:
            axis_valid = torch.arange(n, device=device) < n - p
            valid = valid & axis_valid.reshape(view)
    if any(shifts):
        valid = torch.roll(valid, shifts=tuple(-s for s in shifts), dims=tuple(range(dims)))
    win_labels = window_partition(labels[None, None], window)[0, ..., 0]  # (nW, Wn)
    win_valid = window_partition(valid[None, None], window)[0, ..., 0]
    affected = ((win_labels != win_labels[:, :1]).any(1) | ~win_valid.all(1)).nonzero()[:, 0]
    win_labels, win_valid = win_labels[affected], win_valid[affected]
    hidden = (win_labels[:, :, None] != win_labels[:, None, :]) | ~win_valid[:, None, :]
    return affected, (hidden.to(torch.float32) * _MASKED).unsqueeze(1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, optionally shifted.

    The map is padded at its end to a multiple of the window, optionally rolled by half a
    window (``shift=True``), split into windows of ``Wn`` tokens, and each window runs
    ``softmax(Q K^T / sqrt(d) + B) V`` with a learned relative position bias ``B`` (Liu et
    al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV
    2021). Keys brought in by the roll from the far side and padded keys are masked. The
    result is rolled back and cropped, so output and input have the same shape.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C of input and output.
    num_heads : int
        Heads; must divide ``channels``.
    window_size : int or sequence of int
        Window size (voxels) per axis. Along an axis shorter than its window, the window is
        clipped to the axis length and that axis is not shifted.
    qkv_bias : bool
        Whether the query/key/value projection has a bias.
    shift : bool
        Roll by ``window_size // 2`` before partitioning (the odd blocks of a Swin stage).

    Notes
    -----
    With a capture query, records ``attention`` (token kind, ``(B, H, 1, *grid)``): the
    query token's attention over its own window, placed on the full grid, zero elsewhere.
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int,
                 window_size: int | Sequence[int], qkv_bias: bool = True,
                 shift: bool = False) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = head_dim(channels, num_heads)
        self.scale = self.head_dim ** -0.5
        self.window_size = as_tuple(window_size, spatial_dims, "window_size")
        if min(self.window_size) < 1:
            raise ModelError(f"Window sizes must be positive, not {self.window_size}.")
        self.shift = bool(shift)
        table_rows = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        b, c, *grid = x.shape
        dims = self.spatial_dims
        window = tuple(min(w, n) for w, n in zip(self.window_size, grid))
        shifts = tuple(w // 2 if self.shift and n > w else 0 for w, n in zip(window, grid))
        axes = tuple(range(2, 2 + dims))

        x, pads = pad_to_multiple(x, window)
        padded = tuple(x.shape[2:])
        if any(shifts):
            x = torch.roll(x, shifts=tuple(-s for s in shifts), dims=axes)
        tokens = window_partition(x, window)  # (B, nW, Wn, C)
        n_win, n_tok = tokens.shape[1:3]
        qkv = self.qkv(tokens).reshape(b, n_win, n_tok, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, H, Wn, d)

        index = relative_position_index(window, self.window_size).to(x.device)
        bias = self.relative_position_bias_table[index.flatten()]
        bias = bias.reshape(n_tok, n_tok, self.num_heads).permute(2, 0, 1)  # (H, Wn, Wn)
        bias = bias.to(q.dtype)
        mask = _window_mask(padded, pads, window, shifts, x.device)

        if capture.active():
            query = capture.query_tokens(grid)
            if query is not None:
                self._record_query(query, grid, padded, window, shifts, q, k, bias, mask)

        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            # Windows without padding or wrapped keys share one bias; the rest add a mask.
            masked, window_mask = mask
            plain = torch.ones(n_win, dtype=torch.bool, device=x.device)
            plain[masked] = False
            plain = plain.nonzero()[:, 0]
            parts = [F.scaled_dot_product_attention(
                q[:, masked], k[:, masked], v[:, masked],
                attn_mask=bias + window_mask.to(q.dtype), scale=self.scale)]
            if plain.numel():
                parts.append(F.scaled_dot_product_attention(
                    q[:, plain], k[:, plain], v[:, plain], attn_mask=bias, scale=self.scale))
            order = torch.cat([masked, plain])
            out = torch.cat(parts, dim=1)[:, torch.argsort(order)]
        out = self.proj(out.transpose(2, 3).reshape(b, n_win, n_tok, c))
        out = window_merge(out, padded, window)
        if any(shifts):
            out = torch.roll(out, shifts=shifts, dims=axes)
        return crop_to(out, grid)

    def _record_query(self, query: int, grid: Sequence[int], padded: Sequence[int],
                      window: Sequence[int], shifts: Sequence[int], q: torch.Tensor,
                      k: torch.Tensor, bias: torch.Tensor,
                      mask: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Record the query token's window row, scattered onto the (unpadded) grid."""
        position = [int(p) for p in torch.unravel_index(torch.tensor(query), tuple(grid))]
        rolled = [(p - s) % n for p, s, n in zip(position, shifts, padded)]
        counts = [n // w for n, w in zip(padded, window)]
        win = 0
        tok = 0
        for r, w, n_w in zip(rolled, window, counts):
            win = win * n_w + r // w
            tok = tok * w + r % w
        row_bias = bias[:, tok:tok + 1]  # (H, 1, Wn)
        if mask is not None and bool((mask[0] == win).any()):
            row_bias = row_bias + mask[1][mask[0] == win][0, :, tok:tok + 1].to(bias.dtype)
        row = query_attention_row(q[:, win], k[:, win], tok, self.scale, bias=row_bias)
        b, n_win = q.shape[:2]
        scattered = row.new_zeros(b, n_win, row.shape[-1], self.num_heads)
        scattered[:, win] = row[:, :, 0].transpose(1, 2)
        full = window_merge(scattered, padded, window)  # (B, H, *padded)
        if any(shifts):
            full = torch.roll(full, shifts=tuple(shifts), dims=tuple(range(2, full.ndim)))
        capture.record(self, "attention", crop_to(full, grid).unsqueeze(2),
                       capture.MapKind.TOKEN, window=tuple(window), shift=tuple(shifts))


class SwinBlock(PreNormBlock):
    """Swin transformer block on a feature map: ``x + W-MSA(LN(x))`` then ``x + MLP(LN(x))``.

    Stack blocks with ``shift`` alternating False, True to connect neighbouring windows
    (Liu et al., ICCV 2021; Swin UNETR, Hatamizadeh et al., 2022, for 3D).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C.
    num_heads : int
        Heads; must divide ``channels``.
    window_size : int or sequence of int
        Window size (voxels) per axis, clipped to the input size.
    shift : bool
        Shifted-window variant.
    mlp_ratio : float
        MLP hidden width relative to C.
    drop_path : float
        Stochastic-depth probability of each residual branch.
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int,
                 window_size: int | Sequence[int] = 7, shift: bool = False,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        attn = WindowAttention(spatial_dims, channels, num_heads, window_size, shift=shift)
        super().__init__(spatial_dims, channels, attn, mlp_ratio=mlp_ratio, drop_path=drop_path)
