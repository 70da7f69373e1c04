"""Registration settings by modality pair: the one table the widget and the CLI read.

A scan's *contrast* is its DICOM modality (``"CT"``, ``"PT"``, ``"MR"``), or for MR the
weighting its name or series description names (``"T1"``, ``"T2"``, ``"FLAIR"``,
``"PD"``); :func:`contrast_of` reads it off a :class:`~napari_medattn.io.volume.Volume`.
:func:`defaults_for` turns the fixed and moving contrasts and a method into
:class:`~napari_medattn.registration.engine.Settings`:

======================================  ======  ==========  ======  ==============  ======
pair                                    linear  deformable  levels  regularisation  sigma
======================================  ======  ==========  ======  ==============  ======
same contrast (CT/CT, MR/MR, T1/T1...)  mse     ncc         4,2,1   diffusion, 2    4 mm
different contrasts (T1/T2, MR/CT)      mi      mi          4,2,1   diffusion, 2    4 mm
PET on either side (PT/CT, PT/MR)       mi      mi          4,2     diffusion, 2    8 mm
unknown modality on either side         mi      mi          4,2,1   diffusion, 2    4 mm
======================================  ======  ==========  ======  ==============  ======

Why: MSE and local NCC assume the same tissue gives the same (or locally proportional)
intensity, which holds within one contrast; Mattes mutual information only assumes a
consistent mapping, so it is the choice across contrasts and whenever the contrast is not
known (it also aligns same-contrast pairs, a little less sharply). The same-contrast and
cross-contrast rows keep the engine's measured defaults (docs/benchmarks/registration.md:
2 mm MNI152 deformable pair, weight 2 and 4 mm smoothness; T1 against a T2-like rendering,
Mattes MI recovers the nibabel motion to 0.004 mm). The PET row is set from PET's
resolution (4-6 mm FWHM), not measured: a velocity field finer than that would fit noise,
so it is smoother (8 mm) and the full-resolution level, the costliest, is
left out (shrink factors apply to each scan's own voxels).
"""

from __future__ import annotations

import re

from napari_medattn.errors import GeometryError
from napari_medattn.io.volume import Volume
from napari_medattn.registration.engine import METHODS, Settings

#: MR weightings by the words that name them in a scan's name or series description.
MR_WEIGHTINGS = {"T1": ("t1", "t1w", "t1c", "t1ce", "t1gd", "mprage", "spgr"),
                 "T2": ("t2", "t2w"), "FLAIR": ("flair",), "PD": ("pd", "pdw")}
#: Contrasts whose intensities share a physical meaning within a pair of the same kind.
KNOWN_MODALITIES = ("CT", "PT", "MR")
#: Methods with a deformable stage (their metric is the deformable column of the table).
DEFORMABLE = "deformable"


def contrast_of(volume: Volume) -> str:
    """The contrast of a scan for :func:`defaults_for`.

    Parameters
    ----------
    volume : Volume

    Returns
    -------
    str
        ``"T1"``, ``"T2"``, ``"FLAIR"`` or ``"PD"`` when the scan is MR (or of unknown
        modality, as a NIfTI file without a description is) and its name or DICOM series
        description names exactly one of these weightings; else its modality (``"CT"``,
        ``"PT"``, ``"MR"``, ``"OT"``, ...).
    """
    if volume.modality not in ("MR", "OT"):
        return volume.modality
    text = f"{volume.name} {volume.meta.get('series_description') or ''}".lower()
    words = set(re.findall(r"[a-z0-9]+", text))
    found = [weighting for weighting, names in MR_WEIGHTINGS.items() if words & set(names)]
    return found[0] if len(found) == 1 else volume.modality


def _modality(contrast: str) -> str:
    return "MR" if contrast in MR_WEIGHTINGS else contrast


def pair_kind(fixed_contrast: str, moving_contrast: str) -> str:
    """Which row of the table a pair falls in.

    Returns
    -------
    str
        ``"pet"`` (PT on either side, the other not PT), ``"unknown"`` (a modality outside
        CT, PT, MR), ``"same"`` (one contrast; an MR of unnamed weighting against a named
        one counts as ``"cross"``: it may differ) or ``"cross"``.
    """
    modalities = {_modality(fixed_contrast), _modality(moving_contrast)}
    if not modalities <= set(KNOWN_MODALITIES):
        return "unknown"
    if "PT" in modalities and len(modalities) == 2:
        return "pet"
    return "same" if fixed_contrast == moving_contrast else "cross"


def deformable_iterations_for(levels: tuple[int, ...]) -> tuple[int, ...]:
    """Adam iterations of the deformable stage per pyramid level: ``5 x`` the square of
    the shrink factor, so most where an iteration is cheapest (80, 20, 5 for 4, 2, 1: the
    engine's default, the one measured in docs/benchmarks/registration.md)."""
    return tuple(5 * int(factor) ** 2 for factor in levels)


def defaults_for(fixed_contrast: str, moving_contrast: str, method: str = "rigid"
                 ) -> Settings:
    """The registration settings for a pair of contrasts (see the module's table).

    Parameters
    ----------
    fixed_contrast, moving_contrast : str
        What :func:`contrast_of` returns: ``"CT"``, ``"PT"``, ``"MR"``, an MR weighting
        (``"T1"``, ``"T2"``, ``"FLAIR"``, ``"PD"``), or another modality code (unknown).
    method : str
        ``"rigid"``, ``"similarity"``, ``"affine"`` or ``"deformable"``.

    Returns
    -------
    Settings
        The engine's other settings at their defaults; change any with
        ``dataclasses.replace(settings, device="cuda")``.

    Raises
    ------
    GeometryError
        An unknown method.
    """
    if method not in METHODS:
        raise GeometryError(f"The method must be one of {', '.join(METHODS)}; got "
                            f"{method!r}.")
    kind = pair_kind(fixed_contrast, moving_contrast)
    if kind == "same":
        metric = "ncc" if method == DEFORMABLE else "mse"
    else:
        metric = "mi"
    levels = (4, 2) if kind == "pet" else (4, 2, 1)
    return Settings(method=method, metric=metric, levels=levels,
                    deformable_iterations=deformable_iterations_for(levels),
                    regularisation="diffusion", weight=2.0,
                    smoothing_mm=8.0 if kind == "pet" else 4.0)
