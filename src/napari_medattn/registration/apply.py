"""Applying a registration result: any volume onto the fixed grid, through the one resampler.

Images are interpolated linearly; label maps take the nearest moving voxel (their values
and dtype are kept, no new label appears at a boundary) and keep their class names
(``meta["classes"]``). Outside the moving scan images read 0 and labels background.
"""

from __future__ import annotations

import numpy as np

from napari_medattn.errors import DimensionError
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_through
from napari_medattn.io.nifti import volume_like
from napari_medattn.io.volume import Volume


def warp(volume: Volume, transform, like: Volume, *, labels: bool | None = None,
         name: str | None = None) -> Volume:
    """Resample ``volume`` (moving space) onto the grid of ``like`` (fixed space).

    Parameters
    ----------
    volume : Volume
        The moving scan or a label map drawn on it (3D, or 4D frames first).
    transform : callable
        Fixed mm -> moving mm (a registration result's ``transform``).
    like : Volume
        The fixed scan: the output has its grid and write-back metadata.
    labels : bool, optional
        Nearest-neighbour label warping; default: when ``volume.modality == "SEG"``.
    name : str, optional
        Name of the result; default ``"<volume name> on <like name>"``.

    Returns
    -------
    Volume
        On ``like``'s grid, ``volume``'s modality; labels keep ``meta["classes"]``.
    """
    if min(volume.spatial_shape) < 1 or np.asarray(volume.data).ndim not in (3, 4):
        raise DimensionError(f"Only 3D (or 4D) volumes can be warped, got shape "
                             f"{volume.data.shape}.")
    is_labels = volume.modality == "SEG" if labels is None else labels
    moved = resample_through(volume, like.affine, like.spatial_shape, transform,
                             order=NEAREST if is_labels else LINEAR, mode="constant", cval=0.0)
    result = volume_like(like, moved.data, modality="SEG" if is_labels else volume.modality,
                         name=name or f"{volume.name} on {like.name}")
    if "classes" in volume.meta:
        result.meta["classes"] = volume.meta["classes"]
    if is_labels:
        result.meta["interpolation"] = "nearest"
    return result


def grid_lines(transform, volume: Volume, axis: int, index: int, step_mm: float = 8.0
               ) -> list[np.ndarray]:
    """A regular grid on one slice of the fixed grid, moved by a transform: for drawing
    the deformation.

    Parameters
    ----------
    transform : callable
        Fixed mm -> moving mm.
    volume : Volume
        The fixed scan (its grid and slices).
    axis, index : int
        The slice: array axis and index along it.
    step_mm : float
        Distance between neighbouring grid lines, in mm.

    Returns
    -------
    list of (N, 3) ndarray
        Polylines in LPS mm: each line's voxel centres ``p`` drawn at ``T(p)`` with the
        through-slice component of ``T(p) - p`` removed, so the lines stay on the slice
        (straight lines mean no deformation in the slice plane).
    """
    shape = volume.spatial_shape
    if not 0 <= axis < 3 or not 0 <= index < shape[axis]:
        raise DimensionError(f"Slice {index} along axis {axis} is outside the grid {shape}.")
    spacing = volume.spacing
    normal = volume.affine[:3, axis] / spacing[axis]
    lines = []
    in_plane = [a for a in range(3) if a != axis]
    for along, across in (in_plane, in_plane[::-1]):
        every = max(1, int(round(step_mm / spacing[across])))
        for position in range(0, shape[across], every):
            voxels = np.zeros((shape[along], 3))
            voxels[:, axis] = index
            voxels[:, across] = position
            voxels[:, along] = np.arange(shape[along])
            points = voxels @ volume.affine[:3, :3].T + volume.affine[:3, 3]
            moved = np.asarray(transform(points))
            shift = moved - points
            lines.append(points + shift - np.outer(shift @ normal, normal))
    return lines
