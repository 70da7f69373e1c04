"""Linear transforms from paired landmarks, and their errors in mm.

Paired points ``fixed[i] <-> moving[i]`` (LPS mm) give the transform fixed -> moving that
minimises ``sum |T(fixed[i]) - moving[i]|^2``: rigid and similarity in closed form
(Umeyama 1991, the SVD solution of Kabsch with the reflection guard and the optimal
scale), affine by linear least squares.
"""

from __future__ import annotations

import numpy as np

from napari_medattn.errors import GeometryError
from napari_medattn.registration.transforms import LINEAR_KINDS, LinearTransform

#: Fewest pairs each kind needs (non-collinear for rigid/similarity, non-coplanar affine).
MIN_PAIRS = {"rigid": 3, "similarity": 3, "affine": 4}


def _pairs(fixed, moving) -> tuple[np.ndarray, np.ndarray]:
    fixed = np.asarray(fixed, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    if fixed.ndim != 2 or fixed.shape[1] != 3 or fixed.shape != moving.shape:
        raise GeometryError(f"Landmarks must be two (N, 3) arrays of mm with the same N; got "
                            f"{fixed.shape} and {moving.shape}.")
    if not (np.isfinite(fixed).all() and np.isfinite(moving).all()):
        raise GeometryError("A landmark has a NaN or infinite coordinate.")
    return fixed, moving


def fit_landmarks(fixed, moving, kind: str = "rigid") -> LinearTransform:
    """The least-squares transform taking ``fixed`` landmarks onto ``moving`` ones.

    Parameters
    ----------
    fixed, moving : (N, 3) array_like
        Paired points in LPS mm (pair ``i`` is row ``i`` of both).
    kind : str
        ``"rigid"`` (rotation + translation), ``"similarity"`` (+ isotropic scale) or
        ``"affine"``.

    Returns
    -------
    LinearTransform
        Fixed mm -> moving mm.

    Raises
    ------
    GeometryError
        Too few pairs, degenerate (collinear / coplanar) points, or bad arrays.
    """
    if kind not in LINEAR_KINDS:
        raise GeometryError(f"Landmark fits are {', '.join(LINEAR_KINDS)}; got {kind!r}.")
    fixed, moving = _pairs(fixed, moving)
    if len(fixed) < MIN_PAIRS[kind]:
        raise GeometryError(f"A {kind} fit needs at least {MIN_PAIRS[kind]} landmark pairs; "
                            f"got {len(fixed)}.")
    mean_f, mean_m = fixed.mean(0), moving.mean(0)
    centred_f, centred_m = fixed - mean_f, moving - mean_m
    matrix = np.eye(4)
    if kind == "affine":
        if np.linalg.matrix_rank(centred_f, tol=1e-6 * max(1.0, np.abs(centred_f).max())) < 3:
            raise GeometryError("Affine landmarks must not all lie in one plane.")
        solution, *_ = np.linalg.lstsq(centred_f, centred_m, rcond=None)
        linear = solution.T
    else:
        if np.linalg.matrix_rank(centred_f, tol=1e-6 * max(1.0, np.abs(centred_f).max())) < 2:
            raise GeometryError("Landmarks must not all lie on one line.")
        covariance = centred_m.T @ centred_f / len(fixed)
        u, singular, vt = np.linalg.svd(covariance)
        signs = np.diag([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
        linear = u @ signs @ vt
        if kind == "similarity":
            variance = (centred_f ** 2).sum() / len(fixed)
            linear = linear * (np.trace(np.diag(singular) @ signs) / variance)
    matrix[:3, :3] = linear
    matrix[:3, 3] = mean_m - linear @ mean_f
    return LinearTransform(matrix, kind)


def landmark_errors(transform, fixed, moving) -> np.ndarray:
    """Target registration error of each pair, ``|T(fixed[i]) - moving[i]|`` in mm."""
    fixed, moving = _pairs(fixed, moving)
    return np.linalg.norm(transform(fixed) - moving, axis=1)


def read_landmarks_csv(path) -> np.ndarray:
    """Landmarks from a CSV file: one point per row, ``x, y, z`` in LPS mm (a header row
    and any columns after the third are ignored).

    Raises
    ------
    ReadError
        The file is missing or a row does not start with three numbers.
    """
    import csv
    from pathlib import Path

    from napari_medattn.errors import ReadError

    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError:
        raise ReadError(f"Cannot read the landmark file {path}.") from None
    points = []
    for number, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        try:
            points.append([float(value) for value in row[:3]])
        except ValueError:
            if number == 1:
                continue  # a header
            raise ReadError(f"{path.name} line {number} does not start with x, y, z in "
                            f"mm.") from None
        if len(points[-1]) != 3:
            raise ReadError(f"{path.name} line {number} has fewer than 3 coordinates.")
    if not points:
        raise ReadError(f"{path.name} holds no landmarks.")
    return np.asarray(points)
