"""A case on a model's grid and intensity scale, served as random training patches.

:func:`prepare_case` brings a case to a model's grid and intensity scale exactly as the
inference pipeline does (:func:`napari_medattn.inference.preprocess.reorient`, the one
resampler, :func:`~napari_medattn.inference.preprocess.normalize_intensity`), so training
and inference see the same inputs. :class:`PatchDataset` serves random patches with
nnU-Net's foreground oversampling, reproducible from a seed; augmentation is applied to
whole batches afterwards (:mod:`napari_medattn.training.augment`). The cases come from
:mod:`napari_medattn.training.datasets`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_medattn.errors import DimensionError
from napari_medattn.inference.preprocess import normalize_intensity, reorient
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_to_grid, spacing_grid
from napari_medattn.io import Volume
from napari_medattn.training.datasets import Case

#: nnU-Net forces a foreground voxel into this fraction of patches.
FOREGROUND_FRACTION = 0.33
#: At most this many voxel positions per class and case are kept for oversampling.
FOREGROUND_SAMPLES = 10_000


def prepare_case(case: Case, *, orientation: str | None = None,
                 spacing: Sequence[float] | None = None,
                 normalization: Mapping[str, Any] | None = None) -> Case:
    """Bring a case to a model's orientation, voxel size and intensity scale.

    The same steps, in the same order, as :func:`napari_medattn.inference.pipeline.segment`:
    reorient (a view), resample (image linear, labels nearest, with the one resampler),
    then normalise each channel.

    Parameters
    ----------
    case : Case
    orientation : str, optional
        Three LPS-convention letters, e.g. ``"RAS"`` (a model card's ``orientation``).
    spacing : sequence of 3 float, optional
        Voxel size in mm per array axis after reorientation (a card's ``spacing``).
    normalization : mapping, optional
        A card's ``normalization`` (e.g. ``{"scheme": "zscore"}``); ``None`` keeps the
        intensities.

    Returns
    -------
    Case
        float32 image, integer labels, both on the new grid with its exact affine.
    """
    image, label = case.image, case.label
    if orientation:
        image, _ = reorient(image, orientation)
        label, _ = reorient(label, orientation)
    if spacing is not None and not np.allclose(image.spacing, spacing, rtol=1e-6, atol=0):
        affine, shape = spacing_grid(image.affine, image.spatial_shape, tuple(spacing))
        image = resample_to_grid(image, affine, shape, order=LINEAR)
        label = resample_to_grid(label, affine, shape, order=NEAREST)
    data = np.asarray(image.data, dtype=np.float32)
    if normalization is not None:
        units = case.image.meta.get("units")
        data = np.stack([normalize_intensity(c, normalization, units=units) for c in data])
    return Case(case.name,
                Volume(np.ascontiguousarray(data), image.affine, image.modality,
                       dict(image.meta)),
                Volume(np.ascontiguousarray(label.data), label.affine, "SEG",
                       dict(label.meta)))


class PatchDataset(Dataset):
    """Random training patches from in-memory cases, reproducible from a seed.

    Item ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng((seed, e, i))``, so
    it is the same whatever the number of loader workers or their order. Each item picks a
    case uniformly; with probability ``foreground_fraction`` (nnU-Net: 33 %) it picks a
    foreground class present in the case and one of its voxels uniformly, and places the
    patch so that voxel lies inside it (centred where the border allows); otherwise the
    patch lies anywhere in the volume. Axes shorter than the patch are padded with 0 on
    both sides (image and background label).

    Parameters
    ----------
    cases : sequence of Case
        Prepared cases (see :func:`prepare_case`), all with the same number of channels.
    patch_size : sequence of 3 int
        Patch shape in voxels.
    samples_per_epoch : int
        Length of the dataset (patches per epoch).
    foreground_fraction : float
        Probability (0-1) that a patch is forced to hold foreground.
    seed : int
        Seed of every draw.

    Items are ``(image, label)``: float32 ``(channels, *patch_size)`` and int64
    ``(1, *patch_size)`` tensors.
    """

    def __init__(self, cases: Sequence[Case], patch_size: Sequence[int], *,
                 samples_per_epoch: int, foreground_fraction: float = FOREGROUND_FRACTION,
                 seed: int = 0) -> None:
        if not cases:
            raise DimensionError("A patch dataset needs at least one case.")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise DimensionError(f"The patch size must be three positive voxel counts, got "
                                 f"{list(patch_size)}.")
        if not 0 <= foreground_fraction <= 1:
            raise DimensionError(f"The foreground fraction must be in [0, 1], got "
                                 f"{foreground_fraction}.")
        channels = {c.image.data.shape[0] for c in cases}
        if len(channels) != 1:
            raise DimensionError(f"The cases have different channel counts {sorted(channels)}.")
        self.cases = list(cases)
        self.samples_per_epoch = int(samples_per_epoch)
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.epoch = 0
        rng = np.random.default_rng((self.seed, 2**31))  # apart from the item streams
        self._foreground = [_foreground_voxels(np.asarray(c.label.data), rng)
                            for c in self.cases]

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of epoch ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        number = int(rng.integers(len(self.cases)))
        case, foreground = self.cases[number], self._foreground[number]
        shape = np.asarray(case.label.data.shape)
        patch = np.asarray(self.patch_size)
        # Start range: inside the volume, or centred with padding where it is too small.
        low = np.minimum(0, -((patch - shape) // 2))
        high = np.maximum(shape - patch, low)
        if rng.random() < self.foreground_fraction and foreground:
            voxels = foreground[sorted(foreground)[int(rng.integers(len(foreground)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
            start = np.clip(centre - patch // 2, low, high)
        else:
            start = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
        image = _crop(np.asarray(case.image.data), start, patch)
        label = _crop(np.asarray(case.label.data)[None], start, patch)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))


def _foreground_voxels(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to FOREGROUND_SAMPLES voxel indices per foreground class present."""
    voxels = {}
    for value in np.unique(label):
        if value == 0:
            continue
        where = np.argwhere(label == value)
        if len(where) > FOREGROUND_SAMPLES:
            where = where[np.sort(rng.choice(len(where), FOREGROUND_SAMPLES, replace=False))]
        voxels[int(value)] = where
    return voxels


def _crop(array: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``array[:, start:start+size]`` over the last 3 axes, 0 where it falls outside."""
    out = np.zeros(array.shape[:1] + tuple(int(s) for s in size), dtype=array.dtype)
    source, target = [slice(None)], [slice(None)]
    for s, n, extent in zip(start, size, array.shape[1:]):
        lo, hi = max(int(s), 0), min(int(s) + int(n), extent)
        source.append(slice(lo, hi))
        target.append(slice(lo - int(s), hi - int(s)))
    out[tuple(target)] = array[tuple(source)]
    return out
