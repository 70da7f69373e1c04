"""Detections as napari layer data (plain numpy; the widget makes the layers).

Boxes are drawn on the scan layer's display grid (its ``scale`` and ``translate`` in
world (z, y, x) LPS mm, see :mod:`napari_medattn.display.layers`), as one rectangle on
every axial slice a box crosses. A box not aligned with that grid (a box from an oblique
scan shown on its nearest axis-aligned grid) is drawn as its enclosing aligned box; the
records themselves keep the exact geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_medattn.detection.boxes import Detection


def to_grid(points_mm: np.ndarray, scale: Sequence[float], translate: Sequence[float]
            ) -> np.ndarray:
    """LPS mm points ``(N, 3)`` -> display-grid coordinates ``(N, 3)`` (z, y, x order)."""
    world = np.asarray(points_mm, dtype=np.float64)[:, ::-1]
    return (world - np.asarray(translate)) / np.asarray(scale)


def box_rectangles(detections: Sequence[Detection], scale: Sequence[float],
                   translate: Sequence[float], shape: Sequence[int]
                   ) -> tuple[list[np.ndarray], list[int]]:
    """Rectangles outlining each box on every axial slice it crosses.

    Returns
    -------
    rectangles : list of (4, 3) ndarray
        Corners in display-grid coordinates ``(slice, row, column)``.
    owners : list of int
        Index in ``detections`` of each rectangle's box.
    """
    rectangles, owners = [], []
    for i, det in enumerate(detections):
        grid = to_grid(det.corners_mm(), scale, translate)
        lo, hi = grid.min(0), grid.max(0)
        # Slices whose centre lies inside the box (at least the one nearest its centre).
        first, last = int(np.ceil(lo[0])), int(np.floor(hi[0]))
        if last < first:
            first = last = int(np.rint((lo[0] + hi[0]) / 2))
        for k in range(max(first, 0), min(last, int(shape[0]) - 1) + 1):
            rectangles.append(np.array([[k, lo[1], lo[2]], [k, lo[1], hi[2]],
                                        [k, hi[1], hi[2]], [k, hi[1], lo[2]]]))
            owners.append(i)
    return rectangles, owners


def centre_points(detections: Sequence[Detection], scale: Sequence[float],
                  translate: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Box centres on the display grid ``(N, 3)`` and a marker size per box: its mean
    in-plane edge in grid units."""
    if not detections:
        return np.zeros((0, 3)), np.zeros(0)
    centres = to_grid(np.array([d.centre_mm for d in detections]), scale, translate)
    sizes = []
    for det in detections:
        grid = to_grid(det.corners_mm(), scale, translate)
        extent = grid.max(0) - grid.min(0)
        sizes.append(float(np.mean(extent[1:])))
    return centres, np.array(sizes)


def world_point(detection: Detection) -> tuple[float, float, float]:
    """The napari world position (z, y, x mm) of a detection's centre."""
    return tuple(float(v) for v in detection.centre_mm[::-1])
