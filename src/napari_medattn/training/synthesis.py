"""Synthetic training data from real anatomy, deterministic from a seed.

Everything here starts from the MNI ICBM152 2009a template that nilearn installs with
itself (``nilearn.datasets.load_mni152_*`` read bundled files; ``fetch_*`` is never
called, nothing is downloaded).

* :func:`mni152_tissue_labels`: the template T1 and a label map 0 background, 1 CSF,
  2 grey matter (GM), 3 white matter (WM).
"""

from __future__ import annotations

import functools

import numpy as np

from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import RAS_TO_LPS, Volume

#: Label values of the tissue map.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
#: The template's intensities (0..1 in nilearn) times this look like a 12-bit T1 scan.
MR_SCALE = 1000.0


@functools.lru_cache(maxsize=2)
def _mni152_arrays(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (0..1), labels and the RAS affine of the template; cached, never handed out."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0
    # CSF is what the brain mask holds beyond grey and white matter: its probability is the
    # remainder 1 - p(GM) - p(WM); each brain voxel takes its most probable class.
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    labels[~brain] = 0
    data = t1.get_fdata()
    for array in (data, labels):
        array.setflags(write=False)
    return data, labels, np.asarray(t1.affine, dtype=np.float64)


def mni152_tissue_labels(resolution: int = 2) -> tuple[Volume, Volume]:
    """The MNI152 2009a T1 template and its 4-class tissue label map.

    Inside nilearn's brain mask each voxel takes the most probable of CSF, grey matter
    and white matter, where the CSF probability is the remainder
    ``clip(1 - p(GM) - p(WM), 0, 1)`` of nilearn's grey- and white-matter probability
    maps (the mask holds brain tissue and CSF; what is neither GM nor WM there is CSF).
    Outside the mask: 0. This is a training and display label map, not an anatomical CSF
    segmentation: the template's smooth GM map makes the GM class generous (about 1.09 L
    at 1 mm, WM about 0.64 L, CSF about 0.16 L).

    Parameters
    ----------
    resolution : {1, 2}
        Voxel size in mm: 1 gives 197 x 233 x 189 voxels, 2 gives 99 x 117 x 95.

    Returns
    -------
    t1 : Volume
        float32 intensities, the template's 0..1 times :data:`MR_SCALE` (a 12-bit T1
        scale), modality ``"MR"``; the affine is the template's, in LPS mm.
    labels : Volume
        uint8 on the same grid, values of :data:`TISSUE_LABELS`, modality ``"SEG"``.

    Raises
    ------
    DimensionError
        ``resolution`` is neither 1 nor 2.
    """
    if resolution not in (1, 2):
        raise DimensionError(f"The MNI152 template comes at 1 or 2 mm, not {resolution!r}.")
    data, labels, affine_ras = _mni152_arrays(resolution)
    affine = RAS_TO_LPS @ affine_ras
    name = f"MNI152 2009a {resolution} mm"
    t1 = Volume((data * MR_SCALE).astype(np.float32), affine, "MR",
                {"name": f"{name} T1", "units": "a.u."})
    tissue = Volume(labels.copy(), affine.copy(), "SEG",
                    {"name": f"{name} tissue labels", "labels": dict(TISSUE_LABELS)})
    return t1, tissue
