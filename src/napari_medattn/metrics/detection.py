"""Detection metrics over scans: FROC and CPM as LUNA16 defines them, AP and COCO-style mAP.

Inputs are, per scan, the detected :class:`~napari_medattn.detection.Detection` records
and the true lesions (the same record, e.g. from
:func:`~napari_medattn.detection.lesions_from_labels`). Overlap is the IoU of 3D boxes in
the frame of the scan's first box (see :mod:`napari_medattn.detection.boxes`; exact for
boxes on one scan's grid).

FROC (LUNA16, Setio et al. 2017). A detection *hits* a lesion when their IoU is at least
``iou_threshold`` (``hit="iou"``, MONAI's and nnDetection's rule) or when the detection's
centre lies inside the lesion's box (``hit="centre"``, LUNA16's rule with a box for the
nodule's sphere). A lesion counts as found at threshold ``t`` when a detection hitting it
scores at least ``t``; detections that hit a lesion are never false positives (several
hits on one lesion count once, as in LUNA16's evaluation script); the others are false
positives. Sweeping ``t`` over every score gives sensitivity against mean false positives
per scan; the sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/scan is read off by linear
interpolation (``numpy.interp``, constant beyond the ends, as LUNA16 does), and the
**CPM** is their mean.

AP (COCO, as pycocotools and MONAI's ``COCOMetric`` compute it, class-agnostic):
detections of each scan are matched greedily by decreasing score to the unmatched
lesion of highest IoU at or above the threshold; unmatched detections (duplicates
included) are false positives. Precision is made non-increasing from the right and
averaged at the 101 recalls 0, 0.01, ..., 1 (0 beyond the largest recall reached). At
most ``max_detections`` per scan (100) are scored. **mAP** averages AP over IoU
0.1, 0.2, ..., 0.5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from napari_medattn.detection.boxes import (
    Detection,
    boxes_in_frame,
    common_frame,
    pairwise_iou,
    sort_by_score,
)
from napari_medattn.errors import DimensionError

__all__ = ["FP_RATES", "MAP_IOUS", "DetectionScores", "froc", "average_precision",
           "evaluate_detections"]

#: False positives per scan at which LUNA16 reads the FROC curve.
FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: IoU thresholds of the COCO-style mAP.
MAP_IOUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
RECALLS = np.linspace(0.0, 1.0, 101)

Scans = Sequence[Sequence[Detection]]


@dataclasses.dataclass
class DetectionScores:
    """Detection quality over a set of scans.

    Attributes
    ----------
    sensitivity : dict of float to float
        FROC sensitivity at each rate of :data:`FP_RATES` (false positives per scan).
    cpm : float
        Mean of ``sensitivity`` (LUNA16's competition performance metric).
    ap_iou_0_1 : float
        AP at IoU 0.1.
    map_iou_0_1_0_5 : float
        Mean AP over IoU 0.1 to 0.5 (step 0.1).
    curve_fps, curve_sensitivity : ndarray
        The FROC curve: mean false positives per scan and sensitivity, by decreasing
        threshold, starting at (0, 0).
    scans, lesions, detections : int
    """

    sensitivity: dict[float, float]
    cpm: float
    ap_iou_0_1: float
    map_iou_0_1_0_5: float
    curve_fps: np.ndarray
    curve_sensitivity: np.ndarray
    scans: int
    lesions: int
    detections: int

    def summary(self) -> dict[str, float]:
        """Flat, JSON-ready figures."""
        out = {f"sensitivity_at_{rate:g}_fp": value for rate, value in self.sensitivity.items()}
        out.update(cpm=self.cpm, ap_iou_0_1=self.ap_iou_0_1,
                   map_iou_0_1_0_5=self.map_iou_0_1_0_5, scans=self.scans,
                   lesions=self.lesions, detections=self.detections)
        return out


def _check(detections: Scans, truths: Scans) -> None:
    if len(detections) != len(truths):
        raise DimensionError(f"There are detections for {len(detections)} scans but true "
                             f"lesions for {len(truths)}; give one list per scan for both.")
    if len(truths) == 0:
        raise DimensionError("Detection metrics need at least one scan.")


def _scan_iou(dets: Sequence[Detection], truth: Sequence[Detection]) -> np.ndarray:
    frame = common_frame(list(truth) + list(dets))
    return pairwise_iou(boxes_in_frame(dets, frame), boxes_in_frame(truth, frame))


def _hits(dets: Sequence[Detection], truth: Sequence[Detection], hit: str,
          iou_threshold: float) -> np.ndarray:
    """(N, M) bool: detection n hits lesion m."""
    if not len(dets) or not len(truth):
        return np.zeros((len(dets), len(truth)), dtype=bool)
    if hit == "iou":
        return _scan_iou(dets, truth) >= iou_threshold
    if hit == "centre":
        out = np.zeros((len(dets), len(truth)), dtype=bool)
        for m, lesion in enumerate(truth):
            for n, det in enumerate(dets):
                local = lesion.axes.T @ (det.centre_mm - lesion.centre_mm)
                out[n, m] = bool((np.abs(local) <= lesion.size_mm / 2).all())
        return out
    raise DimensionError(f"Unknown hit rule {hit!r}; use 'iou' or 'centre'.")


def froc(detections: Scans, truths: Scans, *, hit: str = "iou", iou_threshold: float = 0.1,
         fp_rates: Sequence[float] = FP_RATES
         ) -> tuple[dict[float, float], float, np.ndarray, np.ndarray]:
    """FROC sensitivities, CPM and the curve (see the module docstring).

    Parameters
    ----------
    detections, truths : sequence (one entry per scan) of sequences of Detection
    hit : {"iou", "centre"}
    iou_threshold : float
        For ``hit="iou"``.
    fp_rates : sequence of float
        False positives per scan to read the curve at.

    Returns
    -------
    sensitivity : dict of float to float
    cpm : float
    fps, sensitivities : ndarray
        The curve from (0, 0), by decreasing score threshold. With no lesion at all the
        sensitivities are NaN.
    """
    _check(detections, truths)
    lesion_scores: list[float] = []   # best hit score per lesion (-inf: never hit)
    fp_scores: list[float] = []
    for dets, truth in zip(detections, truths):
        hits = _hits(dets, truth, hit, iou_threshold)
        scores = np.array([d.score for d in dets])
        for m in range(len(truth)):
            lesion_scores.append(float(scores[hits[:, m]].max()) if hits[:, m].any() else -np.inf)
        fp_scores.extend(scores[~hits.any(axis=1)].tolist() if len(dets) else [])
    lesions = np.array(lesion_scores)
    fps = np.array(fp_scores)
    thresholds = np.unique(np.concatenate([lesions[np.isfinite(lesions)], fps]))[::-1]
    n_scans = len(truths)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve_fps = np.concatenate([[0.0], [(fps >= t).sum() / n_scans for t in thresholds]])
        curve_sens = np.concatenate([[0.0], [(lesions >= t).sum() / len(lesions)
                                             for t in thresholds]]) if len(lesions) else \
            np.full(len(thresholds) + 1, np.nan)
    sensitivity = {float(r): float(np.interp(r, curve_fps, curve_sens)) for r in fp_rates}
    cpm = float(np.mean(list(sensitivity.values())))
    return sensitivity, cpm, curve_fps, curve_sens


def average_precision(detections: Scans, truths: Scans, iou_threshold: float = 0.1, *,
                      max_detections: int = 100) -> float:
    """COCO-style AP at one IoU threshold, all classes together (module docstring).

    Returns NaN when there is no true lesion in any scan.
    """
    _check(detections, truths)
    matched_scores, matched_flags = [], []
    n_lesions = 0
    for dets, truth in zip(detections, truths):
        dets = sort_by_score(dets)[:max_detections]
        n_lesions += len(truth)
        iou = _scan_iou(dets, truth) if len(dets) and len(truth) else np.zeros((len(dets), 0))
        taken = np.zeros(len(truth), dtype=bool)
        for n, det in enumerate(dets):
            candidates = np.where(~taken & (iou[n] >= iou_threshold), iou[n], -1.0)
            best = int(np.argmax(candidates)) if len(truth) else -1
            is_tp = best >= 0 and candidates[best] >= 0
            if is_tp:
                taken[best] = True
            matched_scores.append(det.score)
            matched_flags.append(is_tp)
    if n_lesions == 0:
        return float("nan")
    # Stable sort as pycocotools (mergesort) so equal scores keep their scan order.
    order = np.argsort(-np.array(matched_scores), kind="mergesort")
    flags = np.array(matched_flags, dtype=bool)[order]
    tp = np.cumsum(flags)
    fp = np.cumsum(~flags)
    recall = tp / n_lesions
    precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    index = np.searchsorted(recall, RECALLS, side="left")
    sampled = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)]
                       if len(precision) else 0.0, 0.0)
    return float(np.mean(sampled))


def evaluate_detections(detections: Scans, truths: Scans, *, hit: str = "iou",
                        iou_threshold: float = 0.1) -> DetectionScores:
    """FROC, CPM, AP at IoU 0.1 and mAP over IoU 0.1-0.5 in one call.

    Parameters
    ----------
    detections, truths : sequence (one entry per scan) of sequences of Detection
    hit, iou_threshold
        The FROC hit rule (see :func:`froc`).
    """
    sensitivity, cpm, fps, sens = froc(detections, truths, hit=hit, iou_threshold=iou_threshold)
    aps = [average_precision(detections, truths, t) for t in MAP_IOUS]
    return DetectionScores(sensitivity=sensitivity, cpm=cpm, ap_iou_0_1=aps[0],
                           map_iou_0_1_0_5=float(np.mean(aps)), curve_fps=fps,
                           curve_sensitivity=sens, scans=len(truths),
                           lesions=sum(len(t) for t in truths),
                           detections=sum(len(d) for d in detections))
