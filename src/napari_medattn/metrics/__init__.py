"""Metrics of the package, one module per task (segmentation now; detection,
registration and fusion metrics join as sibling modules and reuse ``surface`` and
``report``).

Public API: :func:`evaluate_pair` (two label maps, per class), :func:`evaluate_folders`
and :func:`evaluate_paths` (cases matched by file name), :func:`summarize` (means with
counts of skipped non-finite values), :func:`format_table` and :func:`write_report`
(CSV and JSON), the result types, and :func:`surface_voxels` / :func:`surface_distances`
(the surface definition and mm distances every distance metric uses). Definitions and
empty-mask conventions: ``docs/metrics.md``.
"""

from napari_medattn.metrics.report import format_table, write_report
from napari_medattn.metrics.segmentation import (
    METRICS,
    EvaluationReport,
    MeanScores,
    SegmentationScores,
    evaluate_folders,
    evaluate_pair,
    evaluate_paths,
    summarize,
)
from napari_medattn.metrics.surface import surface_distances, surface_voxels

__all__ = [
    "METRICS",
    "EvaluationReport",
    "MeanScores",
    "SegmentationScores",
    "evaluate_folders",
    "evaluate_pair",
    "evaluate_paths",
    "format_table",
    "summarize",
    "surface_distances",
    "surface_voxels",
    "write_report",
]
