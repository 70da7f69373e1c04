"""Synthetic BraTS-like cases: T1, T1ce, T2 and FLAIR of a tumour in deformed MNI152 anatomy.

The anatomy, the tumour and the contrasts come from
:mod:`~napari_medattn.training.synthesis` and :mod:`~napari_medattn.training.lesions`;
this module turns them into what a BraTS model sees: the labels in BraTS's convention
(1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour), images keyed by the
modality names of BraTS files (``t1``, ``t1ce``, ``t2``, ``flair``) -- the vocabulary lives
in :mod:`napari_medattn.models.brats` -- and a crop around the tumour for small training
volumes. Normalise the images as at inference
(:func:`napari_medattn.inference.preprocess.robust_zscore`). Missing modalities are drawn
with imbalanced rates (:func:`draw_presence`), as DMAF-Net trains.

Provenance: MNI152 2009 from nilearn's bundled files (no download); every random step is
seeded, so a seed names a case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import Volume
from napari_medattn.models.brats import BRATS_LABELS, BRATS_MODALITIES, MODALITY_NAMES
from napari_medattn.training.lesions import CORE, OEDEMA, RIM, add_tumour, render_modalities
from napari_medattn.training.synthesis import (
    apply_deformation,
    mni152_tissue_labels,
    random_deformation,
)

__all__ = ["MultimodalCase", "brats_labels", "synthetic_multimodal_case", "draw_presence",
           "crop_around"]

#: Tumour size ranges in mm, larger than :func:`add_tumour`'s defaults: BraTS gliomas are
#: high-grade tumours whose oedema often spans several centimetres.
TUMOUR_SIZE_MM = {"core_radius_mm": (5.0, 12.0), "rim_mm": (2.0, 5.0),
                  "oedema_mm": (6.0, 15.0)}


@dataclasses.dataclass
class MultimodalCase:
    """One synthetic case: images by BraTS modality name and BraTS labels, on one grid."""

    images: dict[str, Volume]
    labels: Volume
    seed: int


def brats_labels(labels: np.ndarray) -> np.ndarray:
    """Tissue-and-lesion labels of :mod:`~napari_medattn.training.lesions` as BraTS labels.

    Necrotic core (6) -> 1, oedema (4) -> 2, enhancing rim (5) -> 4, everything else 0.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[labels == CORE] = 1
    out[labels == OEDEMA] = 2
    out[labels == RIM] = 4
    return out


def crop_around(volume: Volume, centre_index: Sequence[int], size: Sequence[int]) -> Volume:
    """A ``size`` box of ``volume`` centred on ``centre_index``, kept inside the array.

    The affine is shifted so the crop stays exactly where it was in patient space.
    """
    shape = np.asarray(volume.spatial_shape)
    size = np.minimum(np.asarray(size, dtype=int), shape)
    start = np.clip(np.asarray(centre_index, dtype=int) - size // 2, 0, shape - size)
    box = tuple(slice(int(s), int(s + n)) for s, n in zip(start, size))
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(np.asarray(volume.data)[box]), affine, volume.modality,
                  dict(volume.meta))


def synthetic_multimodal_case(seed: int, *, resolution: int = 2, deformation_mm: float = 4.0,
                              crop: Sequence[int] | None = None) -> MultimodalCase:
    """One BraTS-like case: deformed MNI152 anatomy, a glioma-like tumour, four contrasts.

    Parameters
    ----------
    seed : int
        Names the case: the deformation, the tumour and the contrasts all draw from it.
    resolution : {1, 2}
        Template voxel size in mm.
    deformation_mm : float
        Largest displacement of the anatomy in mm (0: the template's own).
    crop : sequence of 3 int, optional
        Keep only a box of this many voxels centred on the tumour.

    Returns
    -------
    MultimodalCase
        ``images`` keyed ``t1``, ``t1ce``, ``t2``, ``flair`` (float32, MR units), ``labels``
        uint8 in BraTS values with ``meta["lesion"]`` (centre and radii in mm).
    """
    rng = np.random.default_rng(seed)
    _, tissue = mni152_tissue_labels(resolution)
    if deformation_mm > 0:
        tissue = apply_deformation(tissue, random_deformation(tissue, rng,
                                                              magnitude_mm=deformation_mm))
    lesion = add_tumour(tissue, rng, **TUMOUR_SIZE_MM)
    rendered = render_modalities(lesion, rng)
    meta = {"name": f"synthetic multimodal {seed} labels", "labels": dict(BRATS_LABELS),
            "lesion": lesion.meta["lesion"]}
    labels = Volume(brats_labels(lesion.data), lesion.affine.copy(), "SEG", meta)
    images = {key: rendered[MODALITY_NAMES[key]] for key in BRATS_MODALITIES}
    if crop is not None:
        centre = np.round(labels.mm_to_index(np.asarray(meta["lesion"]["centre_mm"])))
        labels = crop_around(labels, centre, crop)
        images = {key: crop_around(image, centre, crop) for key, image in images.items()}
    for key, image in images.items():
        image.meta["name"] = f"synthetic multimodal {seed} {key}"
    return MultimodalCase(images=images, labels=labels, seed=seed)


def draw_presence(rng: np.random.Generator, missing_rates: Sequence[float]) -> np.ndarray:
    """One random presence mask: modality ``m`` is missing with probability
    ``missing_rates[m]``, independently, redrawn until at least one is present.

    Imbalanced rates (e.g. ``(0.2, 0.6, 0.3, 0.5)``) are DMAF-Net's training setting;
    equal rates give the usual modality dropout.
    """
    rates = np.asarray(missing_rates, dtype=float)
    if rates.ndim != 1 or rates.size == 0 or np.any((rates < 0) | (rates >= 1)):
        raise DimensionError(f"Missing rates must be probabilities in [0, 1), one per "
                             f"modality, not {list(np.atleast_1d(rates))}.")
    while True:
        present = rng.random(rates.size) >= rates
        if present.any():
            return present
