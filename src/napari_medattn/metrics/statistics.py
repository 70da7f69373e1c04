"""Per-class statistics of a label map over its scan, in patient millimetres.

For every class of a label :class:`~napari_medattn.io.volume.Volume`: the voxel count,
the volume (mm^3 and mL, one voxel being ``|det(affine[:3, :3])|`` mm^3, so oblique and
anisotropic grids are measured exactly), the intensity of the scan inside it (mean,
sample standard deviation, minimum, maximum, in the scan's unit: HU for CT), and its
position in patient space: the centroid of the voxel centres and the axis-aligned
bounding box of the voxel centres, both in LPS mm through the exact affine (not the
display grid), so an oblique scan gives true patient coordinates.

The rows are plain dicts (one per class, keys :data:`FIELDS`), written to CSV by
:func:`write_statistics_csv`. The widget shows them as a table; scripts can hand them
to pandas (``pandas.DataFrame(rows)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_medattn.errors import DimensionError, GeometryError, WriteError
from napari_medattn.io.units import intensity_unit
from napari_medattn.io.volume import Volume, require_3d
from napari_medattn.metrics.report import write_csv

#: Keys of each row, in CSV column order. Positions are LPS mm (x: towards the patient's
#: left, y: posterior, z: superior).
FIELDS = (
    "label", "name", "voxels", "volume_mm3", "volume_ml",
    "mean", "sd", "min", "max", "unit",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm",
    "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
)
_POSITION_FIELDS = FIELDS[10:]
_INTENSITY_FIELDS = ("mean", "sd", "min", "max")
#: Largest affine difference (mm over the grid) at which labels and scan share a grid.
GRID_TOLERANCE_MM = 1e-3


def class_names_of(labels: Volume) -> list[str]:
    """Class names by index from ``labels.meta["classes"]`` (``(name, colour)`` pairs or
    names), or an empty list when the label map names none."""
    classes = labels.meta.get("classes") or []
    return [str(c[0]) if isinstance(c, (tuple, list)) else str(c) for c in classes]


def class_statistics(labels: Volume, image: Volume | None = None, *,
                     class_names: Sequence[str] | Mapping[int, str] | None = None,
                     include_background: bool = False) -> list[dict]:
    """Statistics of each class of ``labels`` over ``image``, in patient mm.

    Parameters
    ----------
    labels : Volume
        3D integer label map (class index per voxel, 0 background).
    image : Volume, optional
        The scan on the same grid (same shape and affine). Without it the intensity
        columns are NaN.
    class_names : sequence or mapping of int to str, optional
        Names by class index; default ``labels.meta["classes"]`` (as the segmentation
        pipeline writes them), else ``"class <n>"``.
    include_background : bool
        Also report label 0.

    Returns
    -------
    list of dict
        One row per class, keys :data:`FIELDS`, sorted by label: every label present in
        the map, and every named class even when absent (then ``voxels`` is 0 and the
        other numbers NaN). ``volume_mm3`` in mm^3, ``volume_ml`` in millilitres,
        ``mean``/``sd``/``min``/``max`` in ``unit`` (``sd`` is the sample standard
        deviation, NaN for a single voxel), centroid and bounding box of the voxel
        centres in LPS mm.

    Raises
    ------
    DimensionError
        ``labels`` is not a 3D integer map, or has negative labels.
    GeometryError
        ``image`` is not on the grid of ``labels``.
    """
    labels = require_3d(labels)
    label_map = np.asarray(labels.data)
    if label_map.dtype.kind not in "iu":
        raise DimensionError(f"{labels.name} holds {label_map.dtype} values; class statistics "
                             f"need an integer label map.")
    if label_map.dtype.kind == "i" and label_map.size and label_map.min() < 0:
        raise DimensionError(f"{labels.name} holds negative labels.")
    values, unit = None, ""
    if image is not None:
        image = require_3d(image)
        _check_same_grid(labels, image)
        values = np.asarray(image.data)
        unit = intensity_unit(image.modality, image.meta)
    names = _names(labels, class_names)

    linear, origin = labels.affine[:3, :3], labels.affine[:3, 3]
    voxel_mm3 = float(abs(np.linalg.det(linear)))
    boxes = ndimage.find_objects(label_map)
    present = {index + 1 for index, box in enumerate(boxes) if box is not None}
    if include_background and (label_map == 0).any():
        present.add(0)
    named = {k for k in names if k > 0 or include_background}
    rows = []
    for label in sorted(present | named):
        row = {"label": label, "name": names.get(label, f"class {label}"), "unit": unit}
        box = (tuple(slice(0, n) for n in label_map.shape) if label == 0
               else boxes[label - 1] if label - 1 < len(boxes) else None)
        if label not in present or box is None:
            row.update(voxels=0, volume_mm3=0.0, volume_ml=0.0,
                       **{k: float("nan") for k in _INTENSITY_FIELDS + _POSITION_FIELDS})
            rows.append(row)
            continue
        # Work inside the class's index bounding box only: cost scales with the class.
        inside = label_map[box] == label
        offset = np.array([s.start for s in box], dtype=np.float64)
        # Count and mean index from the projections on each axis (no voxel list).
        profiles = [inside.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
                    for axis in range(3)]
        count = int(profiles[0].sum())
        mean_index = offset + np.array([np.dot(p, np.arange(p.size)) / count for p in profiles])
        # The centroid of the voxel centres maps through the affine (it is linear).
        centroid = linear @ mean_index + origin
        if labels.is_oblique:
            # Each patient coordinate mixes array axes: its extremes need every voxel.
            index = np.stack(np.nonzero(inside)).astype(np.float64) + offset[:, None]
            points = linear @ index + origin[:, None]
            low, high = points.min(axis=1), points.max(axis=1)
        else:
            # Each patient coordinate follows one array axis: the extremes are corners of
            # the (tight) index box.
            corners = np.array(np.meshgrid(*[[s.start, s.stop - 1] for s in box],
                                           indexing="ij")).reshape(3, -1)
            points = linear @ corners + origin[:, None]
            low, high = points.min(axis=1), points.max(axis=1)
        row.update(voxels=count, volume_mm3=count * voxel_mm3,
                   volume_ml=count * voxel_mm3 / 1000.0)
        for axis, letter in enumerate("xyz"):
            row[f"centroid_{letter}_mm"] = float(centroid[axis])
            row[f"bbox_min_{letter}_mm"] = float(low[axis])
            row[f"bbox_max_{letter}_mm"] = float(high[axis])
        if values is None:
            row.update({k: float("nan") for k in _INTENSITY_FIELDS})
        else:
            inner = values[box][inside].astype(np.float64)
            row.update(mean=float(inner.mean()),
                       sd=float(inner.std(ddof=1)) if count > 1 else float("nan"),
                       min=float(inner.min()), max=float(inner.max()))
        rows.append(row)
    return [{key: row[key] for key in FIELDS} for row in rows]


def write_statistics_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write statistics rows (from :func:`class_statistics`) to a CSV file, atomically.

    Columns are :data:`FIELDS`; numbers keep every digit, NaN is written as ``nan``.

    Raises
    ------
    WriteError
        The file could not be written.
    """
    path = Path(path)
    try:
        return write_csv(path, list(FIELDS), [dict(row) for row in rows])
    except OSError as error:
        raise WriteError(f"Could not write the statistics to {path}: "
                         f"{error.strerror or error}.") from error


def _names(labels: Volume, class_names) -> dict[int, str]:
    if class_names is None:
        class_names = class_names_of(labels)
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return dict(enumerate(str(n) for n in class_names))


def _check_same_grid(labels: Volume, image: Volume) -> None:
    if image.spatial_shape != labels.spatial_shape:
        raise GeometryError(f"The label map has shape {labels.spatial_shape} but the scan "
                            f"{image.name} has {image.spatial_shape}; statistics need the "
                            f"labels on the scan's grid.")
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in labels.spatial_shape], indexing="ij"))
    corners = np.vstack([corners.reshape(3, -1), np.ones(8)])
    offset = float(np.abs((labels.affine - image.affine) @ corners)[:3].max())
    if offset > GRID_TOLERANCE_MM:
        raise GeometryError(f"The label map and the scan {image.name} are {offset:.3g} mm "
                            f"apart in patient space; statistics need the labels on the "
                            f"scan's grid.")
