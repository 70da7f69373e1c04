"""Dynamic modality-aware fusion (DMAF): masked attention across the modalities present at
each voxel, after the DMAF module of DMAF-Net (incomplete multi-modal segmentation).

At every voxel the ``M`` modality feature vectors are ``M`` tokens. A pre-norm transformer
layer lets the present modalities exchange information (keys of missing modalities masked
out), then a fusion query -- a learned vector plus a projection of the mean of the present
tokens, so it adapts to the voxel's content -- attends over the present tokens. Its
attention weights are the voxel's per-modality contributions: exactly 0 for a missing
modality (masked before the softmax) and summing to 1 over the present ones. The fused
feature is their weighted sum of the tokens themselves (the transformer's residual stream,
not its layer-normalised copy), projected, so a missing modality cannot contribute.

Two choices make the block start as a plain average and keep what the encoders measured:

* The values are the un-normalised tokens. Taking them after a per-voxel LayerNorm (as the
  first version did) removed each voxel's feature magnitude before the decoder: scaling the
  features by 3 changed that block's output by a factor of 1.13 where a linear fusion
  changes by 3, and "how bright is T1ce here" is the enhancing tumour's main cue.
* The transformer's residual branches and the fusion query start at zero (as ReZero and
  zero-initialised residual blocks do), so a new block returns ``proj(mean of the present
  features)`` -- the usual missing-modality fusion -- and learns from there which modality
  to favour where, instead of starting from random per-voxel weights and perturbations.
  The modality embedding enters the attention's queries and keys only, not the values.

Attention runs over ``M`` tokens per voxel (4 for BraTS), never across voxels, so it costs
``O(N M^2)`` and runs at every resolution of a 3D U-Net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import DimensionError
from napari_medattn.models import capture
from napari_medattn.models.blocks.common import check_spatial_dims
from napari_medattn.models.blocks.global_attention import head_dim

__all__ = ["DMAFBlock", "masked_features", "presence_mask"]


def presence_mask(present: torch.Tensor | None, batch: int, n_modalities: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """``present`` as a ``(batch, n_modalities)`` bool tensor (None: all present).

    A 1D mask of ``n_modalities`` entries serves the whole batch.

    Raises
    ------
    DimensionError
        Wrong shape, or a case with no modality present.
    """
    if present is None:
        mask = torch.ones(batch, n_modalities, dtype=torch.bool, device=device)
    else:
        mask = torch.as_tensor(present, device=device).to(torch.bool)
        if mask.ndim == 1:
            mask = mask.expand(batch, -1)
        if tuple(mask.shape) != (batch, n_modalities):
            raise DimensionError(f"The presence mask must have shape ({batch}, {n_modalities}) "
                                 f"or ({n_modalities},), not {tuple(mask.shape)}.")
    if not bool(mask.any(dim=1).all()):
        raise DimensionError("Every case needs at least one modality present.")
    return mask


def masked_features(features: torch.Tensor, present: torch.Tensor | None, *,
                    n_modalities: int, channels: int, spatial_dims: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Check per-modality ``features`` (B, M, C, *grid) and zero the missing modalities.

    Zeroing keeps a NaN or inf in a missing input from reaching any sum, whatever weight
    a fusion block gives it.

    Returns
    -------
    features : Tensor
        The same shape, missing modalities' features set to 0.
    mask : Tensor
        ``(B, M)`` bool presence mask (:func:`presence_mask`).

    Raises
    ------
    DimensionError
        Features of the wrong shape, or a bad presence mask.
    """
    if features.ndim != spatial_dims + 3 or features.shape[1] != n_modalities \
            or features.shape[2] != channels:
        raise DimensionError(
            f"The modality features must have shape (batch, {n_modalities}, {channels}, "
            f"*grid) with {spatial_dims} grid axes, not {tuple(features.shape)}.")
    b, m = features.shape[:2]
    mask = presence_mask(present, b, m, features.device)
    expand = (b, m, *([1] * (features.ndim - 2)))
    features = torch.where(mask.reshape(expand), features,
                           torch.zeros((), dtype=features.dtype, device=features.device))
    return features, mask


class DMAFBlock(nn.Module):
    """Fuse ``M`` per-modality feature maps into one, attending only to present modalities.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels of each modality's features and of the fused output.
    n_modalities : int
        ``M``.
    num_heads : int
        Attention heads; must divide ``channels``.
    mlp_ratio : float
        Hidden width of the transformer layer's MLP, relative to ``channels``.
    masking : bool
        Mask missing modalities out of the attention (DMAF's adaptive masking). False is
        the ablation: a missing modality is a zero feature map that still gets weight.

    Notes
    -----
    Records (capture on) ``weights``: channel kind, ``(B, M)``, each modality's mean
    contribution over voxels and heads (0 for a missing modality, sums to 1), and
    ``attention``: spatial kind, ``(B, M, *grid)``, the per-voxel contributions (head mean).
    """

    def __init__(self, spatial_dims: int, channels: int, n_modalities: int,
                 num_heads: int = 4, mlp_ratio: float = 2.0, masking: bool = True) -> None:
        super().__init__()
        self.masking = bool(masking)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.n_modalities = n_modalities
        self.num_heads = num_heads
        self.head_dim = head_dim(channels, num_heads)
        # A learned embedding tells the shared attention which modality a token is.
        self.modality_embedding = nn.Parameter(torch.zeros(n_modalities, channels))
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = max(1, int(channels * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, channels))
        self.norm3 = nn.LayerNorm(channels)
        self.fusion_query = nn.Parameter(torch.zeros(channels))
        self.query_from_mean = nn.Linear(channels, channels)
        self.fusion_key = nn.Linear(channels, channels)
        self.fusion_proj = nn.Linear(channels, channels)
        # Start as the average of the present features (see the module's docstring).
        for layer in (self.proj, self.mlp[-1], self.query_from_mean):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # (T, M, C) -> (T, H, M, d)
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, features: torch.Tensor, present: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Fuse ``features`` (B, M, C, *grid) into (B, C, *grid).

        ``present`` is a (B, M) or (M,) bool mask (None: all present). Features of a
        missing modality do not influence the output.
        """
        # Zeroed missing modalities are also what the ablation without masking attends to
        # (zero-filled modalities, as early fusion).
        features, mask = masked_features(features, present, n_modalities=self.n_modalities,
                                         channels=self.channels,
                                         spatial_dims=self.spatial_dims)
        b, m, c = features.shape[:3]
        grid = tuple(features.shape[3:])
        n = features[0, 0, 0].numel()
        attended = mask if self.masking else torch.ones_like(mask)
        # Modalities attended in no case of the batch take no part in any attention (their
        # weights are exactly 0) and are left out of the work; with the rest attended in
        # every case (the usual case at inference) no mask is needed at all, so the
        # attention takes torch's fused path. Same result as masking them, less work.
        used = attended.any(dim=0).nonzero().flatten()  # (M',)
        if len(used) < m:
            features, attended = features[:, used], attended[:, used]
        embedding = self.modality_embedding[used]
        mu = len(used)
        everything = bool(attended.all())
        key_mask = None if everything else attended.repeat_interleave(n, dim=0)  # (B*N, M')
        attn_mask = None if everything else key_mask[:, None, None, :]  # over heads, queries
        tokens = features.reshape(b, mu, c, n).permute(0, 3, 1, 2).reshape(b * n, mu, c)

        q, k, v = self.qkv(self.norm1(tokens + embedding)).chunk(3, dim=-1)
        mixed = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                               attn_mask=attn_mask)
        tokens = tokens + self.proj(mixed.transpose(1, 2).reshape(b * n, mu, c))
        tokens = tokens + self.mlp(self.norm2(tokens))

        normed = self.norm3(tokens + embedding)
        if everything:
            mean = normed.mean(1)  # (B*N, C)
        else:
            weights_present = key_mask.to(normed.dtype)[..., None]
            mean = (normed * weights_present).sum(1) / weights_present.sum(1)
        query = (self.fusion_query + self.query_from_mean(mean))[:, None, :]  # (B*N, 1, C)
        qh, kh = self._heads(query), self._heads(self.fusion_key(normed))
        scores = (qh @ kh.transpose(-2, -1)) * self.head_dim ** -0.5  # (B*N, H, 1, M')
        if not everything:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        contribution = scores.softmax(dim=-1)
        # Values: the tokens themselves, each head weighting its own channel group.
        fused = (contribution @ self._heads(tokens)).transpose(1, 2).reshape(b * n, c)
        fused = self.fusion_proj(fused)
        if capture.active():
            per_voxel = contribution.new_zeros(b * n, m)  # every modality, 0 where left out
            per_voxel[:, used] = contribution.mean(dim=1)[:, 0, :]  # head mean
            per_voxel = per_voxel.reshape(b, n, m)
            capture.record(self, "weights", per_voxel.mean(dim=1), capture.MapKind.CHANNEL)
            capture.record(self, "attention", per_voxel.transpose(1, 2).reshape(b, m, *grid),
                           capture.MapKind.SPATIAL)
        return fused.reshape(b, n, c).transpose(1, 2).reshape(b, c, *grid)
