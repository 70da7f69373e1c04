"""Multimodal segmentation nets that accept any subset of their modalities.

* ``dmaf_net`` (:class:`DMAFNet`): a DMAF-Net-style 3D U-Net. One convolutional encoder per
  modality; at every stage a :class:`~napari_medattn.models.blocks.dmaf.DMAFBlock` fuses
  the present modalities' features by masked attention; one U-Net decoder on the fused
  skips. The distillation and training monitoring of DMAF-Net live in
  :mod:`napari_medattn.training.multimodal` as training options, not in the net.
* ``region_fusion_net`` (:class:`RegionFusionNet`): the late-fusion baseline: the same
  per-modality encoders and decoder, fused by region-aware modality weighting (RFNet's
  region-aware fusion, mmFormer's late fusion) instead of DMAF attention.
* ``early_fusion_unet`` (:class:`EarlyFusionUNet`): the early-fusion baseline: the
  modalities are the channels of one plain U-Net, a missing one zero-filled (trained with
  modality dropout).

All take ``x`` of shape ``(B, M, *grid)`` -- one channel per modality, in the order of
``config["modalities"]`` -- and ``present``, a ``(B, M)`` or ``(M,)`` bool mask (None:
all present). A missing modality's channel has no influence on the output, whatever it
holds. The card of a multimodal model names its modalities through the config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models.blocks.common import check_input, conv_nd, crop_to, pad_to_multiple
from napari_medattn.models.blocks.dmaf import DMAFBlock, presence_mask
from napari_medattn.models.blocks.region_fusion import RegionFusionBlock
from napari_medattn.models.brats import BRATS_MODALITIES
from napari_medattn.models.nets._config import (
    ConfiguredNet,
    check_io,
    positive_int,
    positive_ints,
)
from napari_medattn.models.nets._layers import ConvBlock, UpConv
from napari_medattn.models.nets.unet import UNet, heads_for

__all__ = ["DMAFNet", "RegionFusionNet", "EarlyFusionUNet", "check_modalities"]


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Modality names as a tuple of distinct non-empty lower-case strings, else ModelError."""
    if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence) \
            or not modalities or not all(isinstance(m, str) and m for m in modalities):
        raise ModelError(f"modalities must be a non-empty list of names, not {modalities!r}.")
    names = tuple(m.lower() for m in modalities)
    if len(set(names)) != len(names):
        raise ModelError(f"modalities must be distinct, not {list(modalities)}.")
    return names


def _zero_missing(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where, not a multiplication: a NaN in a missing channel must not survive.
    shape = (*mask.shape, *([1] * (x.ndim - 2)))
    return torch.where(mask.reshape(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))


class _MultimodalNet(ConfiguredNet, nn.Module):
    """Input checks shared by the multimodal nets."""

    modalities: tuple[str, ...]
    spatial_dims: int

    def _inputs(self, x: torch.Tensor, present) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, self.spatial_dims, len(self.modalities), "multimodal input")
        mask = presence_mask(present, x.shape[0], len(self.modalities), x.device)
        return _zero_missing(x, mask), mask


class _PerModalityUNet(_MultimodalNet):
    """One convolutional encoder per modality, a fusion block per stage, one U-Net decoder
    on the fused skips; subclasses choose the fusion block (:meth:`_fusion_block`)."""

    def _build(self, spatial_dims: int, modalities: tuple[str, ...], out_channels: int,
               channels: tuple[int, ...]) -> None:
        self.spatial_dims = spatial_dims
        self.modalities = modalities
        self.divisor = 2 ** (len(channels) - 1)
        self.encoders = nn.ModuleList()
        for _ in modalities:
            stages, previous = nn.ModuleList(), 1
            for s, width in enumerate(channels):
                stages.append(ConvBlock(spatial_dims, previous, width, stride=1 if s == 0 else 2))
                previous = width
            self.encoders.append(stages)
        self.fusion = nn.ModuleList(self._fusion_block(width) for width in channels)
        self.up = nn.ModuleList(UpConv(spatial_dims, channels[s + 1], channels[s])
                                for s in range(len(channels) - 1))
        self.decoder = nn.ModuleList(ConvBlock(spatial_dims, 2 * channels[s], channels[s])
                                     for s in range(len(channels) - 1))
        self.head = conv_nd(spatial_dims)(channels[0], out_channels, 1)

    def _fusion_block(self, width: int) -> nn.Module:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor, present: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, out_channels, *grid)`` and the last decoder features
        ``(B, channels[0], *grid)`` (what distillation aligns)."""
        x, mask = self._inputs(x, present)
        size = x.shape[2:]
        x, _ = pad_to_multiple(x, self.divisor)
        per_stage: list[list[torch.Tensor | None]] = [[] for _ in self.fusion]
        for m, encoder in enumerate(self.encoders):
            # A modality missing from the whole batch is not encoded at all (its features
            # would be zeroed by the fusion anyway).
            h = x[:, m:m + 1] if bool(mask[:, m].any()) else None
            for s, stage in enumerate(encoder):
                h = None if h is None else stage(h)
                per_stage[s].append(h)
        fused = []
        for s, block in enumerate(self.fusion):
            shape = next(h for h in per_stage[s] if h is not None).shape
            zeros = x.new_zeros(shape)
            stacked = torch.stack([zeros if h is None else h for h in per_stage[s]], dim=1)
            fused.append(block(stacked, mask))
        h = fused.pop()
        for s in reversed(range(len(self.decoder))):
            h = self.decoder[s](torch.cat([self.up[s](h), fused[s]], dim=1))
        features = crop_to(h, size)
        return self.head(features), features

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, out_channels, *grid)`` from ``x`` ``(B, M, *grid)``."""
        return self.forward_features(x, present)[0]


class DMAFNet(_PerModalityUNet):
    """DMAF-Net-style U-Net: per-modality encoders, DMAF fusion at every stage, one decoder.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    modalities : sequence of str
        Input modalities in channel order, e.g. ``("t1", "t1ce", "t2", "flair")``.
    out_channels : int
        Output classes (logits).
    channels : sequence of int
        Feature channels per stage (each encoder's and the decoder's); at least 2 stages.
    head_dim : int
        Channels per attention head in the fusion blocks.
    masking : bool
        Mask missing modalities out of the fusion attention; False is the ablation.

    Notes
    -----
    Capture records, per stage ``s``, ``fusion.<s>.weights`` (each modality's contribution)
    and ``fusion.<s>.attention`` (per voxel); see :class:`DMAFBlock`. Inputs of any size
    work (padded to a multiple of ``2**(len(channels)-1)``, logits cropped back).
    """

    architecture = "dmaf_net"

    def __init__(self, spatial_dims: int = 3, modalities: Sequence[str] = BRATS_MODALITIES,
                 out_channels: int = 4, channels: Sequence[int] = (8, 16, 32, 64),
                 head_dim: int = 8, masking: bool = True) -> None:
        super().__init__()
        modalities = check_modalities(modalities)
        spatial_dims, _, out_channels = check_io(spatial_dims, len(modalities), out_channels)
        channels = positive_ints(channels, "channels", min_length=2)
        head_dim = positive_int(head_dim, "head_dim")
        self._store_config(spatial_dims=spatial_dims, modalities=modalities,
                           out_channels=out_channels, channels=channels, head_dim=head_dim,
                           masking=bool(masking))
        self._head_dim, self._masking = head_dim, bool(masking)
        self._build(spatial_dims, modalities, out_channels, channels)

    def _fusion_block(self, width: int) -> nn.Module:
        return DMAFBlock(self.spatial_dims, width, len(self.modalities),
                         heads_for(width, self._head_dim), masking=self._masking)


class RegionFusionNet(_PerModalityUNet):
    """Region-aware late-fusion baseline (RFNet/mmFormer spirit): per-modality encoders,
    :class:`~napari_medattn.models.blocks.region_fusion.RegionFusionBlock` fusion of the
    present modalities at every stage, one shared decoder.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    modalities : sequence of str
        Input modalities in channel order.
    out_channels : int
        Output classes (logits); also the number of soft regions of the fusion.
    channels : sequence of int
        Feature channels per stage; at least 2 stages.

    Notes
    -----
    Capture records, per stage ``s``, ``fusion.<s>.weights`` (each modality's
    contribution) and ``fusion.<s>.regions`` (the soft region maps).
    """

    architecture = "region_fusion_net"

    def __init__(self, spatial_dims: int = 3, modalities: Sequence[str] = BRATS_MODALITIES,
                 out_channels: int = 4, channels: Sequence[int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        modalities = check_modalities(modalities)
        spatial_dims, _, out_channels = check_io(spatial_dims, len(modalities), out_channels)
        channels = positive_ints(channels, "channels", min_length=2)
        self._store_config(spatial_dims=spatial_dims, modalities=modalities,
                           out_channels=out_channels, channels=channels)
        self._regions = out_channels
        self._build(spatial_dims, modalities, out_channels, channels)

    def _fusion_block(self, width: int) -> nn.Module:
        return RegionFusionBlock(self.spatial_dims, width, len(self.modalities), self._regions)


class EarlyFusionUNet(_MultimodalNet):
    """Early-fusion baseline: the modalities are the input channels of one plain U-Net.

    A missing modality is zero-filled; training with modality dropout
    (:func:`napari_medattn.training.multimodal.draw_presence`) teaches the net to cope.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    modalities : sequence of str
        Input modalities in channel order.
    out_channels : int
        Output classes (logits).
    channels : sequence of int
        U-Net feature channels per stage.
    """

    architecture = "early_fusion_unet"

    def __init__(self, spatial_dims: int = 3, modalities: Sequence[str] = BRATS_MODALITIES,
                 out_channels: int = 4, channels: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        modalities = check_modalities(modalities)
        spatial_dims, _, out_channels = check_io(spatial_dims, len(modalities), out_channels)
        channels = positive_ints(channels, "channels", min_length=2)
        self._store_config(spatial_dims=spatial_dims, modalities=modalities,
                           out_channels=out_channels, channels=channels)
        self.spatial_dims = spatial_dims
        self.modalities = modalities
        self.unet = UNet(spatial_dims, len(modalities), out_channels, channels)

    def forward_features(self, x: torch.Tensor, present: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the last decoder features, as :meth:`DMAFNet.forward_features`."""
        x, _ = self._inputs(x, present)
        features: list[torch.Tensor] = []
        hook = self.unet.head.register_forward_pre_hook(lambda _m, args: features.append(args[0]))
        try:
            logits = self.unet(x)
        finally:
            hook.remove()
        return logits, crop_to(features[0], x.shape[2:])

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, out_channels, *grid)`` from ``x`` ``(B, M, *grid)``."""
        x, _ = self._inputs(x, present)
        return self.unet(x)

