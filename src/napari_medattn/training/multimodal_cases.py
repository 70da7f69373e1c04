"""Multimodal training and evaluation cases as the network sees them: the four BraTS
modalities on the model's grid (RAS array axes, 2 mm voxels), normalised exactly as
inference normalises them, with BraTS labels and class targets.

Cases come from the synthetic BraTS-like generator
(:func:`~napari_medattn.training.multimodal_synthesis.synthetic_multimodal_case`) or from a
BraTS-layout folder (:mod:`napari_medattn.training.brats`). :func:`random_crop` draws
training cubes, :func:`tumour_crop` the held-out cube around the tumour.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from napari_medattn.errors import DimensionError
from napari_medattn.inference.preprocess import normalize_intensity, reorient
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_to_grid, spacing_grid
from napari_medattn.io.volume import Volume
from napari_medattn.models.brats import BRATS_MODALITIES, labels_to_classes
from napari_medattn.training.multimodal_synthesis import (
    MultimodalCase,
    synthetic_multimodal_case,
)

__all__ = ["MODALITIES", "SPACING_MM", "ORIENTATION", "NORMALIZATION", "model_grid_case",
           "case_arrays", "random_crop", "tumour_crop"]

MODALITIES: tuple[str, ...] = BRATS_MODALITIES
#: The grid and normalisation the multimodal models are trained on, as their cards say.
SPACING_MM: tuple[float, float, float] = (2.0, 2.0, 2.0)
ORIENTATION = "RAS"
NORMALIZATION = {"scheme": "zscore"}
#: Share of training crops centred on a tumour voxel; the rest lie anywhere in the head.
TUMOUR_FRACTION = 2 / 3


def _on_model_grid(volume: Volume, order: int) -> np.ndarray:
    work, _ = reorient(volume, ORIENTATION)
    if np.allclose(work.spacing, SPACING_MM, rtol=1e-6, atol=0):
        return np.asarray(work.data)
    affine, shape = spacing_grid(work.affine, work.spatial_shape, SPACING_MM)
    return resample_to_grid(work, affine, shape, order=order).data


def model_grid_case(case: MultimodalCase) -> dict:
    """One case as arrays on the model grid.

    Returns
    -------
    dict
        ``x`` (4, *grid) float32 normalised images in :data:`MODALITIES` order,
        ``labels`` uint8 BraTS values, ``target`` int64 class indices, ``spacing`` (mm),
        ``tumour`` (n, 3) indices of whole-tumour voxels, ``head`` (lower, upper) corners
        of the head's bounding box.
    """
    missing = [m for m in MODALITIES if m not in case.images]
    if missing or case.labels is None:
        raise DimensionError(f"Case {case.seed} needs all four modalities and labels for "
                             f"training; it lacks {', '.join(missing) or 'labels'}.")
    x = np.stack([normalize_intensity(_on_model_grid(case.images[m], LINEAR), NORMALIZATION)
                  for m in MODALITIES]).astype(np.float32)
    labels = _on_model_grid(case.labels, NEAREST).astype(np.uint8)
    head = np.argwhere(np.asarray(x[0]) > x[0].min())
    return {"x": x, "labels": labels, "target": labels_to_classes(labels),
            "spacing": np.asarray(SPACING_MM), "tumour": np.argwhere(labels > 0),
            "head": (head.min(0), head.max(0) + 1)}


def case_arrays(indices: Iterable[int], data: str | os.PathLike = "synthetic") -> list[dict]:
    """:func:`model_grid_case` of synthetic cases (``indices`` are their seeds) or of the
    cases of a BraTS-layout folder (``indices`` are positions in its sorted case list)."""
    if str(data) == "synthetic":
        return [model_grid_case(synthetic_multimodal_case(int(i))) for i in indices]
    from napari_medattn.training.brats import brats_case_folders, read_brats_case

    folders = brats_case_folders(data)
    indices = list(indices)
    if indices and max(indices) >= len(folders):
        raise DimensionError(f"{data} holds {len(folders)} case(s); {max(indices) + 1} are "
                             f"needed for the training, validation and test split.")
    return [model_grid_case(read_brats_case(folders[i], index=i)) for i in indices]


def _crop_at(case: dict, centre: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    shape = np.asarray(case["labels"].shape)
    edge = np.minimum(size, shape)
    start = np.clip(np.asarray(centre, dtype=int) - edge // 2, 0, shape - edge)
    box = tuple(slice(int(s), int(s + n)) for s, n in zip(start, edge))
    return np.ascontiguousarray(case["x"][(slice(None), *box)]), \
        np.ascontiguousarray(case["target"][box])


def random_crop(case: dict, size: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A training cube ``(x (4, s, s, s), target (s, s, s))``: centred on a random tumour
    voxel with probability :data:`TUMOUR_FRACTION`, else on a random point of the head."""
    if len(case["tumour"]) and rng.random() < TUMOUR_FRACTION:
        centre = case["tumour"][rng.integers(len(case["tumour"]))]
    else:
        low, high = case["head"]
        centre = rng.integers(low, high)
    return _crop_at(case, centre, size)


def tumour_crop(case: dict, size: int) -> dict:
    """The case cut to a ``size`` cube centred on the tumour's centroid (held-out scoring);
    the head's centre when the case has no tumour."""
    if len(case["tumour"]):
        centre = np.round(case["tumour"].mean(0))
    else:
        centre = (np.asarray(case["head"][0]) + case["head"][1]) // 2
    x, target = _crop_at(case, centre, size)
    labels = np.asarray((0, 1, 2, 4), dtype=np.uint8)[target]
    return {"x": x, "target": target, "labels": labels, "spacing": case["spacing"]}
