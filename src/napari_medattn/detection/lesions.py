"""Lesion instances from any label map: each connected piece becomes a :class:`Detection`.

Connected pieces come from :func:`scipy.ndimage.label` (face connectivity by default, as
scipy's own default), per label value or over all non-zero labels together. Every
instance carries, in ``measurements``:

* ``voxels``: its voxel count;
* ``volume_ml``: voxels times the voxel volume ``|det(affine[:3, :3])|`` / 1000;
* ``centroid_mm``: the mean of its voxel centres through the exact affine (LPS mm);
* ``longest_axial_diameter_mm``: RECIST-like, the longest distance between two points
  of the lesion within one axial slice, over all its slices. Points are the in-plane
  corners of its voxels, so a lesion's outer extent is measured (a single voxel
  measures its in-plane diagonal). "Axial" slices are the grid's planes across the array
  axis nearest to the patient's superior axis (on an oblique scan: the nearest such
  plane);
* ``mean_intensity``: the mean of the image under it, when an image on the same grid
  is given.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from napari_medattn.detection.boxes import Detection, box_from_voxels
from napari_medattn.errors import DimensionError, GeometryError
from napari_medattn.io.volume import Volume, require_3d

__all__ = ["lesions_from_labels", "axial_axis", "longest_axial_diameter"]

#: Grids whose affines differ by less than this (mm, per voxel step) count as the same.
SAME_GRID_MM = 1e-3


def axial_axis(affine: np.ndarray) -> int:
    """The array axis most nearly along the patient's superior-inferior (LPS z) axis."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    direction = linear / np.linalg.norm(linear, axis=0)
    return int(np.argmax(np.abs(direction[2])))


def longest_axial_diameter(indices: np.ndarray, affine: np.ndarray) -> float:
    """Longest in-slice distance (mm) between voxel corners of a set of voxels.

    Parameters
    ----------
    indices : (N, 3) ndarray of int
        Array indices of the voxels.
    affine : (4, 4) ndarray
        Array index -> LPS mm.

    Returns
    -------
    float
        The largest, over axial slices (see :func:`axial_axis`), of the largest distance
        between two in-plane voxel corners of that slice; 0.0 for no voxels.
    """
    if len(indices) == 0:
        return 0.0
    axis = axial_axis(affine)
    plane = [a for a in range(3) if a != axis]
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    corners = np.array([[di, dj] for di in (-0.5, 0.5) for dj in (-0.5, 0.5)])
    best = 0.0
    for value in np.unique(indices[:, axis]):
        pts = indices[indices[:, axis] == value][:, plane].astype(np.float64)
        # Only voxels on the slice's outline can hold the extreme corners: drop those
        # whose four in-plane neighbours all belong to the slice (speeds up big lesions).
        pts = _outline(pts)
        grid = (pts[:, None, :] + corners[None]).reshape(-1, 2)
        mm = grid @ linear[:, plane].T  # 3D positions (the slice offset cancels)
        best = max(best, _diameter(mm))
    return best


def _outline(pts: np.ndarray) -> np.ndarray:
    if len(pts) < 9:
        return pts
    lo = pts.min(0).astype(int)
    shape = (pts.max(0).astype(int) - lo) + 3
    image = np.zeros(shape, dtype=bool)
    idx = pts.astype(int) - lo + 1
    image[idx[:, 0], idx[:, 1]] = True
    inner = ndimage.binary_erosion(image)
    keep = ~inner[idx[:, 0], idx[:, 1]]
    return pts[keep]


def _diameter(points: np.ndarray) -> float:
    """Largest pairwise distance of 3D points lying in one plane (through their 2D hull)."""
    if len(points) > 16:
        centred = points - points.mean(0)
        # Coordinates in the plane: the two main directions of the points.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        try:
            hull = ConvexHull(centred @ vt[:2].T)
            points = points[hull.vertices]
        except QhullError:
            pass  # collinear points: every point is a candidate, checked below
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def _class_names(labels: Volume) -> dict[int, str]:
    """Names of label values from the volume's meta (``labels`` dict or ``classes`` list)."""
    names: dict[int, str] = {}
    declared = labels.meta.get("labels")
    if isinstance(declared, Mapping):
        names.update({int(k): str(v) for k, v in declared.items()})
    classes = labels.meta.get("classes")
    if isinstance(classes, (list, tuple)):
        for i, entry in enumerate(classes):
            names.setdefault(i, str(entry[0] if isinstance(entry, (list, tuple)) else entry))
    return names


def _check_image(image: Volume | None, labels: Volume) -> np.ndarray | None:
    if image is None:
        return None
    image = require_3d(image)
    if image.spatial_shape != labels.spatial_shape or not np.allclose(
            image.affine, labels.affine, atol=SAME_GRID_MM):
        raise GeometryError(f"{image.name} and {labels.name} are not on the same voxel grid; "
                            f"resample one onto the other first.")
    return np.asarray(image.data)


def lesions_from_labels(labels: Volume, image: Volume | None = None, *, by_class: bool = True,
                        connectivity: int = 1, min_volume_ml: float = 0.0,
                        with_masks: bool = False) -> list[Detection]:
    """Turn a label map into lesion instances, one :class:`Detection` per connected piece.

    Parameters
    ----------
    labels : Volume
        Integer label map (0 = background).
    image : Volume, optional
        Intensities on the same grid, for ``mean_intensity``.
    by_class : bool
        True: pieces of each label value separately (``label`` is that value). False:
        pieces of all non-zero labels together (a tumour's core, rim and oedema are one
        lesion), ``label`` being the piece's most frequent value.
    connectivity : {1, 2, 3}
        Neighbours that join voxels: 1 faces (6), 2 faces and edges (18), 3 also corners
        (26), as :func:`scipy.ndimage.generate_binary_structure`.
    min_volume_ml : float
        Drop pieces smaller than this (mL).
    with_masks : bool
        Attach each piece's boolean mask (cropped to its box, with that crop's affine).

    Returns
    -------
    list of Detection
        Score 1.0, boxes aligned with the label grid, ordered by label then by the
        position of the piece's first voxel (scipy's labelling order).

    Raises
    ------
    DimensionError
        Not a 3D integer label map, or a bad connectivity.
    GeometryError
        ``image`` is on another grid.
    """
    labels = require_3d(labels)
    data = np.asarray(labels.data)
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        if not np.array_equal(data, np.round(data)):
            raise DimensionError(f"{labels.name} is not a label map (it holds fractional "
                                 f"values).")
        data = data.astype(np.int64)
    if connectivity not in (1, 2, 3):
        raise DimensionError(f"Connectivity must be 1, 2 or 3, not {connectivity!r}.")
    intensities = _check_image(image, labels)
    structure = ndimage.generate_binary_structure(3, connectivity)
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    names = _class_names(labels)
    groups = [(int(v), data == v) for v in np.unique(data) if v != 0] if by_class else [
        (0, data != 0)]
    out: list[Detection] = []
    for value, mask in groups:
        pieces, count = ndimage.label(mask, structure=structure)
        for index, box in enumerate(ndimage.find_objects(pieces), start=1):
            if box is None:
                continue
            local = pieces[box] == index
            if local.sum() * voxel_ml < min_volume_ml:
                continue
            out.append(_instance(labels, data, box, local, value, names, voxel_ml,
                                 intensities, with_masks))
    return out


def _instance(labels: Volume, data: np.ndarray, box: tuple[slice, ...], local: np.ndarray,
              value: int, names: dict[int, str], voxel_ml: float,
              intensities: np.ndarray | None, with_masks: bool) -> Detection:
    offset = np.array([s.start for s in box])
    indices = np.argwhere(local) + offset
    if value == 0:  # all labels together: the piece's most frequent value names it
        values, counts = np.unique(data[box][local], return_counts=True)
        value = int(values[np.argmax(counts)])
    centre, size, axes = box_from_voxels(offset, [s.stop - 1 for s in box], labels.affine)
    centroid = labels.affine[:3, :3] @ indices.mean(0) + labels.affine[:3, 3]
    measurements = {
        "voxels": int(len(indices)),
        "volume_ml": len(indices) * voxel_ml,
        "centroid_mm": centroid,
        "longest_axial_diameter_mm": longest_axial_diameter(indices, labels.affine),
    }
    if intensities is not None:
        measurements["mean_intensity"] = float(intensities[box][local].mean())
    mask = None
    if with_masks:
        crop_affine = labels.affine.copy()
        crop_affine[:3, 3] = labels.affine[:3, :3] @ offset + labels.affine[:3, 3]
        mask = Volume(local.copy(), crop_affine, "SEG",
                      {"name": f"{labels.name} lesion mask"})
    return Detection(centre, size, axes, score=1.0, label=value,
                     class_name=names.get(value, f"label {value}"), mask=mask,
                     measurements=measurements)
