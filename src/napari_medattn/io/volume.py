"""The Volume contract and the geometry conventions of the whole package.

Conventions, fixed here once:

* **Patient space is LPS millimetres** (DICOM and ITK): +x towards the patient's Left,
  +y towards Posterior, +z towards Superior. NIfTI's RAS affines are converted on read
  (``LPS = diag(-1, -1, 1) @ RAS``) and back on write.
* **``Volume.affine`` maps array indices to patient mm in array-axis order**: for a 3D
  volume, ``affine @ [a0, a1, a2, 1]`` is the LPS point ``[x, y, z, 1]`` of voxel
  ``data[a0, a1, a2]``. Column ``c`` of the 3x3 part is the step in mm along array axis
  ``c``. The data keep the order they had in the file (NIfTI: i, j, k; DICOM series:
  slice, row, column), so nothing is copied on read and nothing is lost on write.
* **4D volumes carry their frames (time or channels) on the first axis**; the affine
  describes the last three (spatial) axes.
* **napari world axes are (z, y, x) LPS mm**, world axis 0 = superior, 1 = posterior,
  2 = left. :meth:`Volume.canonical` gives a zero-copy view of the data whose array axes
  follow those world axes (each array axis is the patient axis it is most nearly aligned
  with, increasing in the + direction), together with its exact affine. The radiological
  screen orientation itself is the camera's business (see ``display.orientation``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from napari_medattn.errors import DimensionError, GeometryError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Patient axis letters for the + direction of LPS x, y, z and their opposites.
POSITIVE_LETTERS = ("L", "P", "S")
NEGATIVE_LETTERS = ("R", "A", "I")
#: napari world axis order: world axis w is LPS axis WORLD_TO_LPS[w] (z, y, x).
WORLD_TO_LPS = (2, 1, 0)

# Direction cosines within this angle (degrees) of a patient axis count as axis-aligned.
OBLIQUE_TOLERANCE_DEG = 1e-3


@dataclasses.dataclass
class Volume:
    """An image array and the exact geometry that places it in the patient.

    Parameters
    ----------
    data : ndarray or dask array
        3D ``(a0, a1, a2)`` or 4D ``(frames, a0, a1, a2)`` intensities in physical units
        (HU for CT after rescale, SUV for PET when available).
    affine : (4, 4) ndarray
        Array index -> LPS mm, in array-axis order (see module docstring).
    modality : str
        DICOM modality code: ``"CT"``, ``"MR"``, ``"PT"``, ``"SEG"`` for label maps, or
        ``"OT"`` when unknown.
    meta : dict
        What is needed to write the volume back exactly and to name it: ``"source"``
        (path), ``"name"``, ``"nifti_header"`` (nibabel header, for NIfTI sources),
        ``"frame_axis"`` (``"time"`` or ``"channel"`` for 4D), ``"units"``, ...
    """

    data: Any
    affine: np.ndarray
    modality: str = "OT"
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise GeometryError(f"The affine must be 4x4, got shape {self.affine.shape}.")
        if self.data.ndim not in (3, 4):
            raise GeometryError(
                f"A volume must have 3 spatial dimensions (optionally a 4th for time or "
                f"channels); this one has {self.data.ndim}."
            )
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise GeometryError("The voxel-to-patient affine is singular (zero spacing or "
                                "collinear axes).")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[-3:])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """Unit direction (LPS) of each array axis, as columns."""
        return self.affine[:3, :3] / self.spacing

    @property
    def orientation(self) -> str:
        """Orientation code: the patient direction each array axis increases towards,
        e.g. ``"LPS"`` or ``"RAS"`` (nearest letters for oblique volumes)."""
        return orientation_code(self.affine)

    @property
    def is_oblique(self) -> bool:
        return is_oblique(self.affine)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "volume"))

    def index_to_mm(self, index: Any) -> np.ndarray:
        """Patient LPS mm of array indices; see :func:`index_to_mm`."""
        return index_to_mm(self.affine, index)

    def mm_to_index(self, points: Any) -> np.ndarray:
        """Array indices (fractional) of patient LPS mm points; see :func:`mm_to_index`."""
        return mm_to_index(self.affine, points)

    def canonical(self) -> Volume:
        """A zero-copy view whose array axes follow napari's world axes (z, y, x).

        The affine of the result is exact (it is still oblique for an oblique volume);
        only axes are permuted and flipped.
        """
        perm, flips = canonical_permutation(self.affine)
        if "canonical_axes" in self.meta and not flips.any() and (perm == np.arange(3)).all():
            # Already canonical: keep the link to the original source order for write-back.
            return Volume(data=self.data, affine=self.affine.copy(), modality=self.modality,
                          meta=dict(self.meta))
        lead = self.data.ndim - 3
        data = self.data
        for axis in np.nonzero(flips)[0]:
            data = _flip(data, lead + axis)
        data = data.transpose(tuple(range(lead)) + tuple(lead + p for p in perm))
        affine = reorient_affine(self.affine, self.spatial_shape, perm, flips)
        meta = dict(self.meta)
        meta["source_affine"] = self.affine.copy()
        meta["source_shape"] = self.spatial_shape
        meta["canonical_axes"] = (tuple(int(p) for p in perm), tuple(bool(f) for f in flips))
        return Volume(data=data, affine=affine, modality=self.modality, meta=meta)


def index_to_mm(affine: np.ndarray, index: Any) -> np.ndarray:
    """Patient coordinates of array indices, through the exact affine.

    Parameters
    ----------
    affine : (4, 4) ndarray
        Array index -> LPS mm, in array-axis order (:attr:`Volume.affine`).
    index : (..., 3) array_like
        Spatial array indices ``(a0, a1, a2)``, one point per row; fractional indices are
        points between voxel centres (voxel centres are at whole indices).

    Returns
    -------
    (..., 3) ndarray of float64
        The points in patient LPS millimetres.
    """
    index = np.asarray(index, dtype=np.float64)
    if index.shape[-1:] != (3,):
        raise DimensionError(f"Indices are 3 numbers per point, not shape {index.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def mm_to_index(affine: np.ndarray, points: Any) -> np.ndarray:
    """Array indices of patient points, through the exact affine (the inverse of
    :func:`index_to_mm`).

    Parameters
    ----------
    affine : (4, 4) ndarray
        Array index -> LPS mm, in array-axis order (:attr:`Volume.affine`).
    points : (..., 3) array_like
        Points in patient LPS millimetres, one per row.

    Returns
    -------
    (..., 3) ndarray of float64
        Fractional array indices; round them for the nearest voxel. Points outside the
        array give indices below -0.5 or above ``shape - 0.5``; they are not clipped.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise DimensionError(f"Points are 3 coordinates in mm each, not shape {points.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    offsets = (points - affine[:3, 3]).reshape(-1, 3).T
    return np.linalg.solve(affine[:3, :3], offsets).T.reshape(points.shape)


def _flip(data: Any, axis: int) -> Any:
    # np.flip is a view for numpy and lazy for dask; both keep memory flat.
    if isinstance(data, np.ndarray):
        return np.flip(data, axis)
    return data[(slice(None),) * axis + (slice(None, None, -1),)]


def orientation_code(affine: np.ndarray) -> str:
    """Patient direction letters (LPS convention) that each array axis increases towards."""
    letters = []
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        letters.append(POSITIVE_LETTERS[axis] if column[axis] > 0 else NEGATIVE_LETTERS[axis])
    return "".join(letters)


def is_oblique(affine: np.ndarray) -> bool:
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.max(np.abs(direction), axis=0)
    return bool(np.any(cosines < np.cos(np.deg2rad(OBLIQUE_TOLERANCE_DEG))))


def canonical_permutation(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How to reorder array axes so they follow world axes (z, y, x) in the + direction.

    Returns ``perm`` (new axis w takes old axis ``perm[w]``) and ``flips`` (per *old*
    axis, whether it runs against its patient axis and must be reversed). Each old axis
    is assigned to the patient axis it is most aligned with, resolving ties so that the
    assignment is a permutation.
    """
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    # direction[lps, old]; world axis w is LPS axis WORLD_TO_LPS[w].
    perm = np.empty(3, dtype=int)
    # Assign the most decisive axes first so a near-45-degree axis takes what is left.
    order = np.argsort(-np.max(np.abs(direction), axis=0))
    taken_lps: set[int] = set()
    for old in order:
        candidates = [lps for lps in np.argsort(-np.abs(direction[:, old])) if lps not in taken_lps]
        lps = int(candidates[0])
        taken_lps.add(lps)
        perm[WORLD_TO_LPS.index(lps)] = old
    flips = np.zeros(3, dtype=bool)
    for w, old in enumerate(perm):
        flips[old] = direction[WORLD_TO_LPS[w], old] < 0
    return perm, flips


def reorient_affine(affine: np.ndarray, shape: tuple[int, ...], perm, flips) -> np.ndarray:
    """The exact affine of ``data`` after flipping ``flips`` axes and transposing by ``perm``."""
    new = affine.copy()
    for old in range(3):
        if flips[old]:
            # Index i' = n-1-i: origin moves to the last voxel, the step reverses.
            new[:3, 3] += new[:3, old] * (shape[old] - 1)
            new[:3, old] = -new[:3, old]
    out = np.eye(4)
    out[:3, :3] = new[:3, list(perm)]
    out[:3, 3] = new[:3, 3]
    return out


def world_affine(affine: np.ndarray) -> np.ndarray:
    """Map array index -> napari world (z, y, x) mm: the LPS affine with rows reordered."""
    out = np.eye(4)
    out[:3, :] = affine[list(WORLD_TO_LPS), :]
    return out


def nearest_grid(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translate (world order) of the axis-aligned grid nearest to a canonical affine.

    For a non-oblique canonical affine this is exact. For an oblique one the rotation is
    dropped: spacing is kept and the first voxel stays in place.
    """
    world = world_affine(affine)
    scale = np.linalg.norm(world[:3, :3], axis=0)
    translate = world[:3, 3].copy()
    return scale, translate


def require_3d(volume: Volume) -> Volume:
    """Return ``volume`` if it is a true 3D volume, else raise a one-sentence error.

    Single-frame 4D volumes are reduced to 3D (a view); a volume with one voxel along a
    spatial axis is an image, not a volume.

    Raises
    ------
    DimensionError
        Several frames (time or channels) or a 2D image (a spatial axis of size 1).
    """
    data = volume.data
    if data.ndim == 4:
        if data.shape[0] != 1:
            raise DimensionError(
                f"{volume.name} has {data.shape[0]} frames; this needs a single 3D volume "
                f"(pick one frame first)."
            )
        volume = Volume(data=data[0], affine=volume.affine, modality=volume.modality,
                        meta={k: v for k, v in volume.meta.items() if k != "frame_axis"})
    flat = [axis for axis, n in enumerate(volume.spatial_shape) if n < 2]
    if flat:
        raise DimensionError(
            f"{volume.name} is a 2D image (shape {volume.spatial_shape}); this needs a 3D "
            f"volume with more than one voxel along every axis."
        )
    return volume


def affine_from_itk(origin, spacing, direction) -> np.ndarray:
    """The array-order LPS affine of an ITK/SimpleITK image (``GetArrayFromImage`` order).

    ITK indexes ``(i, j, k)`` = (column, row, slice) and maps them to LPS mm as
    ``origin + direction @ diag(spacing) @ [i, j, k]``; its numpy array is ``[k, j, i]``.

    Parameters
    ----------
    origin : (3,) sequence of float
        ``GetOrigin()``, LPS mm.
    spacing : (3,) sequence of float
        ``GetSpacing()``, mm.
    direction : (9,) sequence of float
        ``GetDirection()``, row-major 3x3.
    """
    linear = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear[:, ::-1]
    affine[:3, 3] = origin
    return affine
