"""Evaluation reports: a printed table, and CSV and JSON files.

Files written by :func:`write_report` into the output folder:

* ``scores.csv``: one row per case and class, the fields of
  :class:`~napari_medattn.metrics.segmentation.SegmentationScores`; ``inf`` and ``nan``
  are written as such (pandas and NumPy read them back).
* ``summary.csv``: one row per mean (:class:`~napari_medattn.metrics.segmentation.MeanScores`):
  ``scope, case, label, name, n``, the mean of each metric, then ``excluded_<metric>``,
  the number of non-finite values skipped.
* ``evaluation.json``: ``{"scores": [...], "summary": [...], "problems": [...],
  "conventions": "..."}``; JSON has no ``inf``/``nan``, so non-finite values are ``null``
  (``pred_voxels`` and ``ref_voxels`` tell which mask was empty).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from napari_medattn.errors import WriteError
from napari_medattn.io.atomic import write_text_atomically
from napari_medattn.metrics.segmentation import METRICS, EvaluationReport, MeanScores

CONVENTIONS = (
    "Surface: mask voxels with a face-connected background neighbour. Distances in mm "
    "between surface voxel centres. Both masks empty: overlap metrics 1, distances 0. One "
    "empty: dice and iou 0, distances inf, ratios with a zero denominator nan. Means skip "
    "inf and nan and count them in excluded_<metric>."
)

# Column headings and widths of the printed table.
_COLUMNS = (("dice", "Dice", 6), ("iou", "IoU", 6), ("hd95_mm", "HD95mm", 8),
            ("hd_mm", "HDmm", 8), ("assd_mm", "ASSDmm", 8), ("sensitivity", "Sens", 6),
            ("precision", "Prec", 6), ("volume_pred_ml", "Vpred_mL", 10),
            ("volume_ref_ml", "Vref_mL", 10), ("volume_diff_rel", "dV_rel", 7))


def format_table(report: EvaluationReport) -> str:
    """The report as a fixed-width text table: each case's classes and their mean, then
    the mean of each class over cases and the overall mean (with the number of values
    skipped as non-finite)."""
    case_width = max([len("all cases"), *(len(s.case) for s in report.scores)])
    name_width = max([len("class"), *(len(s.name) for s in report.scores)])
    header = f"{'case':<{case_width}}  {'class':<{name_width}}" + "".join(
        f"  {title:>{width}}" for _, title, width in _COLUMNS)
    lines = [header, "-" * len(header)]
    means = {(m.scope, m.case, m.label): m for m in report.summary}

    def row(case: str, name: str, values: dict, note: str = "") -> str:
        return (f"{case:<{case_width}}  {name:<{name_width}}"
                + "".join(f"  {_number(values[key]):>{width}}" for key, _, width in _COLUMNS)
                + note)

    for case in dict.fromkeys(s.case for s in report.scores):
        for s in (s for s in report.scores if s.case == case):
            lines.append(row(case, s.name, s.as_dict()))
        mean = means[("case", case, None)]
        lines.append(row(case, "mean", mean.means, _skipped(mean)))
    lines.append("-" * len(header))
    for mean in report.summary:
        if mean.scope != "case":
            lines.append(row("all cases", mean.name if mean.scope == "class" else "mean",
                             mean.means, f"  n={mean.n}{_skipped(mean)}"))
    return "\n".join(lines)


def _skipped(mean: MeanScores) -> str:
    skipped = [f"{metric} {count}" for metric, count in mean.excluded.items() if count]
    return f"  (skipped: {', '.join(skipped)})" if skipped else ""


def write_report(report: EvaluationReport, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``scores.csv``, ``summary.csv`` and ``evaluation.json`` into ``out_dir``.

    Each file is written under a temporary name and renamed, so an interrupted run never
    leaves a half-written file under the final name.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    WriteError
        The folder cannot be created or written.
    """
    out_dir = Path(out_dir)
    score_fields = list(report.scores[0].as_dict()) if report.scores else []
    summary_fields = (["scope", "case", "label", "name", "n", *METRICS]
                      + [f"excluded_{m}" for m in METRICS])
    document = {
        "conventions": CONVENTIONS,
        "scores": [_json_safe(s.as_dict()) for s in report.scores],
        "summary": [_json_safe(_summary_row(m)) for m in report.summary],
        "problems": [{"case": case, "message": message} for case, message in report.problems],
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [
            write_csv(out_dir / "scores.csv", score_fields,
                       [s.as_dict() for s in report.scores]),
            write_csv(out_dir / "summary.csv", summary_fields,
                       [_summary_row(m) for m in report.summary]),
            write_text_atomically(out_dir / "evaluation.json",
                          lambda f: json.dump(document, f, indent=2, allow_nan=False)),
        ]
    except OSError as error:
        raise WriteError(f"Could not write the evaluation to {out_dir}: {error.strerror}.") from error
    return written


def _summary_row(mean: MeanScores) -> dict:
    return {"scope": mean.scope, "case": mean.case, "label": mean.label, "name": mean.name,
            "n": mean.n, **mean.means, **{f"excluded_{k}": v for k, v in mean.excluded.items()}}


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    def dump(f):
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        # repr keeps every float digit (round trip exact) and writes inf/nan by name.
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()}
                         for row in rows)
    return write_text_atomically(path, dump)


def _json_safe(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return f"{value:.4g}"
