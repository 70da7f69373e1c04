"""Bring an overlay into a base scan's patient space, check the request first, and project.

Everything goes through the exact affines (array index -> LPS mm) and, optionally, a
registration transform that maps *fixed* (base) mm to *moving* (overlay) mm, as the
registration results do. Resampling is the package's one resampler
(:mod:`napari_medattn.inference.resample`) with ITK's border rule: base voxel ``j`` takes
the overlay value at ``transform(A_base @ j)``, 0 from half a voxel past the overlay's
outermost voxel centres on, so the result equals SimpleITK's ``Resample``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from napari_medattn.errors import GeometryError, InsufficientMemoryError
from napari_medattn.inference.memory import available_ram
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_through, resample_to_grid
from napari_medattn.io import Volume, volume_like
from napari_medattn.io.volume import is_oblique, require_3d

GIB = 1024 ** 3
#: Description words a NIfTI reader recognises as the modality (io.nifti).
_MODALITY_WORDS = {"PT": "PET", "CT": "CT", "MR": "MR", "SEG": "SEG"}
#: Base voxels sampled per axis for the overlap check (both ends included).
_OVERLAP_SAMPLES = 64


class FrameOfReferenceWarning(UserWarning):
    """Base and overlay come from different DICOM frames of reference: their patient mm
    are not the same space unless a registration transform relates them."""


def transform_matrix(transform: Any) -> np.ndarray | None:
    """The 4x4 fixed -> moving mm matrix of a linear transform, or None for a callable one.

    Parameters
    ----------
    transform : None, (4, 4) array-like, object with a ``matrix`` attribute, or callable
        None is the identity.
    """
    if transform is None:
        return np.eye(4)
    matrix = getattr(transform, "matrix", transform)
    if callable(matrix) and not isinstance(matrix, np.ndarray):
        return None
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise GeometryError(f"A linear transform is a 4x4 mm matrix with last row [0, 0, 0, 1], "
                            f"got shape {matrix.shape}.")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise GeometryError("The transform is singular (it flattens space).")
    return matrix


def overlap_fraction(base: Volume, overlay: Volume, transform: Any = None) -> float:
    """Fraction of the base's field of view that the overlay covers, in patient space.

    Estimated on a regular sub-grid of at most 64 base voxels per axis (ends included),
    each mapped through ``transform`` into the overlay's index space; a voxel counts when
    it falls inside the overlay's voxels (half a voxel past the centres of the border).
    """
    axes = [np.unique(np.linspace(0, n - 1, min(n, _OVERLAP_SAMPLES)).round())
            for n in base.spatial_shape]
    matrix = transform_matrix(transform)
    inside = np.ones([len(a) for a in axes], bool)
    if matrix is not None:
        # One affine map base index -> overlay index: each overlay coordinate is a sum of
        # three per-axis terms, broadcast (no array of points; this check runs before
        # every fusion).
        mapping = np.linalg.solve(overlay.affine, matrix @ base.affine)
        for row, n in zip(mapping[:3], overlay.spatial_shape):
            coordinate = row[3] + sum(np.reshape(row[d] * axes[d], [-1 if e == d else 1
                                                                    for e in range(3)])
                                      for d in range(3))
            inside &= (coordinate >= -0.5) & (coordinate <= n - 0.5)
        return float(inside.mean())
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    points = grid @ base.affine[:3, :3].T + base.affine[:3, 3]
    moved = np.asarray(transform(points), dtype=np.float64)
    to_index = np.linalg.inv(overlay.affine)
    index = moved @ to_index[:3, :3].T + to_index[:3, 3]
    inside = np.all((index >= -0.5) & (index <= np.asarray(overlay.spatial_shape) - 0.5), axis=1)
    return float(inside.mean())


def frame_of_reference_uid(volume: Volume) -> str | None:
    """The DICOM FrameOfReferenceUID of a volume read from DICOM, else None (NIfTI files
    carry none)."""
    uid = volume.meta.get("frame_of_reference_uid")
    header = volume.meta.get("dicom_header")
    if uid is None and header is not None:
        uid = header.get("FrameOfReferenceUID")
    return str(uid) if uid else None


def frame_of_reference_message(base: Volume, overlay: Volume, transform: Any = None
                               ) -> str | None:
    """The one-sentence warning for scans from different frames of reference, or None.

    No warning when either UID is unknown, when they agree, or when a transform is given
    (a registration is what relates two frames).
    """
    first, second = frame_of_reference_uid(base), frame_of_reference_uid(overlay)
    if transform is not None or first is None or second is None or first == second:
        return None
    return (f"{overlay.name} and {base.name} have different frames of reference, so their "
            f"patient coordinates may not match; register them first if they look shifted.")


def check_memory(shape: tuple[int, ...], free_bytes: int | None = None, *,
                 what: str = "The fused overlay") -> int:
    """Refuse, with the numbers, an output grid that would not fit in free RAM.

    Parameters
    ----------
    shape : tuple of int
        Output spatial shape (voxels).
    free_bytes : int, optional
        Free RAM in bytes; default: what the system reports now.

    Returns
    -------
    int
        The estimated peak bytes: the float32 output plus a float32 working copy of one
        output's size (the resampler's cast and the composition's windowed copy).

    Raises
    ------
    InsufficientMemoryError
        When the estimate exceeds the free memory.
    """
    needed = 2 * 4 * int(np.prod(shape, dtype=np.int64))
    free = available_ram() if free_bytes is None else int(free_bytes)
    if needed > free:
        raise InsufficientMemoryError(
            f"{what} on a {'x'.join(map(str, shape))} grid needs about {needed / GIB:.2f} GB "
            f"of RAM but only {free / GIB:.2f} GB is free; use a coarser base grid.")
    return needed


def overlay_on_grid(overlay: Volume, base: Volume, transform: Any = None, *,
                    order: int | None = None, free_bytes: int | None = None) -> Volume:
    """Resample ``overlay`` onto ``base``'s grid in patient space.

    Parameters
    ----------
    overlay : Volume
        The moving image (PET, MR, another CT, labels), 3D.
    base : Volume
        The fixed scan whose grid (shape and exact affine) the result takes.
    transform : None, (4, 4) array-like, LinearTransform, or callable
        Fixed (base) LPS mm -> moving (overlay) LPS mm. None when both are already in one
        patient space (same scanner session or frame of reference). A 4x4 matrix or an
        object with a ``matrix`` attribute is applied exactly in one affine resampling;
        a callable (a displacement field) maps ``(N, 3)`` mm points.
    order : {0, 1}, optional
        Interpolation: default nearest neighbour for label maps (modality ``"SEG"``),
        trilinear otherwise.
    free_bytes : int, optional
        Free RAM for the pre-flight check (default: the system's figure).

    Returns
    -------
    Volume
        The base's affine and write-back metadata (a NIfTI written from it has the base's
        geometry and header), the overlay's modality, units and name.

    Raises
    ------
    DimensionError
        The overlay has several frames (4D) or is a 2D image.
    GeometryError
        The overlay does not overlap the base in patient space.
    InsufficientMemoryError
        The result would not fit in free RAM.

    Warns
    -----
    FrameOfReferenceWarning
        Different DICOM frames of reference and no transform.
    """
    overlay, base = require_3d(overlay), require_3d(base)
    if order is None:
        order = NEAREST if overlay.modality == "SEG" else LINEAR
    check_memory(base.spatial_shape, free_bytes, what=f"{overlay.name} on {base.name}'s grid")
    message = frame_of_reference_message(base, overlay, transform)
    if message:
        warnings.warn(message, FrameOfReferenceWarning, stacklevel=2)
    if overlap_fraction(base, overlay, transform) == 0.0:
        raise GeometryError(f"{overlay.name} does not overlap {base.name} in patient space "
                            f"(check the files or the transform).")
    matrix = transform_matrix(transform)
    if matrix is not None:
        # Base index -> overlay mm is one affine map: the resampler picks its separable
        # path for axis-parallel grids (any axis order and direction), its oblique loop
        # otherwise.
        moved = resample_to_grid(overlay, matrix @ base.affine, base.spatial_shape,
                                 order=order, mode="itk", cval=0.0)
    else:
        moved = resample_through(overlay, base.affine, base.spatial_shape, transform,
                                 order=order, mode="itk", cval=0.0)
    result = volume_like(base, moved.data, modality=overlay.modality,
                         name=f"{overlay.name} on {base.name}")
    for key in ("classes", "units"):
        if key in overlay.meta:
            result.meta[key] = overlay.meta[key]
    units = overlay.meta.get("units")
    header = result.meta.get("nifti_header")
    if header is not None:
        # The base's header gives the geometry; its description would name the base's
        # modality, so a written overlay would reopen as a CT. Say what the values are.
        header = header.copy()
        words = [_MODALITY_WORDS.get(overlay.modality, overlay.modality), str(units or "")]
        header["descrip"] = " ".join(w for w in words if w).encode()[:79]
        result.meta["nifti_header"] = header
    return result


def display_affine(overlay: Volume, transform: Any = None) -> np.ndarray | None:
    """Overlay index -> base (fixed) mm, when napari can show the overlay as it is.

    napari places a layer by scale and translate along world axes exactly; a rotation it
    would have to slice obliquely, which it cannot. So an overlay is shown without
    resampling when its own affine is axis-aligned and the transform (if any) only scales
    and shifts along the patient axes.

    Returns
    -------
    (4, 4) ndarray or None
        The affine that places the overlay in base mm (``inv(transform) @ A_overlay``), or
        None when the overlay must be resampled onto the base grid (oblique overlay,
        rotating or deformable transform).
    """
    matrix = transform_matrix(transform)
    if matrix is None:
        return None
    placed = np.linalg.solve(matrix, overlay.affine)
    return None if is_oblique(placed) else placed


def mip(volume: Volume, direction: Any = (0.0, 1.0, 0.0), *, spacing: float | None = None,
        free_bytes: int | None = None) -> tuple[np.ndarray, float]:
    """Maximum intensity projection of a volume along any direction in patient space.

    Parameters
    ----------
    volume : Volume
        3D, in physical units (SUV for PET).
    direction : (3,) array-like
        Viewing direction in LPS (need not be unit length): ``(0, 1, 0)`` looks from
        anterior to posterior (a coronal MIP), ``(0, 0, -1)`` from head to feet.
    spacing : float, optional
        Pixel size of the projection in mm (default: the volume's smallest voxel size).

    Returns
    -------
    image : (rows, columns) ndarray
        float32 projection: rows run from superior to inferior (or from anterior to
        posterior when looking along the S axis), columns from the viewer's left to right
        as a radiologist sees the patient facing them.
    pixel_mm : float
        The pixel size.
    """
    volume = require_3d(volume)
    view = np.asarray(direction, dtype=np.float64)
    if view.shape != (3,) or not np.linalg.norm(view) > 0:
        raise GeometryError(f"A projection direction is a non-zero LPS vector, got "
                            f"{np.asarray(direction).tolist()}.")
    view /= np.linalg.norm(view)
    step = float(spacing or volume.spacing.min())
    # Screen up is superior, unless looking along S; screen right completes a right-handed
    # frame (right, down, view), so the patient faces the viewer as in a radiograph.
    up = np.array([0.0, 0.0, 1.0]) if abs(view[2]) < 0.9 else np.array([0.0, -1.0, 0.0])
    up -= view * (up @ view)
    up /= np.linalg.norm(up)
    right = np.cross(-up, view)
    corners = np.stack(np.meshgrid(*[[0, n - 1] for n in volume.spatial_shape], indexing="ij"),
                       -1).reshape(-1, 3)
    corners_mm = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    frame = np.stack([view, -up, right], axis=1)  # columns: depth, rows (down), columns
    local = corners_mm @ frame
    low, high = local.min(axis=0), local.max(axis=0)
    shape = tuple(int(np.floor((h - lo) / step)) + 1 for lo, h in zip(low, high))
    check_memory(shape, free_bytes, what=f"The projection of {volume.name}")
    affine = np.eye(4)
    affine[:3, :3] = frame * step
    affine[:3, 3] = frame @ low
    # Outside the volume reads as its minimum, which never wins a maximum.
    floor = float(np.nanmin(np.asarray(volume.data)))
    stack = resample_to_grid(volume, affine, shape, order=LINEAR, mode="constant", cval=floor)
    return np.asarray(stack.data).max(axis=0), step

