"""Mask surfaces and the distances between them, in millimetres.

Shared by every metric that measures how far apart two masks are (segmentation HD95 and
ASSD now; Dice/HD95 of warped labels in registration later).

Definitions, fixed here once:

* **Surface** of a mask: its voxels that have at least one face-connected neighbour
  (6-connectivity in 3D, 4 in 2D) outside the mask. Voxels on the array border count as
  surface (outside the array is background). This is ``mask & ~binary_erosion(mask)``
  with SciPy's default cross-shaped structuring element and ``border_value=0``: the edge
  definition MONAI uses when ``use_subvoxels`` is off.
* **Surface distance** of a surface voxel: the Euclidean distance in mm from its centre to
  the nearest voxel centre of the other mask's surface, with voxel index steps mapped to
  mm by the grid's linear map (the 3x3 part of the affine, or ``diag(spacing)``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the surface voxels of a mask (see the module docstring).

    Parameters
    ----------
    mask : ndarray of bool
        A 2D or 3D mask.

    Returns
    -------
    ndarray of bool
        Same shape as ``mask``; True on voxels of the mask with a face-connected
        neighbour outside it (or on the array border).
    """
    mask = np.asarray(mask, dtype=bool)
    # Padding with background makes border voxels surface voxels, as erosion with
    # border_value=0 does; shifted views of the padded array are the face neighbours.
    padded = np.pad(mask, 1)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for start in (0, 2):
            window = [slice(1, 1 + n) for n in mask.shape]
            window[axis] = slice(start, start + mask.shape[axis])
            interior &= padded[tuple(window)]
    return mask & ~interior


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other mask's surface.

    Parameters
    ----------
    pred, ref : ndarray of bool
        Two non-empty masks on the same grid (any crop of it that holds both).
    linear : (ndim, ndim) ndarray
        Array index step -> mm: the 3x3 part of the affine, or ``np.diag(spacing)``.
        Sheared or oblique grids are measured exactly.

    Returns
    -------
    pred_to_ref, ref_to_pred : ndarray of float64
        One distance (mm) per surface voxel of ``pred`` (resp. ``ref``), in no
        particular order.
    """
    index_pred = np.argwhere(surface_voxels(pred))
    index_ref = np.argwhere(surface_voxels(ref))
    # Nearest-neighbour queries over the surface voxel centres in mm give exactly the
    # value a Euclidean distance transform of the other surface would give at those
    # voxels, but cost O(surface log surface) instead of O(bounding box volume).
    # Voxels on both surfaces are at distance 0 both ways and are not queried.
    on_ref = _contains(index_ref, index_pred, pred.shape)
    on_pred = _contains(index_pred, index_ref, pred.shape)
    # Float indices: an integer matmul skips BLAS and is ~50x slower.
    points_pred = index_pred.astype(np.float64) @ linear.T
    points_ref = index_ref.astype(np.float64) @ linear.T
    return (_nearest(points_ref, points_pred[~on_ref], int(on_ref.sum())),
            _nearest(points_pred, points_ref[~on_pred], int(on_pred.sum())))


def _contains(members: np.ndarray, queries: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """For each voxel index in ``queries``, whether it is one of ``members``."""
    keys = np.ravel_multi_index(tuple(members.T), shape)
    return np.isin(np.ravel_multi_index(tuple(queries.T), shape), keys, assume_unique=True)


def _nearest(targets: np.ndarray, queries: np.ndarray, zeros: int) -> np.ndarray:
    distances = np.zeros(zeros + len(queries))
    if len(queries):
        # An unbalanced tree without compacted nodes builds several times faster and is
        # queried once, so its slightly slower queries do not pay back.
        tree = cKDTree(targets, leafsize=32, balanced_tree=False, compact_nodes=False)
        distances[zeros:] = tree.query(queries, k=1)[0]
    return distances
