"""Training options of DMAF-Net (incomplete multi-modal segmentation), as plain functions.

* **Relation distillation** (:func:`relation_distillation`): the student (some modalities
  missing) matches a full-modality teacher's feature relations -- globally, the channel
  covariance over voxels (:func:`covariance_consistency`); locally, a graph over the class
  prototypes whose edges are attention weights with absent classes masked
  (:func:`prototype_graph`), compared by KL divergence.
* **Prototype distillation** (:func:`prototype_distillation`): each class's prototype (the
  mean feature over its voxels, :func:`class_prototypes`) is pulled towards the teacher's
  (cosine distance), so every subset keeps the same class semantics.
* **Dynamic training monitoring** (:class:`ModalityMonitor`): tracks each modality's
  distillation gap, reweights the loss of cases by the gaps of their modalities, and scales
  each modality encoder's gradients, so that lagging modalities catch up.

No code of DMAF-Net is public; these follow the paper's abstract, and where it leaves a
choice open (the graph's edge function, the reweighting rule) the choice is documented here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import DimensionError

__all__ = ["class_prototypes", "prototype_distillation", "channel_covariance",
           "covariance_consistency", "prototype_graph", "relation_distillation",
           "ModalityMonitor"]


def _check_features(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.ndim < 3:
        raise DimensionError(f"Student and teacher features must have one shape (B, C, *grid); "
                             f"got {tuple(student.shape)} and {tuple(teacher.shape)}.")


def class_prototypes(features: torch.Tensor, target: torch.Tensor, n_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of each class's voxels, per case.

    Parameters
    ----------
    features : Tensor (B, C, *grid)
    target : Tensor (B, *grid)
        Integer class indices in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    prototypes : Tensor (B, K, C)
        ``sum(f * [y == k]) / sum([y == k])``; zeros for a class absent from a case.
    valid : Tensor (B, K) bool
        Whether the class has at least one voxel in the case.
    """
    if target.shape != features.shape[:1] + features.shape[2:]:
        raise DimensionError(f"The target must have shape {tuple(features.shape[:1])} + the "
                             f"feature grid, not {tuple(target.shape)}.")
    one_hot = F.one_hot(target.long().flatten(1), n_classes).to(features.dtype)  # (B, N, K)
    counts = one_hot.sum(1)  # (B, K)
    sums = torch.einsum("bcn,bnk->bkc", features.flatten(2), one_hot)
    valid = counts > 0
    return sums / counts.clamp_min(1)[..., None], valid


def prototype_distillation(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                           n_classes: int) -> torch.Tensor:
    """Mean cosine distance ``1 - cos(p_s, p_t)`` between student and teacher prototypes of
    the classes present in each case (0 when every class matches in direction).

    The teacher's features are detached: only the student learns.
    """
    _check_features(student, teacher)
    p_s, valid = class_prototypes(student, target, n_classes)
    p_t, _ = class_prototypes(teacher.detach(), target, n_classes)
    distance = 1.0 - F.cosine_similarity(p_s, p_t, dim=-1, eps=1e-8)
    return distance[valid].mean()


def channel_covariance(features: torch.Tensor) -> torch.Tensor:
    """Covariance of the channels over voxels, ``(B, C, C)`` (unbiased, divided by N-1)."""
    flat = features.flatten(2)
    centred = flat - flat.mean(dim=2, keepdim=True)
    return centred @ centred.transpose(1, 2) / max(flat.shape[2] - 1, 1)


def covariance_consistency(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the channel covariances, ``||S_s - S_t||_F^2 / C^2``,
    averaged over the batch; 0 for identical features."""
    _check_features(student, teacher)
    difference = channel_covariance(student) - channel_covariance(teacher.detach())
    return difference.pow(2).mean()


def prototype_graph(prototypes: torch.Tensor, valid: torch.Tensor,
                    temperature: float = 0.1) -> torch.Tensor:
    """Attention graph over class prototypes: row ``i`` is a softmax of the cosine
    similarities to the other present classes, divided by ``temperature``.

    Absent classes are masked: their columns get weight 0 and their rows are all 0. The
    self-edge is masked too, so a case needs two present classes for any edge.

    Returns
    -------
    Tensor (B, K, K)
    """
    unit = F.normalize(prototypes, dim=-1, eps=1e-8)
    scores = unit @ unit.transpose(1, 2) / temperature
    k = prototypes.shape[1]
    allowed = valid[:, None, :] & valid[:, :, None] & ~torch.eye(k, dtype=torch.bool,
                                                                 device=valid.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    has_edge = allowed.any(-1, keepdim=True)
    # A row with no allowed edge would be softmax(-inf...) = NaN: give it zeros instead.
    return torch.where(has_edge, scores.masked_fill(~has_edge, 0.0).softmax(-1),
                       torch.zeros_like(scores))


def relation_distillation(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                          n_classes: int, temperature: float = 0.1) -> torch.Tensor:
    """Global plus local relation distillation.

    Global: :func:`covariance_consistency`. Local: the KL divergence
    ``sum_j G_t[i, j] log(G_t[i, j] / G_s[i, j])`` between the teacher's and the student's
    :func:`prototype_graph`, averaged over the rows that have edges. Both are 0 when the
    student's features equal the teacher's.
    """
    _check_features(student, teacher)
    global_term = covariance_consistency(student, teacher)
    p_s, valid = class_prototypes(student, target, n_classes)
    p_t, _ = class_prototypes(teacher.detach(), target, n_classes)
    g_s, g_t = prototype_graph(p_s, valid, temperature), prototype_graph(p_t, valid, temperature)
    rows = g_t.sum(-1) > 0
    if not rows.any():
        return global_term
    log_ratio = torch.log(g_t.clamp_min(1e-12)) - torch.log(g_s.clamp_min(1e-12))
    local = (g_t * log_ratio).sum(-1)[rows].mean()
    return global_term + local


class ModalityMonitor:
    """Dynamic training monitoring: per-modality distillation gaps steer loss and gradients.

    Each step, the gap of every case (e.g. its distillation loss) is credited to the
    modalities present in it; each modality keeps an exponential moving average of its
    gaps. The weights are ``M * softmax(gap / temperature)``: equal gaps give weight 1 to
    every modality, and a modality whose cases lag behind the teacher gets more.

    Parameters
    ----------
    n_modalities : int
    momentum : float
        Share of the old average kept per update, in [0, 1).
    temperature : float
        Softness of the reweighting, in units of the gap; large is gentle.
    """

    def __init__(self, n_modalities: int, momentum: float = 0.9,
                 temperature: float = 1.0) -> None:
        if not 0.0 <= momentum < 1.0 or temperature <= 0:
            raise DimensionError("The monitor needs a momentum in [0, 1) and a positive "
                                 "temperature.")
        self.momentum = momentum
        self.temperature = temperature
        self.gaps = torch.zeros(n_modalities)
        self._seen = torch.zeros(n_modalities, dtype=torch.bool)

    def update(self, gaps: torch.Tensor, present: torch.Tensor) -> None:
        """Credit per-case ``gaps`` (B,) to the modalities ``present`` (B, M) in each case.

        A modality's new value is the mean gap of the cases it is in; the first value
        seeds the average, later ones are blended with ``momentum``.
        """
        gaps = gaps.detach().float().cpu()
        present = present.detach().cpu().bool()
        counts = present.sum(0)
        means = (present.float() * gaps[:, None]).sum(0) / counts.clamp_min(1)
        seen_now = counts > 0
        blend = torch.where(self._seen, self.momentum * self.gaps + (1 - self.momentum) * means,
                            means)
        self.gaps = torch.where(seen_now, blend, self.gaps)
        self._seen |= seen_now

    def weights(self) -> torch.Tensor:
        """Per-modality weights ``(M,)``, mean 1."""
        n = self.gaps.numel()
        return n * torch.softmax(self.gaps / self.temperature, dim=0)

    def case_weights(self, present: torch.Tensor) -> torch.Tensor:
        """Loss weight of each case ``(B,)``: the mean weight of its present modalities."""
        w = self.weights().to(present.device)
        mask = present.float()
        return (mask * w).sum(1) / mask.sum(1).clamp_min(1)

    def scale_gradients(self, encoders: Sequence[nn.Module]) -> None:
        """Multiply the gradients of modality ``m``'s encoder by its weight (after
        ``backward``, before the optimiser step)."""
        for weight, encoder in zip(self.weights().tolist(), encoders):
            for parameter in encoder.parameters():
                if parameter.grad is not None:
                    parameter.grad.mul_(weight)
