"""Multi-head cross-attention between two feature maps (Vaswani et al., NeurIPS 2017),
the building block of attention-based fusion and registration."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import DimensionError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import (
    check_input,
    check_spatial_dims,
    flatten_tokens,
    query_attention_row,
    unflatten_tokens,
)
from napari_medattn.models.blocks.global_attention import head_dim


class CrossAttention(nn.Module):
    """Queries from ``x``, keys and values from ``context``: ``softmax(Q_x K_c^T / sqrt(d)) V_c``.

    Every position of ``x`` gathers information from all positions of ``context``, whose
    grid may differ in size (a coarser map, another modality).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    query_channels : int
        Channels of ``x``; the output has the same channels.
    context_channels : int
        Channels of ``context``.
    num_heads : int
        Heads; must divide ``dim``.
    dim : int, optional
        Attention width; default ``query_channels``.
    qkv_bias : bool
        Whether the query and key/value projections have a bias.

    Notes
    -----
    With a capture query (a voxel of the model input, located on ``x``'s grid), records
    ``attention`` (token kind, ``(B, H, 1, *context_grid)``).
    """

    def __init__(self, spatial_dims: int, query_channels: int, context_channels: int,
                 num_heads: int = 8, dim: int | None = None, qkv_bias: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.query_channels = query_channels
        self.context_channels = context_channels
        self.dim = dim or query_channels
        self.num_heads = num_heads
        self.head_dim = head_dim(self.dim, num_heads)
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(query_channels, self.dim, bias=qkv_bias)
        self.kv = nn.Linear(context_channels, 2 * self.dim, bias=qkv_bias)
        self.proj = nn.Linear(self.dim, query_channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend from ``x`` (B, Cq, *grid) to ``context`` (B, Cc, *context_grid)."""
        check_input(x, self.spatial_dims, self.query_channels, "query features")
        check_input(context, self.spatial_dims, self.context_channels, "context features")
        if context.shape[0] != x.shape[0]:
            raise DimensionError(
                f"The context has batch size {context.shape[0]} but the query features "
                f"have {x.shape[0]}."
            )
        b = x.shape[0]
        grid = tuple(x.shape[2:])
        context_grid = tuple(context.shape[2:])
        heads, d = self.num_heads, self.head_dim
        q = self.q(flatten_tokens(x)).reshape(b, -1, heads, d).transpose(1, 2)
        kv = self.kv(flatten_tokens(context)).reshape(b, -1, 2, heads, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, M, d)
        if capture.active():
            index = capture.query_tokens(grid)
            if index is not None:
                row = query_attention_row(q, k, index, self.scale)
                capture.record(self, "attention", row.reshape(b, heads, 1, *context_grid),
                               capture.MapKind.TOKEN)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, self.dim))
        return unflatten_tokens(out, grid)
