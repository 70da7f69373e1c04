"""Non-local block, embedded Gaussian form (Wang et al., CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.models import capture
from napari_medattn.models.blocks.common import (
    check_input,
    conv_nd,
    flatten_tokens,
    query_attention_row,
    unflatten_tokens,
)


class NonLocalBlock(nn.Module):
    """Embedded Gaussian non-local block with a residual connection.

    ``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)`` and ``z = x + W y``, with
    ``theta``, ``phi``, ``g`` and ``W`` 1x1 convolutions (Wang, Girshick, Gupta, He,
    "Non-local Neural Networks", CVPR 2018). The logits are not scaled by 1/sqrt(d), as in
    the paper. ``W`` starts at zero, so a freshly built block is the identity and can be
    inserted into a pretrained network without changing it.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels C of input and output.
    inter_channels : int, optional
        Width of the embeddings; default ``max(1, C // 2)`` as in the paper.

    Notes
    -----
    With a capture query, records ``attention`` (token kind, ``(B, 1, 1, *grid)``): the
    query position's row of the softmax, computed alone.
    """

    def __init__(self, spatial_dims: int, channels: int,
                 inter_channels: int | None = None) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        inter = inter_channels or max(1, channels // 2)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.theta = conv(channels, inter, 1)
        self.phi = conv(channels, inter, 1)
        self.g = conv(channels, inter, 1)
        self.out = conv(inter, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.channels)
        grid = tuple(x.shape[2:])
        # One "head": (B, 1, N, inter)
        q = flatten_tokens(self.theta(x)).unsqueeze(1)
        k = flatten_tokens(self.phi(x)).unsqueeze(1)
        v = flatten_tokens(self.g(x)).unsqueeze(1)
        if capture.active():
            index = capture.query_tokens(grid)
            if index is not None:
                row = query_attention_row(q, k, index, scale=1.0)
                capture.record(self, "attention", row.reshape(x.shape[0], 1, 1, *grid),
                               capture.MapKind.TOKEN)
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0).squeeze(1)
        return x + self.out(unflatten_tokens(y, grid))
