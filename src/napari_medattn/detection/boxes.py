"""The Detection record, 3D boxes in patient millimetres, and 3D non-maximum suppression.

A detection is an oriented box in patient space: its centre (LPS mm), its edge lengths
(mm) and the three unit directions (LPS) its edges run along. Boxes made on a scan's voxel
grid (by the detector or :func:`~napari_medattn.detection.lesions.lesions_from_labels`)
are aligned with that grid's axes, so on an oblique scan they are oblique in patient
space, and their position is exact through the scan's affine.

Overlap (IoU) is computed in one *frame*: a rotation whose columns are unit LPS
directions. Every box is replaced by the smallest frame-aligned box that holds it. For
boxes aligned with the frame (all boxes of one scan, in that scan's frame) this is exact;
boxes from grids at an angle to each other are compared by their enclosing boxes, which
over-states their volume (by at most a factor of about 2.8 for a 45 degree turn about two
axes), and is said here rather than hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_medattn.errors import DimensionError

__all__ = [
    "Detection",
    "box_from_voxels",
    "boxes_in_frame",
    "common_frame",
    "pairwise_iou",
    "nms",
    "sort_by_score",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One detected (or segmented) lesion: an oriented 3D box in patient mm.

    This one record is what the detector, :func:`lesions_from_labels`, the metrics, the
    widgets, the command line and DICOM SR exchange.

    Attributes
    ----------
    centre_mm : (3,) ndarray of float
        Box centre, LPS mm (+x patient left, +y posterior, +z superior).
    size_mm : (3,) ndarray of float
        Full edge lengths in mm along ``axes[:, 0]``, ``axes[:, 1]``, ``axes[:, 2]``.
    axes : (3, 3) ndarray of float
        Columns are the unit LPS directions the box edges run along (a rotation, or a
        rotation with a reflection when the grid is left-handed); the identity for a
        box aligned with the patient axes. For boxes from a scan these are the scan
        grid's axis directions in array order.
    score : float
        Confidence in [0, 1]; 1.0 for lesions taken from a label map.
    label : int
        Class index (the label value for a label map; the card's class index for a
        detector, 0 being background so detections have ``label >= 1``).
    class_name : str
        Human-readable class.
    mask : Volume or None
        Optional instance mask: a boolean Volume of the box's voxels on the source grid,
        with that crop's exact affine.
    measurements : dict
        Optional named figures with units in their names (``volume_ml``,
        ``longest_axial_diameter_mm``, ``centroid_mm``, ``mean_intensity``, ...).
    """

    centre_mm: np.ndarray
    size_mm: np.ndarray
    axes: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    score: float = 1.0
    label: int = 1
    class_name: str = "lesion"
    mask: Any = None
    measurements: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        centre = np.asarray(self.centre_mm, dtype=np.float64).reshape(-1)
        size = np.asarray(self.size_mm, dtype=np.float64).reshape(-1)
        axes = np.asarray(self.axes, dtype=np.float64)
        if centre.shape != (3,) or size.shape != (3,) or axes.shape != (3, 3):
            raise DimensionError("A detection needs a 3-vector centre, a 3-vector size and "
                                 "3x3 axes.")
        if not (np.isfinite(centre).all() and np.isfinite(size).all() and (size >= 0).all()):
            raise DimensionError("A detection's centre and size must be finite and its size "
                                 "non-negative.")
        if not np.allclose(np.abs(axes.T @ axes), np.eye(3), atol=1e-6):
            raise DimensionError("A detection's axes must be three orthogonal unit vectors.")
        object.__setattr__(self, "centre_mm", centre)
        object.__setattr__(self, "size_mm", size)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "label", int(self.label))

    @property
    def volume_mm3(self) -> float:
        """Volume of the box (not of the lesion) in mm^3."""
        return float(np.prod(self.size_mm))

    def corners_mm(self) -> np.ndarray:
        """The eight corners, (8, 3) LPS mm."""
        signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
        return self.centre_mm + (signs * self.size_mm) @ self.axes.T

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the mask is left out: it is an image, written as one)."""
        return {
            "centre_mm": self.centre_mm.tolist(),
            "size_mm": self.size_mm.tolist(),
            "axes": self.axes.tolist(),
            "score": self.score,
            "label": self.label,
            "class_name": self.class_name,
            "measurements": {k: _jsonable(v) for k, v in self.measurements.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detection:
        """The inverse of :meth:`to_dict`."""
        try:
            return cls(centre_mm=data["centre_mm"], size_mm=data["size_mm"],
                       axes=data.get("axes", np.eye(3)), score=data.get("score", 1.0),
                       label=data.get("label", 1), class_name=data.get("class_name", "lesion"),
                       measurements=dict(data.get("measurements", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise DimensionError(f"A detection record is malformed: {error}.") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def box_from_voxels(first: Sequence[float], last: Sequence[float],
                    affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patient-space box covering voxels ``first`` .. ``last`` (inclusive) of a grid.

    The box spans the voxels' full extent (half a voxel beyond the outer voxel centres),
    aligned with the grid's axes.

    Parameters
    ----------
    first, last : (3,) sequence of float
        Array indices of the lowest and highest voxel along each axis (fractional allowed).
    affine : (4, 4) ndarray
        Array index -> LPS mm of the grid.

    Returns
    -------
    centre_mm : (3,) ndarray
    size_mm : (3,) ndarray
    axes : (3, 3) ndarray
        Unit directions of the grid's array axes, as columns.
    """
    first = np.asarray(first, dtype=np.float64)
    last = np.asarray(last, dtype=np.float64)
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    centre = affine[:3, :3] @ ((first + last) / 2.0) + affine[:3, 3]
    size = (last - first + 1.0) * spacing
    return centre, size, linear / spacing


def common_frame(detections: Sequence[Detection]) -> np.ndarray:
    """The frame IoU is computed in: the axes of the first detection (identity if none)."""
    return detections[0].axes.copy() if len(detections) else np.eye(3)


def boxes_in_frame(detections: Sequence[Detection], frame: np.ndarray | None = None) -> np.ndarray:
    """Each box as ``(lo0, lo1, lo2, hi0, hi1, hi2)`` in ``frame`` coordinates (mm).

    Coordinates are ``frame.T @ p`` for an LPS point ``p``. A box not aligned with the
    frame is replaced by the smallest aligned box that holds it (see the module notes).

    Returns
    -------
    (N, 6) ndarray of float64
    """
    frame = common_frame(detections) if frame is None else np.asarray(frame, dtype=np.float64)
    out = np.zeros((len(detections), 6))
    for i, det in enumerate(detections):
        # Half-extent along each frame axis of a box with edges size*axes.
        half = 0.5 * np.abs(frame.T @ det.axes) @ det.size_mm
        centre = frame.T @ det.centre_mm
        out[i, :3] = centre - half
        out[i, 3:] = centre + half
    return out


def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair of aligned boxes ``(lo, hi)`` (rows of :func:`boxes_in_frame`).

    Returns
    -------
    (N, M) ndarray of float64
        In [0, 1]; 0 where both boxes are empty.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 6)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    vol_a = np.prod(a[:, 3:] - a[:, :3], axis=1)
    vol_b = np.prod(b[:, 3:] - b[:, :3], axis=1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def sort_by_score(detections: Sequence[Detection]) -> list[Detection]:
    """Detections by decreasing score (stable, so ties keep their order)."""
    return sorted(detections, key=lambda d: -d.score)


def nms(detections: Sequence[Detection], iou_threshold: float = 0.1, *,
        per_class: bool = False) -> list[Detection]:
    """Greedy 3D non-maximum suppression.

    Boxes are visited by decreasing score; a box is dropped when its IoU with a box
    already kept (of the same class when ``per_class``) exceeds ``iou_threshold``.

    Parameters
    ----------
    detections : sequence of Detection
    iou_threshold : float
        In [0, 1]. Lesions rarely overlap, so a low threshold (0.1) suits them.
    per_class : bool
        Suppress only within a class.

    Returns
    -------
    list of Detection
        The kept detections, by decreasing score.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise DimensionError(f"The NMS IoU threshold must be in [0, 1], not {iou_threshold}.")
    ordered = sort_by_score(detections)
    if not ordered:
        return []
    boxes = boxes_in_frame(ordered)
    iou = pairwise_iou(boxes, boxes)
    labels = np.array([d.label for d in ordered])
    suppressed = np.zeros(len(ordered), dtype=bool)
    kept = []
    for i in range(len(ordered)):
        if suppressed[i]:
            continue
        kept.append(ordered[i])
        clash = iou[i] > iou_threshold
        if per_class:
            clash &= labels == labels[i]
        suppressed |= clash
    return kept
