"""Registration quality: Jacobian determinants, folding, SDlogJ, label overlap, TRE.

Definitions (``phi(x) = x + u(x)`` maps fixed mm to moving mm on a grid in fixed space):

* ``det J``: determinant of ``I + du/dx`` at every grid voxel, ``du/dx`` from central
  differences along the array axes (one-sided at the borders, ``np.gradient``) turned into
  derivatives per mm through the grid's affine (exact for oblique grids). 1 means volume
  kept, < 1 shrinking, <= 0 a fold (the map is not invertible there).
* ``folding_percent``: percentage of voxels with ``det J <= 0``.
* ``nondiffeomorphic_mm3``: volume of space mapped with reversed orientation,
  ``sum(max(-det J, 0)) * voxel volume`` (0 for a diffeomorphism).
* ``sdlogj``: standard deviation of ``log(det J)`` (clipped to [1e-9, 1e9] as Learn2Reg's
  evaluation does), over the mask when one is given: the smoothness figure of Learn2Reg.
* Dice and HD95 of warped labels come from :func:`napari_medattn.metrics.evaluate_pair`.
* ``tre_mm``: distance between mapped fixed landmarks and their moving partners
  (:func:`napari_medattn.registration.landmark_errors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import Volume
from napari_medattn.metrics.segmentation import evaluate_pair
from napari_medattn.metrics.statistics import class_names_of

#: det J values are clipped to this range before the logarithm (Learn2Reg).
LOG_CLIP = (1e-9, 1e9)


def jacobian_determinant(transform: Any, affine: np.ndarray, shape: tuple[int, int, int]
                         ) -> np.ndarray:
    """det J of ``transform`` (fixed mm -> moving mm) at every voxel of a fixed grid.

    Parameters
    ----------
    transform : callable, LinearTransform or DisplacementField
        A displacement field already on this grid is used as it is; anything else is
        evaluated at the grid's voxel centres.
    affine : (4, 4) ndarray
        Grid index -> LPS mm.
    shape : tuple of int
        Grid shape (3 axes, each at least 2 voxels).

    Returns
    -------
    ndarray of float64, ``shape``
    """
    from napari_medattn.registration.transforms import DisplacementField, bake

    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise DimensionError(f"det J needs a 3D grid with at least 2 voxels per axis, got "
                             f"{shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    matrix = getattr(transform, "matrix", None)
    if matrix is not None:
        return np.full(shape, float(np.linalg.det(np.asarray(matrix)[:3, :3])))
    on_grid = (isinstance(transform, DisplacementField) and transform.shape == shape
               and np.allclose(transform.affine, affine, atol=1e-6))
    field = transform if on_grid else bake(transform, affine, shape)
    u = field.displacement.astype(np.float64)
    # d u_c / d index_a, then per mm: du/dx = du/dindex @ inv(A3).
    per_index = np.stack([np.stack(np.gradient(u[c]), -1) for c in range(3)], -2)
    jacobian = per_index @ np.linalg.inv(affine[:3, :3]) + np.eye(3)
    return np.linalg.det(jacobian)


def folding(det_j: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None
            ) -> tuple[float, float]:
    """Percentage of voxels with ``det J <= 0`` and the non-diffeomorphic volume (mm^3)."""
    values = det_j[mask] if mask is not None else det_j.reshape(-1)
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
    if values.size == 0:
        raise DimensionError("The mask for the folding measures is empty.")
    percent = 100.0 * np.count_nonzero(values <= 0) / values.size
    return float(percent), float(np.clip(-values, 0, None).sum() * voxel_mm3)


def sdlogj(det_j: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Standard deviation of ``log(det J)`` (clipped as Learn2Reg), over ``mask``."""
    values = det_j[mask] if mask is not None else det_j.reshape(-1)
    return float(np.log(np.clip(values, *LOG_CLIP)).std())


@dataclasses.dataclass
class RegistrationQuality:
    """QA of one registration (see the module docstring for the definitions)."""

    folding_percent: float
    nondiffeomorphic_mm3: float
    sdlogj: float
    det_j_min: float
    det_j_max: float
    dice: dict[str, float]
    hd95_mm: dict[str, float]
    dice_before: dict[str, float]
    tre_mm: list[float]
    tre_mean_mm: float | None
    similarity_before: float | None
    similarity_after: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def registration_quality(transform: Any, fixed: Volume, *,
                         moving_labels: Volume | None = None,
                         fixed_labels: Volume | None = None,
                         landmarks: tuple[Sequence, Sequence] | None = None,
                         similarity: tuple[float, float] | None = None,
                         class_names: Mapping[int, str] | Sequence[str] | None = None
                         ) -> tuple[RegistrationQuality, np.ndarray]:
    """All QA figures of a result on the fixed grid, and the det J map.

    Parameters
    ----------
    transform : callable
        Fixed mm -> moving mm.
    fixed : Volume
        The fixed scan (its grid is where det J and the label overlap are measured).
    moving_labels, fixed_labels : Volume, optional
        Label maps of the moving and fixed scans: the moving one is warped (nearest) and
        compared with the fixed one per class (Dice, HD95 in mm), before and after.
    landmarks : (fixed_points, moving_points), optional
        Paired LPS mm points for the TRE.
    similarity : (before, after), optional
        The engine's metric values, carried into the report.
    class_names : optional
        Names for the label classes (default: the moving labels' ``meta["classes"]``).

    Returns
    -------
    quality : RegistrationQuality
    det_j : ndarray
        On the fixed grid.
    """
    from napari_medattn.registration import landmark_errors, warp
    from napari_medattn.registration.transforms import LinearTransform

    det_j = jacobian_determinant(transform, fixed.affine, fixed.spatial_shape)
    percent, volume = folding(det_j, fixed.affine)
    dice, hd95, before = {}, {}, {}
    if moving_labels is not None and fixed_labels is not None:
        if class_names is None and moving_labels.meta.get("classes"):
            class_names = class_names_of(moving_labels)
        warped = warp(moving_labels, transform, fixed, labels=True)
        unmoved = warp(moving_labels, LinearTransform.identity(), fixed, labels=True)
        for score in evaluate_pair(warped, fixed_labels, class_names=class_names):
            dice[score.name], hd95[score.name] = score.dice, score.hd95_mm
        for score in evaluate_pair(unmoved, fixed_labels, class_names=class_names):
            before[score.name] = score.dice
    tre: list[float] = []
    if landmarks is not None:
        tre = [float(e) for e in landmark_errors(transform, *landmarks)]
    quality = RegistrationQuality(
        folding_percent=percent, nondiffeomorphic_mm3=volume, sdlogj=sdlogj(det_j),
        det_j_min=float(det_j.min()), det_j_max=float(det_j.max()), dice=dice,
        hd95_mm=hd95, dice_before=before, tre_mm=tre,
        tre_mean_mm=float(np.mean(tre)) if tre else None,
        similarity_before=similarity[0] if similarity else None,
        similarity_after=similarity[1] if similarity else None)
    return quality, det_j
