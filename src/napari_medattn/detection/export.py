"""Detections as table rows, CSV and JSON: the one format the widget and the CLI write.

Rows give the centre in patient mm (LPS: x to the patient's left, y posterior, z
superior), the box edges in mm along the box axes (listed in the JSON), the box volume
in mL, and whatever measurements the detections carry (a lesion's own volume, its
longest axial diameter, its mean intensity).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_medattn.detection.boxes import Detection, sort_by_score
from napari_medattn.io.atomic import write_text_atomically

__all__ = ["FIELDS", "detection_rows", "write_detections_csv", "write_detections_json"]

FIELDS = ["rank", "score", "class", "label", "centre_x_mm", "centre_y_mm", "centre_z_mm",
          "size_0_mm", "size_1_mm", "size_2_mm", "box_volume_ml", "volume_ml",
          "longest_axial_diameter_mm", "mean_intensity"]


def detection_rows(detections: Sequence[Detection]) -> list[dict[str, Any]]:
    """One dict per detection, by decreasing score, with the keys of :data:`FIELDS`
    (measurements a detection lacks are None)."""
    rows = []
    for rank, det in enumerate(sort_by_score(detections), start=1):
        m = det.measurements
        rows.append({
            "rank": rank, "score": round(det.score, 6), "class": det.class_name,
            "label": det.label,
            **{f"centre_{a}_mm": round(float(v), 3) for a, v in zip("xyz", det.centre_mm)},
            **{f"size_{i}_mm": round(float(v), 3) for i, v in enumerate(det.size_mm)},
            "box_volume_ml": round(det.volume_mm3 / 1000.0, 4),
            "volume_ml": _rounded(m.get("volume_ml"), 4),
            "longest_axial_diameter_mm": _rounded(m.get("longest_axial_diameter_mm"), 3),
            "mean_intensity": _rounded(m.get("mean_intensity"), 4),
        })
    return rows


def _rounded(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def write_detections_csv(path: str | Path, detections: Sequence[Detection]) -> Path:
    """Write :func:`detection_rows` as CSV, atomically (an empty list writes the header)."""
    def dump(handle):
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(detection_rows(detections))

    return write_text_atomically(Path(path), dump)


def write_detections_json(path: str | Path, detections: Sequence[Detection],
                          extra: dict[str, Any] | None = None) -> Path:
    """Write the full records (:meth:`Detection.to_dict`, axes included) as JSON, atomically.

    The document is ``{"coordinates": "LPS mm", "detections": [...], **extra}``.
    """
    document = {"coordinates": "LPS mm (x patient left, y posterior, z superior)",
                "detections": [d.to_dict() for d in sort_by_score(detections)],
                **(extra or {})}
    return write_text_atomically(Path(path), lambda f: json.dump(document, f, indent=2))
