"""Dual Sparse Selection Attention (DSSA) and the DSSA transformer block, 2D and 3D.

DSSA (MedFormer, DSSAU-Net) descends from BiFormer's bi-level routing attention. It
selects twice before attending:

1. **Regions.** The token grid is cut into ``n_win`` regions per axis. Queries and keys are
   averaged per region; each query region keeps the ``topk`` regions with the highest
   region-to-region affinity (a hard, non-differentiated choice). The keys and values of
   those regions are gathered.
2. **Tokens.** Each query token scores all gathered keys and keeps only the highest fraction
   ``token_keep`` of them; the softmax runs over the kept keys only.

A depth-wise convolution on V (LePE, locally-enhanced positional encoding) is added to the
attention output before a 1x1 output projection.

Inputs whose size is not a multiple of ``n_win`` are padded at the end of each axis after
the QKV projection and cropped back. Padding tokens are masked: they never enter a region's
average, a region made only of padding is never preferred in routing and is not computed as
a query region, and a padding key gets no attention weight. With every
region and every token kept the block is therefore exactly dense multi-head attention (plus
LePE and projection), on any input size.

Memory: query regions are processed in chunks of at most ``max_chunk_bytes`` of working
memory, so the score tensors never exceed that bound and the N x N matrix is never formed;
the rest of the block's memory is linear in the number of tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import (
    PreNormBlock,
    check_input,
    check_spatial_dims,
    conv_nd,
    crop_to,
    pad_to_multiple,
)

__all__ = ["DualSparseSelectionAttention", "DSSABlock"]


def _to_regions(x: torch.Tensor, n_win: int, spatial_dims: int) -> torch.Tensor:
    """``(*lead, F, *grid)``, every grid axis a multiple of ``n_win``, to ``(*lead, R, T, F)``.

    ``R = n_win ** d`` regions in row-major order of the region grid, ``T`` tokens per region
    in row-major order inside the region, the ``F`` features last. One copy.
    """
    n_lead = x.ndim - spatial_dims - 1
    grid = x.shape[n_lead + 1:]
    region = [n // n_win for n in grid]
    split: list[int] = []
    for r in region:
        split += [n_win, r]
    x = x.reshape(*x.shape[:n_lead + 1], *split)
    first = n_lead + 1
    perm = (list(range(n_lead)) + [first + 2 * i for i in range(spatial_dims)]
            + [first + 1 + 2 * i for i in range(spatial_dims)] + [n_lead])
    return x.permute(perm).reshape(*x.shape[:n_lead], n_win ** spatial_dims,
                                   math.prod(region), x.shape[n_lead])


def _from_regions(y: torch.Tensor, n_win: int, region: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`_to_regions`: ``(*lead, R, T, F)`` to ``(*lead, F, *grid)``."""
    d = len(region)
    n_lead = y.ndim - 3
    y = y.reshape(*y.shape[:n_lead], *([n_win] * d), *region, y.shape[-1])
    perm = list(range(n_lead)) + [n_lead + 2 * d]
    for i in range(d):
        perm += [n_lead + i, n_lead + d + i]
    return y.permute(perm).reshape(*y.shape[:n_lead], y.shape[-1],
                                   *(n_win * r for r in region))


class DualSparseSelectionAttention(nn.Module):
    """Dual Sparse Selection Attention on a channels-first map ``(B, C, *grid)``.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C of input and output; also the width of Q, K and V.
    num_heads : int, optional
        Attention heads; default ``channels // head_dim`` (at least 1). Must divide
        ``channels``; each head then has ``channels // num_heads`` features.
    head_dim : int
        Features per head used to derive ``num_heads`` when it is not given.
    n_win : int
        Regions per spatial axis. The input is padded (at the end of each axis) to a multiple
        of ``n_win`` tokens, so a region holds ``ceil(size / n_win)`` tokens per axis.
    topk : int, optional
        Regions each query region attends to. ``None`` or a value ``>= n_win ** d`` keeps
        every region (the DSSAU-Net's last stage); per-stage values such as 1, 4, 16 are
        set by the nets through this argument.
    token_keep : float
        Fraction in (0, 1] of the gathered keys each query token keeps:
        ``max(1, floor(token_keep * n_gathered))`` keys with ``n_gathered = topk * tokens per
        region``. The default 1/8 is the public code's ``topk * tokens_per_region // 8``;
        1.0 keeps all gathered keys.
    lepe_kernel : int
        Kernel size (voxels, odd) of the depth-wise LePE convolution on V.
    qkv_bias : bool
        Whether the QKV projection has a bias.
    max_chunk_bytes : int
        Working-memory bound (bytes) of one chunk of query regions: gathered keys/values,
        scores and weights. Larger chunks run fewer, bigger matrix products.

    Notes
    -----
    Attention capture (only inside :func:`napari_medattn.models.capture_attention`):

    * ``regions`` (routing, ``(B, n_win ** d, k)`` int64): the key regions each query region
      chose, best first (all regions in order when every region is kept; the rows of query
      regions made only of padding are not used). Meta ``grid`` is the region grid
      ``(n_win,) * d`` (indices are row-major on it), ``region_size`` the tokens per region
      per axis on the block's (unpadded) input grid, and ``padded_grid``.
    * ``tokens`` (routing, ``(B, H, n_keep)`` int64), when a query voxel was given: the keys
      the query token kept, per head, as row-major indices on the block's unpadded input
      grid, best first; ``-1`` marks a kept slot that fell on padding (only when fewer real
      keys than ``n_keep`` were gathered; such slots carry zero weight).
    * ``attention`` (token, ``(B, H, 1, *grid)``): the query token's softmax weights over
      the unpadded grid, zero on every key it did not keep.

    The query token is :func:`napari_medattn.models.capture.query_tokens` of the block's
    unpadded input grid, so maps line up with the input field of view.

    Precision: the selections are hard, so under bfloat16 autocast near-tied scores can
    keep other regions or keys than in float32. The output then differs by more than
    rounding at a few positions (3D, 64 channels, 16^3, ``n_win=4``, ``topk=4``: largest
    difference 0.17 and mean 0.003 against a mean magnitude of 0.19; with every key kept,
    0.006 and 0.0007).
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int | None = None,
                 head_dim: int = 32, n_win: int = 7, topk: int | None = 4,
                 token_keep: float = 1 / 8, lepe_kernel: int = 3, qkv_bias: bool = True,
                 max_chunk_bytes: int = 64 * 2 ** 20) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if num_heads is None:
            num_heads = max(1, channels // head_dim)
        if channels < 1 or num_heads < 1 or channels % num_heads:
            raise ModelError(
                f"DSSA needs channels ({channels}) divisible by the number of heads ({num_heads})."
            )
        if n_win < 1:
            raise ModelError(f"DSSA needs at least one region per axis, not n_win={n_win}.")
        if topk is not None and topk < 1:
            raise ModelError(f"DSSA topk must be at least 1 (or None for all), not {topk}.")
        if not 0.0 < token_keep <= 1.0:
            raise ModelError(f"DSSA token_keep must be in (0, 1], not {token_keep}.")
        if lepe_kernel < 1 or lepe_kernel % 2 == 0:
            raise ModelError(f"The LePE kernel must be odd and positive, not {lepe_kernel}.")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = self.head_dim ** -0.5
        self.n_win = n_win
        self.topk = topk
        self.token_keep = token_keep
        self.max_chunk_bytes = max_chunk_bytes
        conv = conv_nd(spatial_dims)
        self.qkv = conv(channels, 3 * channels, kernel_size=1, bias=qkv_bias)
        self.lepe = conv(channels, channels, kernel_size=lepe_kernel, padding=lepe_kernel // 2,
                         groups=channels)
        self.proj = conv(channels, channels, kernel_size=1)

    def n_regions_kept(self, n_regions: int) -> int:
        """Regions each query region attends to, for a grid of ``n_regions`` regions."""
        return n_regions if self.topk is None else min(self.topk, n_regions)

    def n_tokens_kept(self, n_gathered: int) -> int:
        """Keys each query token keeps out of ``n_gathered`` gathered keys."""
        return min(n_gathered, max(1, math.floor(self.token_keep * n_gathered + 1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        b, c = x.shape[:2]
        grid = tuple(x.shape[2:])
        heads, hd, n_win = self.num_heads, self.head_dim, self.n_win

        qkv = self.qkv(x)
        lepe = self.lepe(qkv[:, 2 * c:])
        # Pad after the projection, so padding tokens are exact zeros that the masks below
        # keep out of routing and attention.
        qkv, pads = pad_to_multiple(qkv, n_win)
        padded = tuple(qkv.shape[2:])
        region = tuple(n // n_win for n in padded)
        n_reg, n_tok = n_win ** self.spatial_dims, math.prod(region)
        # Q, K and V each (B, H, R, T, hd), contiguous, so the key/value regions a chunk
        # needs are whole blocks of the merged (B, H, R) axis that one index_select copies.
        q, k, v = _to_regions(qkv.reshape(b, 3, heads, hd, *padded).transpose(0, 1), n_win,
                              self.spatial_dims)

        # Row-major index of every padded-grid token on the unpadded grid, -1 for padding.
        token_index = torch.arange(math.prod(grid), device=x.device).reshape(1, 1, *grid)
        token_index = pad_to_multiple(token_index, n_win, value=-1)[0]
        token_index = _to_regions(token_index[0], n_win, self.spatial_dims).reshape(n_reg, n_tok)
        has_padding = any(pads)
        key_valid = token_index >= 0 if has_padding else None

        k_kept = self.n_regions_kept(n_reg)
        route = self._route(q, k, key_valid, k_kept)  # (B, R, k) or None for all regions
        n_gathered = k_kept * n_tok
        n_keep = self.n_tokens_kept(n_gathered)

        recording = capture.active()
        query = capture.query_tokens(grid) if recording else None
        query_region = query_slot = None
        if query is not None:
            coords = torch.unravel_index(torch.tensor(query), grid)
            query_region = query_slot = 0
            for cz, r in zip(coords, region):
                query_region = query_region * n_win + int(cz) // r
                query_slot = query_slot * r + int(cz) % r

        # Working bytes per query region: gathered K and V, then scores, kept weights and
        # the dense weight matrix.
        per_region = q.element_size() * b * heads * (2 * n_gathered * hd + 3 * n_tok * n_gathered)
        chunk = max(1, self.max_chunk_bytes // max(per_region, 1))
        # Query regions made only of padding (where an axis is shorter than n_win regions
        # need) are skipped: their output is cropped away. Their rows of ``out`` stay zero.
        active = (list(range(n_reg)) if key_valid is None
                  else key_valid.any(dim=1).nonzero().flatten().tolist())
        out = q.new_zeros(b, heads, n_reg, n_tok, hd)
        # Offset of each (batch, head) block of regions on the merged (B, H, R) axis.
        block_offset = torch.arange(b * heads, device=x.device).reshape(b, heads, 1) * n_reg
        kept_row = None
        for start in range(0, len(active), chunk):
            ids = active[start:start + chunk]
            # A run of consecutive regions is a slice (a view); otherwise an index tensor.
            rows = (slice(ids[0], ids[-1] + 1) if ids[-1] - ids[0] + 1 == len(ids)
                    else torch.tensor(ids, device=x.device))
            if route is None:
                # Every region: attend to the whole (padded) grid without copying K and V.
                keys = k.reshape(b, heads, 1, n_reg * n_tok, hd)
                values = v.reshape(b, heads, 1, n_reg * n_tok, hd)
                valid = None if key_valid is None else key_valid.reshape(1, 1, 1, 1, -1)
            else:
                sel = route[:, rows]  # (B, c, k)
                flat = (sel.reshape(b, 1, -1) + block_offset).reshape(-1)
                shape = (b, heads, len(ids), n_gathered, hd)
                keys = k.reshape(-1, n_tok, hd).index_select(0, flat).reshape(shape)
                values = v.reshape(-1, n_tok, hd).index_select(0, flat).reshape(shape)
                valid = (None if key_valid is None
                         else key_valid[sel].reshape(b, 1, len(ids), 1, n_gathered))
            scores = (q[:, :, rows] * self.scale) @ keys.transpose(-2, -1)
            if valid is not None:
                scores = scores.masked_fill(~valid, float("-inf"))
            if n_keep < n_gathered:
                # Unsorted top-k is cheaper; the softmax does not depend on the order.
                top_scores, top_index = scores.topk(n_keep, dim=-1, sorted=False)
                kept_weights = top_scores.softmax(dim=-1)
                # CUDA autocast runs softmax in float32 while the scores are bfloat16/half:
                # the dense weights take the softmax's dtype (the matmul casts them back).
                weights = torch.zeros_like(scores, dtype=kept_weights.dtype).scatter_(
                    -1, top_index, kept_weights)
            else:
                top_index = None
                weights = kept_weights = scores.softmax(dim=-1)
            out[:, :, rows] = weights @ values
            if query_region in ids:
                row = (ids.index(query_region), query_slot)
                kept_row = (kept_weights[:, :, row[0], row[1]],
                            None if top_index is None else top_index[:, :, row[0], row[1]])

        attended = crop_to(_from_regions(out, n_win, region).reshape(b, c, *padded), grid)
        y = self.proj(attended + lepe)

        if recording:
            self._record(route, b, n_reg, region, padded, grid, token_index, query,
                         query_region, kept_row)
        return y

    def _route(self, q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor | None,
               k_kept: int) -> torch.Tensor | None:
        """Top-``k_kept`` key regions per query region, ``(B, R, k_kept)``; None for all.

        Regions are averaged over their real (non-padding) tokens; a key region made only of
        padding gets affinity -inf so it is chosen last. The choice is not differentiated.
        """
        b, heads, n_reg, n_tok, hd = q.shape
        if k_kept >= n_reg:
            return None
        with torch.no_grad():
            q_sum = q.sum(dim=3).transpose(1, 2).reshape(b, n_reg, heads * hd)
            k_sum = k.sum(dim=3).transpose(1, 2).reshape(b, n_reg, heads * hd)
            if key_valid is None:
                count = q_sum.new_full((n_reg, 1), float(n_tok))
            else:
                count = key_valid.sum(dim=1, keepdim=True).to(q_sum.dtype)
            affinity = (q_sum / count.clamp(min=1)) @ (k_sum / count.clamp(min=1)).transpose(1, 2)
            if key_valid is not None:
                affinity = affinity.masked_fill(count.reshape(1, 1, n_reg) == 0, float("-inf"))
            return affinity.topk(k_kept, dim=-1).indices

    def _record(self, route: torch.Tensor | None, b: int, n_reg: int, region: tuple[int, ...],
                padded: tuple[int, ...], grid: tuple[int, ...], token_index: torch.Tensor,
                query: int | None, query_region: int | None, kept_row) -> None:
        """Report the region routing and, for the query token, the kept keys and weights."""
        if route is None:
            route = torch.arange(n_reg, device=token_index.device).expand(b, n_reg, n_reg)
        capture.record(self, "regions", route, capture.MapKind.ROUTING,
                       grid=(self.n_win,) * self.spatial_dims, region_size=region,
                       padded_grid=padded)
        if query is None or kept_row is None:
            return
        kept_weights, top_index = kept_row  # (B, H, n_keep), (B, H, n_keep) or None
        # Grid index of every gathered key of the query region, in gathered order.
        gathered = token_index[route[:, query_region]].reshape(b, 1, -1)
        gathered = gathered.expand(b, self.num_heads, -1)
        if top_index is None:
            kept = gathered
        else:
            order = kept_weights.argsort(dim=-1, descending=True)  # best first
            kept_weights = kept_weights.gather(2, order)
            kept = gathered.gather(2, top_index.gather(2, order))
        capture.record(self, "tokens", kept, capture.MapKind.ROUTING, grid=grid, query=query)
        n = math.prod(grid)
        # Padding slots (-1) go to an extra bin that is dropped; their weight is zero anyway.
        dense = kept_weights.new_zeros(b, self.num_heads, n + 1)
        dense.scatter_add_(2, torch.where(kept < 0, n, kept), kept_weights)
        capture.record(self, "attention", dense[:, :, :n].reshape(b, self.num_heads, 1, *grid),
                       capture.MapKind.TOKEN, query=query)


class DSSABlock(PreNormBlock):
    """The MedFormer / BiFormer transformer block with DSSA as its token mixer.

    ``x = x + dwconv(x)`` (depth-wise position encoding), then the pre-norm DSSA and pre-norm
    MLP branches of :class:`~napari_medattn.models.blocks.common.PreNormBlock`, each with a
    residual connection and stochastic depth.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C of input and output.
    num_heads, head_dim, n_win, topk, token_keep, lepe_kernel
        As in :class:`DualSparseSelectionAttention`.
    mlp_ratio : float
        MLP hidden width relative to ``channels`` (BiFormer uses 3).
    drop_path : float
        Stochastic-depth probability of each residual branch, in [0, 1).
    pos_kernel : int
        Kernel size (voxels, odd) of the depth-wise position-encoding convolution.
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int | None = None,
                 head_dim: int = 32, n_win: int = 7, topk: int | None = 4,
                 token_keep: float = 1 / 8, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 lepe_kernel: int = 3, pos_kernel: int = 3) -> None:
        attn = DualSparseSelectionAttention(
            spatial_dims, channels, num_heads=num_heads, head_dim=head_dim, n_win=n_win,
            topk=topk, token_keep=token_keep, lepe_kernel=lepe_kernel)
        super().__init__(spatial_dims, channels, attn, mlp_ratio=mlp_ratio, drop_path=drop_path)
        if pos_kernel < 1 or pos_kernel % 2 == 0:
            raise ModelError(f"The position-encoding kernel must be odd, not {pos_kernel}.")
        self.pos_embed = conv_nd(spatial_dims)(channels, channels, kernel_size=pos_kernel,
                                               padding=pos_kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        return super().forward(x + self.pos_embed(x))
