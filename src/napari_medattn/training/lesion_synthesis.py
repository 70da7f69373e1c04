"""Synthetic lesion-detection cases in real anatomy: several lesions of three kinds per scan.

Each case deforms the MNI152 tissue labels (:mod:`~napari_medattn.training.synthesis`),
places up to a few non-overlapping lesions and renders a FLAIR-like image
(:func:`~napari_medattn.training.lesions.render_modalities`, FLAIR contrast). Kinds
(:data:`LESION_KINDS`, class index in brackets):

1. ``tumour``: a lobulated tumour of :func:`~napari_medattn.training.lesions.add_tumour`
   (necrotic core, enhancing rim, oedema through white matter), 15-30 mm across;
2. ``ms``: small MS-like FLAIR-bright plaques in white matter, ellipsoids 3-10 mm
   across (rendered with the oedema's FLAIR contrast);
3. ``metastasis``: small ring-enhancing lesions (core and rim with little oedema, the
   same shells as the tumour), 6-20 mm across.

The truth of each lesion is a :class:`~napari_medattn.detection.Detection` whose box
covers every voxel of that lesion (all its shells), on the case's grid. Nothing is
downloaded: the template comes with nilearn. Same ``seed``, same voxels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from napari_medattn.detection.boxes import Detection, box_from_voxels
from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import Volume
from napari_medattn.training.lesions import OEDEMA, add_tumour, render_modalities
from napari_medattn.training.synthesis import (
    Degradation,
    apply_deformation,
    mni152_tissue_labels,
    random_deformation,
)

#: Class index -> kind name (0 is background).
LESION_KINDS: dict[int, str] = {1: "tumour", 2: "ms", 3: "metastasis"}
#: Display colours of the kinds (model cards and layers).
KIND_COLOURS: dict[int, str] = {1: "#e6194b", 2: "#ffe119", 3: "#f58231"}
#: Shell radii (mm) drawn for the shelled kinds: core, rim thickness, oedema reach.
SHELLS: dict[str, dict[str, tuple[float, float]]] = {
    "tumour": {"core_radius_mm": (3.0, 6.0), "rim_mm": (1.5, 3.0), "oedema_mm": (3.0, 6.0)},
    "metastasis": {"core_radius_mm": (1.5, 4.5), "rim_mm": (1.0, 2.5), "oedema_mm": (0.5, 3.0)},
}
#: MS plaque semi-axes (mm).
MS_RADIUS_MM = (1.5, 5.0)
#: Milder than the segmentation default: 5 mm voxels would erase 3 mm plaques.
DETECTION_DEGRADATION = Degradation(blur_mm=(0.0, 0.8), resolution_mm=(1.0, 2.5),
                                    noise=(0.0, 0.03))
PLACEMENT_ATTEMPTS = 20
#: Intensity normalisation of the models trained on these cases (the lesion detector and
#: classifier): z-score of the head without the usual upper clip. Clipping at the 99.5th
#: percentile of the head cut the FLAIR-bright lesions (a few hundred voxels out of
#: ~65000 at 3 mm) down to the brightest normal tissue, erasing the very contrast the
#: models must find.
LESION_NORMALIZATION = {"scheme": "zscore", "percentiles": [0.5, 100.0]}


@dataclasses.dataclass
class LesionCase:
    """One synthetic detection case.

    Attributes
    ----------
    image : Volume
        float32 FLAIR-like image (modality ``"MR"``).
    instances : Volume
        uint16 map: 0 outside lesions, lesion ``i`` (1-based, order of ``lesions``).
    lesions : list of Detection
        The truth: one box per lesion (score 1, ``label`` the kind's class index).
    """

    image: Volume
    instances: Volume
    lesions: list[Detection]


def _ms_plaque(tissue: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mask of one ellipsoidal plaque centred in white matter (empty if there is none)."""
    white = np.argwhere(tissue == 3)
    if len(white) == 0:
        return np.zeros(tissue.shape, dtype=bool)
    centre = white[int(rng.integers(len(white)))]
    radii = rng.uniform(*MS_RADIUS_MM, size=3) / spacing
    index = np.indices(tissue.shape, dtype=np.float32)
    distance = sum(((index[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return (distance <= 1.0) & (tissue > 0)


def place_lesions(tissue: Volume, kinds: list[int], seed: int | np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Add lesions of the given kinds to a tissue label map, none touching another.

    Returns
    -------
    labels : ndarray of uint8
        Tissue labels with lesion labels (see :mod:`~napari_medattn.training.lesions`).
    instances : ndarray of uint16
        Lesion ``i`` (1-based) per voxel.
    placed : list of int
        The kinds placed, in instance order (a lesion that found no room after
        :data:`PLACEMENT_ATTEMPTS` tries is left out).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(tissue.data).astype(np.uint8).copy()
    instances = np.zeros(labels.shape, dtype=np.uint16)
    placed: list[int] = []
    for kind in kinds:
        name = LESION_KINDS[kind]
        for _ in range(PLACEMENT_ATTEMPTS):
            if name == "ms":
                mask = _ms_plaque(labels, tissue.spacing, rng)
                new = np.where(mask, OEDEMA, labels).astype(np.uint8)
            else:
                try:
                    new = np.asarray(add_tumour(Volume(labels, tissue.affine, "SEG"), rng,
                                                **SHELLS[name]).data)
                except DimensionError:
                    continue
                mask = new != labels
            # One voxel of healthy tissue between lesions keeps them separate instances.
            if mask.any() and not (ndimage.binary_dilation(mask) & (instances > 0)).any():
                labels = new
                instances[mask] = len(placed) + 1
                placed.append(kind)
                break
    return labels, instances, placed


def truth_boxes(instances: Volume, kinds: list[int]) -> list[Detection]:
    """One Detection per instance of an instance map, its box over all its voxels."""
    out = []
    for index, box in enumerate(ndimage.find_objects(np.asarray(instances.data)), start=1):
        if box is None:
            continue
        centre, size, axes = box_from_voxels([s.start for s in box], [s.stop - 1 for s in box],
                                             instances.affine)
        kind = kinds[index - 1]
        out.append(Detection(centre, size, axes, score=1.0, label=kind,
                             class_name=LESION_KINDS[kind]))
    return out


def synthetic_lesion_case(seed: int, *, resolution: int = 2, max_lesions: int = 4,
                          deformation_mm: float = 4.0,
                          degradation: Degradation = DETECTION_DEGRADATION) -> LesionCase:
    """One FLAIR-like detection case on deformed MNI152 anatomy, 0 to ``max_lesions`` lesions.

    Drawn with ``numpy.random.default_rng(seed)`` alone: the number of lesions is uniform in
    0..``max_lesions`` (a case without lesion teaches the detector silence), each kind
    uniform among :data:`LESION_KINDS`.

    Parameters
    ----------
    seed : int
    resolution : {1, 2}
        Template voxel size in mm.
    max_lesions : int
    deformation_mm : float
        Largest displacement of the anatomy in mm (0: the template itself).
    degradation : Degradation
        Acquisition effects (blur, bias, resolution, noise).

    Returns
    -------
    LesionCase
    """
    rng = np.random.default_rng(seed)
    _, tissue = mni152_tissue_labels(resolution)
    if deformation_mm > 0:
        tissue = apply_deformation(tissue, random_deformation(tissue, rng,
                                                              magnitude_mm=deformation_mm))
    kinds = [int(k) for k in rng.integers(1, len(LESION_KINDS) + 1,
                                          size=int(rng.integers(0, max_lesions + 1)))]
    labels, instances, placed = place_lesions(tissue, kinds, rng)
    label_volume = Volume(labels, tissue.affine.copy(), "SEG", {"name": f"lesions {seed}"})
    image = render_modalities(label_volume, rng, modalities=("FLAIR",),
                              degradation=degradation)["FLAIR"]
    image.meta["name"] = f"synthetic lesions {seed} FLAIR"
    instance_volume = Volume(instances, tissue.affine.copy(), "SEG",
                             {"name": f"synthetic lesions {seed} instances",
                              "labels": {i + 1: LESION_KINDS[k] for i, k in enumerate(placed)}})
    return LesionCase(image, instance_volume, truth_boxes(instance_volume, placed))
