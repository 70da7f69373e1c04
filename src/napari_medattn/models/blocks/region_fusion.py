"""Region-aware fusion of per-modality features, in the spirit of RFNet's region-aware
fusion module (and mmFormer's late fusion): the late-fusion baseline of incomplete
multi-modal segmentation.

At every voxel the block predicts soft region maps ``p_k`` (``K`` regions, a softmax over
``K``) from the mean of the present modalities' features, and for every region a
weighting of the modalities ``w_{k,m}`` (a softmax over the present modalities only, from
their concatenated features). The fused feature is
``proj(sum_k p_k * sum_m w_{k,m} * f_m)``: each region picks the modalities that see it
best (e.g. FLAIR for oedema, T1ce for the enhancing rim). Missing modalities are zeroed
and masked out of the softmax, so they cannot contribute. Unlike RFNet, the region maps
are not supervised by an extra loss: they are learned through the segmentation loss.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_spatial_dims, conv_nd
from napari_medattn.models.blocks.dmaf import masked_features

__all__ = ["RegionFusionBlock"]


class RegionFusionBlock(nn.Module):
    """Fuse ``M`` per-modality feature maps into one by region-aware modality weighting.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels of each modality's features and of the fused output.
    n_modalities : int
        ``M``.
    n_regions : int
        ``K``, the soft regions the weighting is specific to (e.g. the 4 BraTS classes).

    Notes
    -----
    Records (capture on) ``weights``: channel kind, ``(B, M)``, each modality's mean
    contribution ``sum_k p_k w_{k,m}`` over voxels (0 for a missing modality, sums to 1),
    and ``regions``: spatial kind, ``(B, K, *grid)``, the soft region maps.
    """

    def __init__(self, spatial_dims: int, channels: int, n_modalities: int,
                 n_regions: int = 4) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.n_modalities = n_modalities
        self.n_regions = n_regions
        conv = conv_nd(spatial_dims)
        self.region_logits = conv(channels, n_regions, 1)
        self.weight_logits = conv(n_modalities * channels, n_regions * n_modalities, 1)
        self.proj = conv(channels, channels, 1)

    def forward(self, features: torch.Tensor, present: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Fuse ``features`` (B, M, C, *grid) into (B, C, *grid); ``present`` as
        :class:`~napari_medattn.models.blocks.dmaf.DMAFBlock` takes it."""
        features, mask = masked_features(features, present, n_modalities=self.n_modalities,
                                         channels=self.channels,
                                         spatial_dims=self.spatial_dims)
        b, m, c = features.shape[:3]
        grid = tuple(features.shape[3:])
        count = mask.sum(1).to(features.dtype).reshape(b, *([1] * (len(grid) + 1)))
        regions = self.region_logits(features.sum(1) / count).softmax(1)  # (B, K, *grid)
        logits = self.weight_logits(features.reshape(b, m * c, *grid))
        logits = logits.reshape(b, self.n_regions, m, *grid)
        missing = ~mask.reshape(b, 1, m, *([1] * len(grid)))
        weights = logits.masked_fill(missing, float("-inf")).softmax(2)  # over modalities
        contribution = (regions[:, :, None] * weights).sum(1)  # (B, M, *grid), sums to 1
        fused = (contribution[:, :, None] * features).sum(1)
        if capture.active():
            capture.record(self, "weights", contribution.flatten(2).mean(2),
                           capture.MapKind.CHANNEL)
            capture.record(self, "regions", regions, capture.MapKind.SPATIAL)
        return self.proj(fused)
