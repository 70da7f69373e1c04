"""Segmentation metrics against MONAI, direct SciPy computations and hand-checkable cases."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_medattn.errors import DimensionError, GeometryError
from napari_medattn.io import Volume
from napari_medattn.metrics import METRICS, evaluate_pair, summarize


def one_hot(labels, classes):
    return torch.from_numpy(np.stack([labels == c for c in range(classes + 1)])[None]).float()


def monai_scores(pred, ref, spacing, classes):
    from monai.metrics import (compute_average_surface_distance, compute_dice,
                               compute_hausdorff_distance)

    p, r = one_hot(pred, classes), one_hot(ref, classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": compute_dice(p, r, include_background=False)[0],
            "hd95_mm": compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing))[0],
            "hd_mm": compute_hausdorff_distance(p, r, spacing=list(spacing))[0],
            "assd_mm": compute_average_surface_distance(p, r, symmetric=True,
                                                        spacing=list(spacing))[0],
        }


def test_equal_to_monai_with_anisotropic_spacing(label_pair):
    pred, ref, spacing = label_pair
    scores = evaluate_pair(pred, ref, spacing=spacing)
    assert [s.label for s in scores] == [1, 2]
    expected = monai_scores(pred, ref, spacing, classes=2)
    for metric, values in expected.items():
        # MONAI keeps distances in float32: agreement to float32 precision.
        np.testing.assert_allclose([getattr(s, metric) for s in scores], values.numpy(),
                                   rtol=2e-6, err_msg=metric)
    assert all(0 < s.dice < 1 and s.hd95_mm > 0 for s in scores)


def test_equal_to_direct_scipy_computation(label_pair):
    pred, ref, spacing = label_pair
    voxel = np.prod(spacing) / (1000.0 if len(spacing) == 3 else 100.0)
    for s in evaluate_pair(pred, ref, spacing=spacing):
        p, r = pred == s.label, ref == s.label
        surface_p = p & ~ndimage.binary_erosion(p)
        surface_r = r & ~ndimage.binary_erosion(r)
        to_ref = ndimage.distance_transform_edt(~surface_r, sampling=spacing)[surface_p]
        to_pred = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_r]
        both = np.concatenate([to_ref, to_pred])
        overlap = np.count_nonzero(p & r)
        expected = {
            "dice": 2 * overlap / (p.sum() + r.sum()),
            "iou": overlap / np.count_nonzero(p | r),
            "sensitivity": overlap / r.sum(),
            "precision": overlap / p.sum(),
            "hd95_mm": max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)),
            "hd_mm": both.max(),
            "assd_mm": both.mean(),
            "volume_pred_ml": p.sum() * voxel,
            "volume_ref_ml": r.sum() * voxel,
            "volume_diff_ml": (int(p.sum()) - int(r.sum())) * voxel,
            "volume_diff_rel": (int(p.sum()) - int(r.sum())) / r.sum(),
        }
        for metric, value in expected.items():
            assert getattr(s, metric) == pytest.approx(value, rel=1e-12), metric
        assert (s.pred_voxels, s.ref_voxels) == (p.sum(), r.sum())


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 3])
def test_cubes_offset_along_an_axis(axis, shift):
    spacing = (1.0, 0.7, 2.5)
    ref = np.zeros((24, 24, 24), np.uint8)
    ref[6:16, 6:16, 6:16] = 1
    pred = np.roll(ref, shift, axis=axis)
    [s] = evaluate_pair(pred, ref, spacing=spacing)
    # The shifted face (a sixth of the surface, more than 5%) is shift * spacing away and
    # no surface voxel is farther, so HD95 and HD are both exactly that.
    assert s.hd95_mm == pytest.approx(shift * spacing[axis], rel=1e-12)
    assert s.hd_mm == pytest.approx(shift * spacing[axis], rel=1e-12)
    assert s.dice == pytest.approx((10 - shift) / 10)
    assert s.iou == pytest.approx((10 - shift) / (10 + shift))
    assert s.volume_ref_ml == pytest.approx(1000 * 1.0 * 0.7 * 2.5 / 1000)
    assert s.volume_diff_ml == 0.0


def test_squares_offset_in_2d():
    ref = np.zeros((30, 30), bool)
    ref[5:20, 5:20] = True
    [s] = evaluate_pair(np.roll(ref, 2, axis=1), ref, spacing=(0.5, 1.5))
    assert s.hd95_mm == pytest.approx(3.0)
    assert s.dice == pytest.approx(13 / 15)
    assert s.volume_ref_ml == pytest.approx(15 * 15 * 0.75 / 100)  # cm² in 2D


def test_identical_maps_score_perfectly(label_pair):
    _, ref, spacing = label_pair
    for s in evaluate_pair(ref, ref, spacing=spacing):
        assert (s.dice, s.iou, s.sensitivity, s.precision) == (1.0, 1.0, 1.0, 1.0)
        assert (s.hd95_mm, s.hd_mm, s.assd_mm, s.volume_diff_rel) == (0.0, 0.0, 0.0, 0.0)


def test_empty_mask_conventions():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:10, 5:10, 5:10] = 1
    pred = np.zeros_like(ref)
    pred[12:15, 12:15, 12:15] = 2
    pred_empty, ref_empty, both_empty = evaluate_pair(pred, ref, spacing=(2, 2, 2),
                                                      classes=[3, 1, 2])
    assert [s.label for s in (pred_empty, ref_empty, both_empty)] == [1, 2, 3]
    # Both empty: agreement on absence is perfect.
    assert (both_empty.dice, both_empty.iou, both_empty.sensitivity, both_empty.precision) \
        == (1.0, 1.0, 1.0, 1.0)
    assert (both_empty.hd95_mm, both_empty.hd_mm, both_empty.assd_mm) == (0.0, 0.0, 0.0)
    assert (both_empty.volume_diff_ml, both_empty.volume_diff_rel) == (0.0, 0.0)
    # One empty: no overlap, no surface to measure to, undefined ratios are nan.
    for s in (pred_empty, ref_empty):
        assert (s.dice, s.iou) == (0.0, 0.0)
        assert s.hd95_mm == s.hd_mm == s.assd_mm == math.inf
    assert pred_empty.sensitivity == 0.0 and math.isnan(pred_empty.precision)
    assert pred_empty.volume_diff_rel == -1.0
    assert math.isnan(ref_empty.sensitivity) and ref_empty.precision == 0.0
    assert math.isnan(ref_empty.volume_diff_rel)
    assert ref_empty.volume_pred_ml == pytest.approx(27 * 8 / 1000)


def test_monai_empty_mask_behaviour_is_as_documented():
    """docs/metrics.md compares our conventions with MONAI's; keep that table true."""
    from monai.metrics import (compute_average_surface_distance, compute_dice,
                               compute_hausdorff_distance)

    empty = np.zeros((12, 12, 12), np.uint8)
    cube = empty.copy()
    cube[3:7, 3:7, 3:7] = 1

    def monai(pred, ref):
        p, r = one_hot(pred, 1), one_hot(ref, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [float(v) for v in (
                compute_dice(p, r, include_background=False),
                compute_dice(p, r, include_background=False, ignore_empty=False),
                compute_hausdorff_distance(p, r, percentile=95),
                compute_hausdorff_distance(p, r),
                compute_average_surface_distance(p, r, symmetric=True))]

    nan, inf = math.nan, math.inf
    np.testing.assert_array_equal(monai(empty, empty), [nan, 1.0, nan, nan, nan])
    np.testing.assert_array_equal(monai(empty, cube), [0.0, 0.0, nan, inf, inf])
    np.testing.assert_array_equal(monai(cube, empty), [nan, 0.0, nan, inf, inf])

    def ours(pred, ref):
        [s] = evaluate_pair(pred, ref, classes=[1])
        return [s.dice, s.hd95_mm, s.hd_mm, s.assd_mm]

    assert ours(empty, empty) == [1.0, 0.0, 0.0, 0.0]
    assert ours(empty, cube) == ours(cube, empty) == [0.0, inf, inf, inf]


def test_summary_skips_and_counts_non_finite_values():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[4:12, 4:12, 4:12] = 1
    ref[14:18, 14:18, 14:18] = 2
    good = evaluate_pair(np.roll(ref, 1, axis=0), ref, case="good")
    bad = evaluate_pair(np.where(ref == 2, 0, ref), ref, case="bad")  # class 2 missed
    summary = {(m.scope, m.case, m.label): m for m in summarize(good + bad)}
    class2 = summary[("class", "all", 2)]
    assert class2.n == 2 and class2.excluded["hd95_mm"] == 1 and class2.excluded["dice"] == 0
    assert class2.means["hd95_mm"] == good[1].hd95_mm
    assert class2.means["dice"] == pytest.approx((good[1].dice + 0.0) / 2)
    assert class2.excluded["precision"] == 1  # 0/0 in the missed case
    overall = summary[("all", "all", None)]
    assert overall.n == 4 and overall.excluded["assd_mm"] == 1
    assert overall.means["dice"] == pytest.approx(np.mean([s.dice for s in good + bad]))
    bad_case = summary[("case", "bad", None)]
    assert bad_case.means["hd95_mm"] == 0.0 and bad_case.excluded["hd95_mm"] == 1


def test_volumes_use_their_affine_exactly():
    ref = np.zeros((20, 22, 18), np.uint8)
    ref[4:12, 5:15, 3:9] = 1
    pred = np.roll(ref, 2, axis=1)
    spacing = (1.0, 0.7, 2.5)
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [-40.0, 12.0, 7.5]
    on_volumes = evaluate_pair(Volume(pred, affine), Volume(ref, affine))
    on_arrays = evaluate_pair(pred, ref, spacing=spacing)
    assert len(on_volumes) == len(on_arrays) == 1
    for a, b in zip(on_volumes, on_arrays):
        for metric in METRICS:
            assert getattr(a, metric) == pytest.approx(getattr(b, metric), rel=1e-12), metric


def test_inputs_as_tensors_floats_and_booleans_give_the_same_scores(label_pair):
    pred, ref, spacing = label_pair
    expected = evaluate_pair(pred, ref, spacing=spacing)
    assert evaluate_pair(torch.from_numpy(pred), torch.from_numpy(ref), spacing=spacing) == expected
    assert evaluate_pair(pred.astype(np.float32), ref.astype(np.float64), spacing=spacing) == expected
    [binary] = evaluate_pair(pred == 1, ref == 1, spacing=spacing)
    assert binary == expected[0]


def test_class_selection_and_names():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:5, 2:5, 2:5], ref[6:9, 6:9, 6:9] = 1, 4
    scores = evaluate_pair(ref, ref, classes=[4], class_names={4: "tumour"})
    assert [(s.label, s.name) for s in scores] == [(4, "tumour")]
    named = evaluate_pair(ref, ref, class_names=["background", "liver"])
    assert [(s.label, s.name) for s in named] == [(1, "liver"), (4, "class 4")]


def test_geometry_mismatch_names_the_case():
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    affine = np.diag([1.0, 0.7, 2.5, 1.0])
    moved = affine.copy()
    moved[0, 3] = 0.5
    with pytest.raises(GeometryError, match="Case liver_007: .*differ by up to 0.5 mm"):
        evaluate_pair(Volume(labels, moved), Volume(labels, affine), case="liver_007")
    with pytest.raises(GeometryError, match="Case c1: the prediction has shape"):
        evaluate_pair(labels[:-1], labels, case="c1")
    with pytest.raises(GeometryError, match="spacing comes from the volumes"):
        evaluate_pair(Volume(labels, affine), labels, spacing=(1, 1, 1))
    nearly = affine.copy()
    nearly[:3, 3] += 1e-5  # float32 header round-off: still the same grid
    [s] = evaluate_pair(Volume(labels, nearly), Volume(labels, affine))
    assert s.dice == 1.0


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 4, 4), 0.5), "non-integer values"),
    (np.full((4, 4, 4), -1, np.int16), "negative labels"),
    (np.zeros((2, 4, 4, 4), np.uint8), "2D or 3D label map"),
    (np.full((4, 4, 4), np.nan), "non-integer values"),
])
def test_bad_label_maps_raise_dimension_error(bad, message):
    with pytest.raises(DimensionError, match=message):
        evaluate_pair(bad, np.zeros(bad.shape, np.uint8))


def test_bad_spacing_raises_dimension_error():
    labels = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(DimensionError, match="3 positive numbers"):
        evaluate_pair(labels, labels, spacing=(1.0, 1.0))
    with pytest.raises(DimensionError, match="3 positive numbers"):
        evaluate_pair(labels, labels, spacing=(1.0, 0.0, 1.0))
