"""Synthetic tumour-like lesions on tissue labels, rendered in several MR contrasts.

* :func:`add_tumour` places one lesion (labels 4 oedema, 5 enhancing rim, 6 necrotic
  core, see :data:`LESION_LABELS`) in a tissue label map of
  :mod:`~napari_medattn.training.synthesis`.
* :func:`render_modalities` paints the labels in T1, T1ce, T2 and FLAIR
  (:data:`MODALITY_CONTRAST`) with :func:`~napari_medattn.training.synthesis.render_labels`.
* :func:`synthetic_tumour_case` makes a whole multi-contrast case on deformed MNI152
  anatomy.

Seeded as in :mod:`~napari_medattn.training.synthesis`: the same ``seed`` (an int or a
``numpy.random.Generator``) gives the same voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import Volume
from napari_medattn.training.synthesis import (
    MR_SCALE,
    TISSUE_LABELS,
    Degradation,
    apply_deformation,
    mni152_tissue_labels,
    random_deformation,
    render_labels,
)
from napari_medattn.training.tensor_ops import smooth_field

#: Label values a lesion adds to the tissue labels (:data:`TISSUE_LABELS`).
LESION_LABELS: dict[int, str] = {4: "oedema", 5: "enhancing rim", 6: "necrotic core"}
OEDEMA, RIM, CORE = 4, 5, 6

#: MR contrasts a lesion case is rendered in.
MODALITIES: tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")

#: Mean intensity (fraction of :data:`MR_SCALE`) per label and contrast. The usual
#: appearance of a high-grade glioma: on T1 the necrotic core is dark and the oedema a
#: little darker than white matter; on contrast-enhanced T1 the rim is the brightest
#: tissue; on T2 fluid (CSF, core) and oedema are bright and white matter dark; FLAIR is T2
#: with the free fluid suppressed, so CSF is dark and the oedema is the brightest tissue.
MODALITY_CONTRAST: dict[str, dict[int, float]] = {
    #           background CSF   GM    WM   oedema rim   core
    "T1":    dict(zip(range(7), (0.0, 0.25, 0.55, 0.80, 0.55, 0.60, 0.20))),
    "T1ce":  dict(zip(range(7), (0.0, 0.25, 0.55, 0.80, 0.55, 0.98, 0.20))),
    "T2":    dict(zip(range(7), (0.0, 0.95, 0.55, 0.35, 0.80, 0.60, 0.90))),
    "FLAIR": dict(zip(range(7), (0.0, 0.10, 0.55, 0.40, 0.90, 0.70, 0.30))),
}
#: Within-tissue standard deviation of the rendered contrasts, fraction of MR_SCALE.
CONTRAST_STD = 0.03


def add_tumour(labels: Volume, seed: int | np.random.Generator, *,
               core_radius_mm: tuple[float, float] = (4.0, 10.0),
               rim_mm: tuple[float, float] = (2.0, 4.0),
               oedema_mm: tuple[float, float] = (6.0, 15.0)) -> Volume:
    """Place one tumour-like lesion centred in white matter.

    The lesion is three nested, irregular shells around a white-matter voxel at least
    the lesion's radius inside the brain: necrotic core (label 6), enhancing rim
    (label 5), and oedema (label 4) that spreads through white matter only (as vasogenic
    oedema does). The shells follow a distance from the centre divided by ``1 + 0.3 n``,
    where ``n`` is a smooth random field in [-1, 1], so the outline is lobulated. Core and
    rim replace any tissue inside the brain; nothing is placed outside it.

    Parameters
    ----------
    labels : Volume
        Tissue labels (:data:`TISSUE_LABELS`) with some white matter.
    seed : int or numpy Generator
    core_radius_mm, rim_mm, oedema_mm : (float, float)
        Uniform ranges of the core radius, the rim thickness, and how far the oedema
        reaches beyond the rim, in mm.

    Returns
    -------
    Volume
        uint8 labels with values of :data:`TISSUE_LABELS` and :data:`LESION_LABELS`;
        ``meta["lesion"]`` holds the centre (LPS mm) and the radii drawn.

    Raises
    ------
    DimensionError
        No white-matter voxel lies far enough inside the brain.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(labels.data)
    spacing = labels.spacing
    core = float(rng.uniform(*core_radius_mm))
    rim = core + float(rng.uniform(*rim_mm))
    oedema = rim + float(rng.uniform(*oedema_mm))
    depth = ndimage.distance_transform_edt(values > 0, sampling=spacing)
    candidates = np.argwhere((values == 3) & (depth > rim * 1.3))
    if len(candidates) == 0:
        raise DimensionError(f"{labels.name} has no white matter {rim * 1.3:.0f} mm inside "
                             f"the brain to place a lesion in.")
    centre = candidates[int(rng.integers(len(candidates)))]
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    lobes = smooth_field(generator, 1, values.shape, control_spacing=12.0 / spacing.mean(),
                         magnitude=1.0, device="cpu")[0, 0].numpy()
    index = np.indices(values.shape, dtype=np.float32)
    offset = (index - centre.reshape(3, 1, 1, 1)) * spacing.reshape(3, 1, 1, 1).astype(
        np.float32)
    distance = np.sqrt((offset ** 2).sum(0)) / (1.0 + 0.3 * lobes)
    brain = values > 0
    out = values.astype(np.uint8).copy()
    out[(distance <= oedema) & (values == 3)] = OEDEMA
    out[(distance <= rim) & brain] = RIM
    out[(distance <= core) & brain] = CORE
    meta = dict(labels.meta)
    meta["labels"] = {**TISSUE_LABELS, **LESION_LABELS}
    meta["lesion"] = {"centre_mm": labels.index_to_mm(centre).tolist(),
                      "core_radius_mm": core, "rim_radius_mm": rim, "oedema_radius_mm": oedema}
    return Volume(out, labels.affine.copy(), "SEG", meta)


def render_modalities(labels: Volume, seed: int | np.random.Generator, *,
                      modalities: Sequence[str] = MODALITIES,
                      degradation: Degradation = Degradation(),
                      jitter: float = 0.05) -> dict[str, Volume]:
    """Render tissue (and lesion) labels in several MR contrasts.

    Each contrast uses :data:`MODALITY_CONTRAST` with every mean moved by a uniform
    ``±jitter`` (fraction of :data:`MR_SCALE`) per case, a within-tissue standard
    deviation of :data:`CONTRAST_STD`, then :func:`render_labels` with ``degradation``.

    Parameters
    ----------
    labels : Volume
        Values of :data:`TISSUE_LABELS` and :data:`LESION_LABELS`.
    seed : int or numpy Generator
    modalities : sequence of str
        Among :data:`MODALITIES`.
    degradation : Degradation
    jitter : float

    Returns
    -------
    dict of str to Volume
        One float32 image per contrast, on the label map's grid, modality ``"MR"`` and
        ``meta["contrast"]`` the contrast's name.

    Raises
    ------
    DimensionError
        An unknown contrast name.
    """
    unknown = [m for m in modalities if m not in MODALITY_CONTRAST]
    if unknown:
        raise DimensionError(f"Unknown MR contrast(s) {unknown}; use {', '.join(MODALITIES)}.")
    rng = np.random.default_rng(seed)
    images = {}
    for name in modalities:
        table = {v: ((mean + (rng.uniform(-jitter, jitter) if v else 0.0)) * MR_SCALE,
                     CONTRAST_STD * MR_SCALE if v else 0.0)
                 for v, mean in MODALITY_CONTRAST[name].items()}
        image = render_labels(labels, table, rng, degradation=degradation)
        image.meta.update(name=f"{labels.name} {name}", contrast=name)
        images[name] = image
    return images


def synthetic_tumour_case(seed: int, *, resolution: int = 2, deformation_mm: float = 4.0,
                          modalities: Sequence[str] = MODALITIES,
                          degradation: Degradation = Degradation(),
                          ) -> tuple[dict[str, Volume], Volume]:
    """One multi-contrast brain tumour case: deformed MNI152 anatomy, a lesion, 4 contrasts.

    The template's tissue labels are deformed (:func:`random_deformation`, largest
    displacement ``deformation_mm``), given a tumour (:func:`add_tumour`) and rendered in
    each contrast (:func:`render_modalities`); every step draws from
    ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    seed : int
    resolution : {1, 2}
        Template voxel size in mm.
    deformation_mm : float
        Largest displacement in mm (0: the template's own anatomy).
    modalities : sequence of str
        Among :data:`MODALITIES`.
    degradation : Degradation

    Returns
    -------
    images : dict of str to Volume
        One float32 image per contrast, all on one grid.
    labels : Volume
        uint8: :data:`TISSUE_LABELS` and :data:`LESION_LABELS`; ``meta["lesion"]`` as
        :func:`add_tumour` gives it, ``meta["displacement_mm"]`` the deformation field
        (``None`` when off).
    """
    rng = np.random.default_rng(seed)
    _, tissue = mni152_tissue_labels(resolution)
    field = None
    if deformation_mm > 0:
        field = random_deformation(tissue, rng, magnitude_mm=deformation_mm)
        tissue = apply_deformation(tissue, field)
    labels = add_tumour(tissue, rng)
    labels.meta.update(name=f"synthetic tumour {seed} labels", displacement_mm=field)
    images = render_modalities(labels, rng, modalities=modalities, degradation=degradation)
    for name, image in images.items():
        image.meta["name"] = f"synthetic tumour {seed} {name}"
    return images, labels
