"""Is a map telling? Deletion and insertion areas (Petsiuk et al., RISE, BMVC 2018) and
stability under input noise, computed on the model grid beside each map.

* **Score.** The mean probability of the target class over the target voxels: the region
  when one is given, else the voxels where the unaltered image gives the class a
  probability of at least 0.5 (all voxels if there are none, and for a classifier, whose
  one probability per window is spread over the window). Probabilities come from the
  sliding-window engine, blended over windows as in segmentation.
* **Deletion.** The top-ranked fraction ``f`` of voxels of the map (all voxels of the
  model grid, ranked by map value, ties in a seeded random order) is replaced by a
  blurred copy of the image (Gaussian, sigma :data:`BLUR_SIGMA` voxels: the local mean,
  which removes structure without introducing the sharp edges of a constant fill), for
  ``f`` in :data:`FRACTIONS`. The
  area under score(f) / score(0) over f in [0, 1] (trapezoid): **lower is better** (the
  score falls fast when the voxels the map points at are removed).
* **Insertion.** Start from the blurred image and put back the top fraction ``f`` of the
  original voxels; area under score(f) / score(original): **higher is better**.
* **Stability.** Pearson r between the map and the same map of the image plus Gaussian
  noise of :data:`NOISE_FRACTION` times the image's standard deviation (seed 0).
* **Verdict.** A map is *telling* when ``insertion_auc - deletion_auc >=``
  :data:`MIN_GAP` (putting its top voxels back restores the score clearly faster than
  removing them destroys it) and ``stability >=`` :data:`MIN_STABILITY`; otherwise the
  reason names the test it failed.

All deletion and insertion images go through the network together: they are stacked as
channels of one input and split back per window, so the whole test is one pass of the
sliding-window engine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from napari_medattn.explain.grid import ModelGrid, window_maps
from napari_medattn.inference.sliding_window import CancelCheck, ProgressCallback
from napari_medattn.inference.window_options import MemoryBudget
from napari_medattn.models.card import ModelCard

#: Fractions of top-ranked voxels removed (deletion) or restored (insertion).
FRACTIONS = (0.0, 0.1, 0.2, 0.4, 1.0)
#: Standard deviation (voxels of the model grid) of the blur that removes voxels.
BLUR_SIGMA = 4.0
#: Input noise for the stability test, as a fraction of the image's standard deviation.
NOISE_FRACTION = 0.1
#: Verdict thresholds: insertion minus deletion area, and stability r.
MIN_GAP = 0.1
MIN_STABILITY = 0.7
#: Images per forward pass when scoring (bounds memory: one window each).
_IMAGES_PER_PASS = 4


@dataclasses.dataclass
class Faithfulness:
    """Numbers to judge a map by (see the module docstring for their definitions).

    Attributes
    ----------
    deletion_auc : float
        Area under the relative score as top voxels are removed; lower is better.
    insertion_auc : float
        Area under the relative score as top voxels are restored; higher is better.
    stability : float
        Pearson r of the map with the map under small input noise, in [-1, 1].
    telling : bool
        ``insertion_auc - deletion_auc >= MIN_GAP`` and ``stability >= MIN_STABILITY``.
    reason : str
        One sentence: why the map is or is not telling.
    """

    deletion_auc: float
    insertion_auc: float
    stability: float
    telling: bool
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def verdict(deletion_auc: float, insertion_auc: float, stability: float) -> tuple[bool, str]:
    """The verdict rule: telling or not, with one sentence saying why."""
    gap = insertion_auc - deletion_auc
    if gap < MIN_GAP:
        return False, (f"Not telling: removing the map's top voxels lowers the score hardly "
                       f"faster than restoring them raises it (insertion - deletion = "
                       f"{gap:.2f} < {MIN_GAP}).")
    if not stability >= MIN_STABILITY:
        return False, (f"Not telling: the map changes under small input noise (r = "
                       f"{stability:.2f} < {MIN_STABILITY}).")
    return True, (f"Telling: its top voxels carry the score (insertion - deletion = "
                  f"{gap:.2f}) and it is stable under input noise (r = {stability:.2f}).")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; two constant maps correlate 1 if equal, else 0."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    if norm == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / norm)


def rank_voxels(saliency: np.ndarray) -> np.ndarray:
    """Flat voxel indices, highest map value first; ties in a seeded random order, so a map
    that is flat over most voxels is not credited with whatever the array order puts next."""
    values = np.asarray(saliency, np.float64).ravel()
    shuffled = np.random.default_rng(0).permutation(values.size)
    return shuffled[np.argsort(-values[shuffled], kind="stable")]


def perturbed_images(image: np.ndarray, ranking: np.ndarray,
                     fractions=FRACTIONS) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion images ``(F, C, *shape)`` for a voxel ranking (best first)."""
    blurred = np.stack([ndimage.gaussian_filter(c, BLUR_SIGMA, mode="nearest")
                        for c in image]).astype(np.float32)
    flat_image = image.reshape(image.shape[0], -1)
    flat_blur = blurred.reshape(image.shape[0], -1)
    deletion, insertion = [], []
    for f in fractions:
        top = ranking[: round(f * ranking.size)]
        removed = flat_image.copy()
        removed[:, top] = flat_blur[:, top]
        restored = flat_blur.copy()
        restored[:, top] = flat_image[:, top]
        deletion.append(removed.reshape(image.shape))
        insertion.append(restored.reshape(image.shape))
    return np.stack(deletion), np.stack(insertion)


def class_probabilities(model: nn.Module, images: torch.Tensor, target_class: int) -> torch.Tensor:
    """Probability of ``target_class`` ``(N, *spatial)`` for images ``(N, C_in, *spatial)``;
    a classifier's one probability per image is spread over the image."""
    parts = []
    for first in range(0, images.shape[0], _IMAGES_PER_PASS):
        batch = images[first:first + _IMAGES_PER_PASS]
        with torch.no_grad():
            probability = torch.softmax(model(batch).float(), dim=1)[:, target_class]
        if probability.ndim == 1:
            probability = probability.reshape(-1, *(1,) * (batch.ndim - 2)).expand(
                -1, *batch.shape[2:])
        parts.append(probability)
    return torch.cat(parts)


def noisy_image(image: np.ndarray) -> np.ndarray:
    """The input of the stability test: ``image`` plus Gaussian noise of
    :data:`NOISE_FRACTION` times its standard deviation (seed 0, so runs repeat)."""
    sigma = NOISE_FRACTION * float(image.std()) or 1e-3
    noise = np.random.default_rng(0).normal(0.0, sigma, image.shape).astype(np.float32)
    return image + noise


def faithfulness(grid: ModelGrid, model: nn.Module, card: ModelCard, saliency: np.ndarray,
                 noisy_saliency: np.ndarray, *, target_class: int,
                 region: np.ndarray | None = None, device: str | torch.device = "auto",
                 memory: MemoryBudget = MemoryBudget(),
                 progress: ProgressCallback | None = None,
                 cancel: CancelCheck | None = None) -> Faithfulness:
    """Deletion, insertion, stability and the verdict of ``saliency`` on the model grid.

    Parameters
    ----------
    grid : ModelGrid
        The preprocessed volume the map was computed on.
    model, card : nn.Module, ModelCard
        The network and its card.
    saliency : ndarray
        The map on the model grid (``grid.shape``); higher = more important.
    noisy_saliency : ndarray
        The same map computed on :func:`noisy_image` of the input (stability test).
    target_class : int
        Class whose probability is the score.
    region : ndarray of bool, optional
        Target voxels on the model grid (default: where the class is predicted).
    device, memory, progress, cancel
        As for :func:`~napari_medattn.inference.sliding_window_inference`.
    """
    image = grid.image
    channels = image.shape[0]
    ranking = rank_voxels(saliency)
    deletion, insertion = perturbed_images(image, ranking)
    # Insertion at f=1 and deletion at f=0 are both the unaltered image: score it once.
    stack = np.concatenate([deletion, insertion[:-1]])
    n_images = stack.shape[0]

    def score_all(batch: torch.Tensor, _region: torch.Tensor) -> torch.Tensor:
        b = batch.shape[0]
        images = batch.reshape(b * n_images, channels, *batch.shape[2:])
        probability = class_probabilities(model, images, target_class)
        return probability.reshape(b, n_images, *batch.shape[2:])

    probabilities = window_maps(grid, model, card, score_all,
                                image=stack.reshape(-1, *grid.shape), device=device,
                                batch_size=1, gradients=False, memory=memory,
                                progress=progress, cancel=cancel)
    if region is None:
        region = probabilities[0] >= 0.5
        if not region.any():
            region = np.ones(grid.shape, bool)
    scores = probabilities[:, region].mean(axis=1)
    original = scores[0]
    deletion_curve = scores[: len(FRACTIONS)]
    insertion_curve = np.append(scores[len(FRACTIONS):], original)
    scale = original if original > 0 else 1.0
    deletion_auc = float(np.trapezoid(deletion_curve / scale, FRACTIONS))
    insertion_auc = float(np.trapezoid(insertion_curve / scale, FRACTIONS))
    stability = pearson(saliency, noisy_saliency)
    telling, reason = verdict(deletion_auc, insertion_auc, stability)
    return Faithfulness(deletion_auc, insertion_auc, stability, telling, reason)
