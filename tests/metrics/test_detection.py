"""FROC/CPM and AP on hand-made box sets (hand-computed values) and against MONAI."""

import numpy as np
import pytest

from napari_medattn.detection import Detection
from napari_medattn.errors import DimensionError
from napari_medattn.metrics.detection import (
    FP_RATES,
    average_precision,
    evaluate_detections,
    froc,
)


def box(lo, hi, score=1.0):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return Detection((lo + hi) / 2, hi - lo, score=score)


# Two scans. Scan A: lesions g1, g2; detections d1 (on g1), d2 (far), d3 (duplicate on g1),
# d4 (on g2, IoU 2/3). Scan B: lesion g3; d5 (far), d6 (on g3, IoU 0.25).
G1, G2, G3 = box([0] * 3, [10] * 3), box([50] * 3, [60] * 3), box([0] * 3, [10] * 3)
SCAN_A = [box([0] * 3, [10] * 3, 0.9), box([100] * 3, [110] * 3, 0.8),
          box([0] * 3, [10] * 3, 0.7), box([52, 50, 50], [62, 60, 60], 0.6)]
SCAN_B = [box([200] * 3, [210] * 3, 0.5), box([0, 0, 6], [10, 10, 16], 0.3)]
DETS, TRUTHS = [SCAN_A, SCAN_B], [[G1, G2], [G3]]


def test_froc_and_cpm_hand_computed():
    # Lesion best scores 0.9, 0.6, 0.3; false positives 0.8, 0.5 over 2 scans. Operating
    # points (FP/scan, sensitivity): (0,0) (0,1/3) (.5,1/3) (.5,2/3) (1,2/3) (1,1).
    sensitivity, cpm, fps, sens = froc(DETS, TRUTHS)
    assert np.allclose(fps, [0, 0, .5, .5, 1, 1]) and np.allclose(sens, [0, 1/3, 1/3, 2/3, 2/3, 1])
    expected = [1/3, 1/3, 2/3, 1, 1, 1, 1]
    assert np.allclose([sensitivity[r] for r in FP_RATES], expected)
    assert np.isclose(cpm, 16 / 21)
    # With the centre rule d6 (centre z = 11, outside g3) misses: g3 is never found, and
    # d6 is a third false positive.
    sensitivity, cpm, _, _ = froc(DETS, TRUTHS, hit="centre")
    assert np.isclose(sensitivity[8.0], 2 / 3) and np.isclose(sensitivity[0.125], 1 / 3)


def test_ap_hand_computed():
    # Pooled by score: T F F T F T -> envelope precision 1 up to recall 1/3, then 0.5.
    assert np.isclose(average_precision(DETS, TRUTHS, 0.1), (34 + 67 * 0.5) / 101)
    # At IoU 0.3, d6 (IoU 0.25) is a false positive: recall stops at 2/3.
    assert np.isclose(average_precision(DETS, TRUTHS, 0.3), (34 + 33 * 0.5) / 101)
    scores = evaluate_detections(DETS, TRUTHS)
    assert np.isclose(scores.map_iou_0_1_0_5, (2 * 67.5 / 101 + 3 * 50.5 / 101) / 5)
    assert scores.lesions == 3 and scores.detections == 6 and scores.scans == 2
    assert np.isclose(scores.summary()["cpm"], 16 / 21)


def test_empty_cases():
    # A scan with no lesion: its detections are false positives; no lesion at all -> NaN.
    assert np.isnan(average_precision([[box([0] * 3, [1] * 3)]], [[]]))
    sens, cpm, _, _ = froc([[box([0] * 3, [1] * 3)]], [[]])
    assert np.isnan(cpm)
    assert average_precision([[]], [[G1]]) == 0.0
    with pytest.raises(DimensionError):
        froc([[]], [[], []])
    with pytest.raises(DimensionError):
        froc(DETS, TRUTHS, hit="nearby")


def _random_scans(seed, n_scans=6):
    rng = np.random.default_rng(seed)
    dets, truths = [], []
    for _ in range(n_scans):
        truth = []
        for _ in range(rng.integers(0, 4)):
            lo = rng.uniform(0, 80, 3)
            truth.append(box(lo, lo + rng.uniform(4, 20, 3)))
        scan = []
        for lesion in truth:  # noisy hits, sometimes duplicated
            for _ in range(rng.integers(0, 3)):
                shift = rng.normal(0, 3, 3)
                scan.append(Detection(lesion.centre_mm + shift, lesion.size_mm * rng.uniform(.7, 1.3, 3),
                                      score=rng.uniform()))
        for _ in range(rng.integers(0, 5)):  # false positives
            lo = rng.uniform(0, 80, 3)
            scan.append(box(lo, lo + rng.uniform(4, 20, 3), rng.uniform()))
        dets.append(scan)
        truths.append(truth)
    return dets, truths


def _monai_results(dets, truths, iou_thresholds):
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    def arr(d):
        return np.array([[*(x.centre_mm - x.size_mm / 2), *(x.centre_mm + x.size_mm / 2)]
                         for x in d]).reshape(-1, 6)

    return matching_batch(
        iou_fn=lambda a, b: np.asarray(box_iou(a, b)), iou_thresholds=iou_thresholds,
        pred_boxes=[arr(d) for d in dets], pred_classes=[np.zeros(len(d), int) for d in dets],
        pred_scores=[np.array([x.score for x in d]) for d in dets],
        gt_boxes=[arr(t) for t in truths], gt_classes=[np.zeros(len(t), int) for t in truths],
        max_detections=100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_and_map_equal_monai_coco_metric(seed):
    pytest.importorskip("monai")
    from monai.apps.detection.metrics.coco import COCOMetric

    dets, truths = _random_scans(seed)
    metric = COCOMetric(classes=["lesion"], iou_list=[0.1], iou_range=(0.1, 0.5, 0.1),
                        max_detection=[100])
    values, _ = metric(_monai_results(dets, truths, metric.get_iou_thresholds()))
    scores = evaluate_detections(dets, truths)
    assert np.isclose(scores.ap_iou_0_1, values["AP_IoU_0.10_MaxDet_100"], atol=1e-9)
    assert np.isclose(scores.map_iou_0_1_0_5, values["mAP_IoU_0.10_0.50_0.10_MaxDet_100"],
                      atol=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_froc_equals_monai_froc_score(seed):
    pytest.importorskip("monai")
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    dets, truths = _random_scans(seed, n_scans=8)
    # Which detections hit which lesion comes from MONAI's own box IoU (IoU >= 0.1).
    from monai.data.box_utils import box_iou

    tp_probs, fp_probs, n_lesions = [], [], 0
    for scan, truth in zip(dets, truths):
        n_lesions += len(truth)
        if not scan:
            continue
        pred = np.array([[*(d.centre_mm - d.size_mm / 2), *(d.centre_mm + d.size_mm / 2)]
                         for d in scan])
        gt = np.array([[*(d.centre_mm - d.size_mm / 2), *(d.centre_mm + d.size_mm / 2)]
                       for d in truth]).reshape(-1, 6)
        hits = np.asarray(box_iou(pred, gt)) >= 0.1
        scores = np.array([d.score for d in scan])
        fp_probs += scores[~hits.any(1)].tolist()
        tp_probs += [scores[hits[:, m]].max() for m in range(len(truth)) if hits[:, m].any()]
    # MONAI drops its lowest threshold (CAMELYON's script); a sentinel below every score
    # makes its curve start where LUNA16's does.
    fps, sens = compute_froc_curve_data(np.array(fp_probs + [-1.0]), np.array(tp_probs),
                                        n_lesions, len(dets))
    _, cpm, _, _ = froc(dets, truths)
    assert np.isclose(cpm, compute_froc_score(fps, sens, FP_RATES))
