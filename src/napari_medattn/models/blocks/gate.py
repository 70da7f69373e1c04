"""Additive attention gate of Attention U-Net (Oktay et al., MIDL 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import DimensionError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_input, conv_nd

_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


class AttentionGate(nn.Module):
    """Additive attention gate: skip features weighted by a map the coarser decoder signal
    selects.

    ``alpha = sigmoid(psi(relu(Wx x + Wg g)))`` and ``out = x * alpha`` with ``Wx``, ``Wg``,
    ``psi`` 1x1 convolutions (Oktay et al., "Attention U-Net: Learning Where to Look for
    the Pancreas", MIDL 2018). The projected gating signal ``Wg g`` is resampled
    (bi/trilinear, cell-centred) to the skip grid, so ``g`` may be coarser than ``x``.
    The paper additionally sub-samples ``x`` by 2 before the sum; here both terms live on
    the skip grid, which keeps alpha at full skip resolution (as MONAI's AttentionBlock).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    skip_channels : int
        Channels of the skip features x.
    gate_channels : int
        Channels of the gating signal g.
    inter_channels : int, optional
        Width of the intermediate space; default ``max(1, skip_channels // 2)``.

    Notes
    -----
    Capture records ``alpha`` (spatial kind, ``(B, 1, *skip_grid)``).
    """

    def __init__(self, spatial_dims: int, skip_channels: int, gate_channels: int,
                 inter_channels: int | None = None) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        inter = inter_channels or max(1, skip_channels // 2)
        self.spatial_dims = spatial_dims
        self.skip_channels = skip_channels
        self.gate_channels = gate_channels
        # One bias is enough for the sum Wx x + Wg g.
        self.theta_x = conv(skip_channels, inter, 1, bias=False)
        self.phi_g = conv(gate_channels, inter, 1)
        self.psi = conv(inter, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Gate ``skip`` (B, Cs, *grid) by ``gate`` (B, Cg, *coarser or equal grid)."""
        check_input(skip, self.spatial_dims, self.skip_channels, "skip features")
        check_input(gate, self.spatial_dims, self.gate_channels, "gating signal")
        if gate.shape[0] != skip.shape[0]:
            raise DimensionError(
                f"The gating signal has batch size {gate.shape[0]} but the skip features "
                f"have {skip.shape[0]}."
            )
        g = self.phi_g(gate)
        if g.shape[2:] != skip.shape[2:]:
            g = F.interpolate(g, size=skip.shape[2:], mode=_LINEAR_MODE[self.spatial_dims],
                              align_corners=False)
        alpha = torch.sigmoid(self.psi(torch.relu(self.theta_x(skip) + g)))
        if capture.active():
            capture.record(self, "alpha", alpha, capture.MapKind.SPATIAL)
        return skip * alpha
