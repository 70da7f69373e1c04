"""Starting transforms for the optimiser: geometric centres, centres of mass, moments.

Each returns a :class:`LinearTransform` fixed mm -> moving mm, computed from the images'
own geometry (ITK's CenteredTransformInitializer GEOMETRY and MOMENTS modes do the same).
"""

from __future__ import annotations

import itertools

import numpy as np

from napari_medattn.errors import GeometryError
from napari_medattn.registration.transforms import LinearTransform

#: Initialisation modes: trust the scanner coordinates, or align centres / moments.
MODES = ("none", "geometry", "mass", "moments")


def initial_transform(mode: str, fixed: np.ndarray, fixed_affine: np.ndarray,
                      moving: np.ndarray, moving_affine: np.ndarray) -> LinearTransform:
    """The starting transform for ``mode`` (see :data:`MODES`).

    Parameters
    ----------
    mode : str
        ``"none"`` (identity: the scans share patient coordinates), ``"geometry"``
        (field-of-view centres coincide), ``"mass"`` (intensity centres of mass coincide)
        or ``"moments"`` (centres of mass and principal axes).
    fixed, moving : ndarray
        3D intensities, non-negative where they carry mass (normalised images).
    fixed_affine, moving_affine : (4, 4) ndarray
        Index -> LPS mm of each image.
    """
    if mode == "none":
        return LinearTransform.identity()
    if mode == "geometry":
        shift = fov_centre(moving_affine, moving.shape) - fov_centre(fixed_affine, fixed.shape)
        return LinearTransform.from_parameters(translation=shift)
    if mode not in ("mass", "moments"):
        raise GeometryError(f"Initialisation must be one of {MODES}, got {mode!r}.")
    centre_f, covariance_f = _moments(fixed, fixed_affine)
    centre_m, covariance_m = _moments(moving, moving_affine)
    if mode == "mass":
        return LinearTransform.from_parameters(translation=centre_m - centre_f)
    rotation = _axes_rotation(covariance_f, covariance_m)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre_m - rotation @ centre_f
    return LinearTransform(matrix, "rigid")


def fov_centre(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """LPS mm of the centre of a grid's field of view."""
    return affine[:3, :3] @ ((np.asarray(shape[-3:], float) - 1) / 2) + affine[:3, 3]


def _moments(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity-weighted centre (mm) and covariance (mm^2) of an image."""
    mass = np.clip(np.asarray(image, np.float64), 0, None)
    total = mass.sum()
    if total <= 0:
        raise GeometryError("An image is empty (no positive intensity) so its centre of "
                            "mass is undefined; use geometric initialisation.")
    axes = [np.arange(n, dtype=np.float64) for n in mass.shape]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    points = index @ affine[:3, :3].T + affine[:3, 3]
    weights = mass.reshape(-1) / total
    centre = weights @ points
    offsets = points - centre
    return centre, (offsets * weights[:, None]).T @ offsets


def _axes_rotation(covariance_f: np.ndarray, covariance_m: np.ndarray) -> np.ndarray:
    """The proper rotation taking the fixed principal axes onto the moving ones; of the
    sign choices (each axis is defined up to its sign) the one nearest the identity."""
    _, axes_f = np.linalg.eigh(covariance_f)
    _, axes_m = np.linalg.eigh(covariance_m)
    best, best_trace = np.eye(3), -np.inf
    for signs in itertools.product((1.0, -1.0), repeat=3):
        rotation = axes_m @ np.diag(signs) @ axes_f.T
        if np.linalg.det(rotation) > 0 and np.trace(rotation) > best_trace:
            best, best_trace = rotation, np.trace(rotation)
    return best
