"""Global multi-head self-attention over all positions of a feature map (Vaswani et al.,
NeurIPS 2017; as used in ViT, TransUNet and UNETR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import (
    PreNormBlock,
    check_input,
    check_spatial_dims,
    flatten_tokens,
    query_attention_row,
    unflatten_tokens,
)


def head_dim(channels: int, num_heads: int) -> int:
    """Channels per head; raises :class:`ModelError` unless ``num_heads`` divides
    ``channels``."""
    if num_heads < 1 or channels % num_heads:
        raise ModelError(
            f"{channels} channels cannot be split into {num_heads} attention heads."
        )
    return channels // num_heads


class MultiHeadSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention between all positions of a map.

    ``softmax(Q K^T / sqrt(d)) V`` per head, heads concatenated and projected (Vaswani et
    al., "Attention Is All You Need", NeurIPS 2017). Runs on
    ``torch.nn.functional.scaled_dot_product_attention``; memory grows as N^2 in the number
    of positions unless a fused kernel is available, so use it on coarse grids.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C of input and output; the embedding width.
    num_heads : int
        Number of heads; must divide ``channels``.
    qkv_bias : bool
        Whether the query/key/value projection has a bias.
    attn_drop : float
        Dropout on attention weights (training only).
    proj_drop : float
        Dropout after the output projection.

    Notes
    -----
    With a capture query, records ``attention`` (token kind, ``(B, H, 1, *grid)``): the
    query token's row ``softmax(q_i K^T / sqrt(d))`` computed alone, never the N x N matrix.
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int = 8,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = head_dim(channels, num_heads)
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        grid = tuple(x.shape[2:])
        return unflatten_tokens(self.forward_tokens(flatten_tokens(x), grid), grid)

    def forward_tokens(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Attention on a token sequence ``(B, N, C)`` laid out row-major on ``grid``.

        ``grid`` is only used to place a captured attention row; ``N`` must equal its size.
        """
        b, n, c = tokens.shape
        qkv = self.qkv(tokens).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        if capture.active():
            index = capture.query_tokens(grid)
            if index is not None:
                row = query_attention_row(q, k, index, self.scale)
                capture.record(self, "attention", row.reshape(b, self.num_heads, 1, *grid),
                               capture.MapKind.TOKEN)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class TransformerBlock(PreNormBlock):
    """Pre-norm transformer block on a feature map: ``x + MHSA(LN(x))``, then
    ``x + MLP(LN(x))``, each residual branch with stochastic depth.

    The encoder layer of ViT (Dosovitskiy et al., ICLR 2021), as used in the TransUNet
    bottleneck (Chen et al., 2021) and the UNETR encoder (Hatamizadeh et al., WACV 2022).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Embedding width C.
    num_heads : int
        Attention heads; must divide ``channels``.
    mlp_ratio : float
        MLP hidden width relative to C.
    drop_path : float
        Stochastic-depth probability of each residual branch.
    qkv_bias : bool
        Whether the query/key/value projection has a bias.
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, qkv_bias: bool = True) -> None:
        attn = MultiHeadSelfAttention(spatial_dims, channels, num_heads, qkv_bias=qkv_bias)
        super().__init__(spatial_dims, channels, attn, mlp_ratio=mlp_ratio, drop_path=drop_path)

    def forward_tokens(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """The same block on a token sequence ``(B, N, C)`` laid out row-major on ``grid``."""
        return flatten_tokens(self(unflatten_tokens(tokens, grid)))
