"""Boxes in patient mm, IoU and 3D NMS against closed-form values."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_medattn.detection import Detection, box_from_voxels, boxes_in_frame, nms, pairwise_iou
from napari_medattn.errors import DimensionError


def _oblique_affine():
    rotation = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    affine = np.eye(4)
    # Permuted, anisotropic, oblique: array axis 0 runs along the rotated z.
    affine[:3, :3] = rotation[:, [2, 0, 1]] * np.array([3.0, 0.8, 1.2])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


@pytest.mark.parametrize("affine", [np.diag([2.0, 1.0, 0.5, 1.0]), _oblique_affine()])
def test_box_from_voxels_covers_the_voxels_outer_corners(affine):
    first, last = np.array([3, 5, 7]), np.array([6, 5, 11])
    det = Detection(*box_from_voxels(first, last, affine))
    # Reference: the outer corners of the corner voxels through the affine.
    corners_idx = np.array([[a, b, c] for a in (first[0] - .5, last[0] + .5)
                            for b in (first[1] - .5, last[1] + .5)
                            for c in (first[2] - .5, last[2] + .5)])
    expected = corners_idx @ affine[:3, :3].T + affine[:3, 3]
    got = det.corners_mm()
    assert np.allclose(np.sort(got, axis=0), np.sort(expected, axis=0))
    assert np.isclose(det.volume_mm3, 4 * 1 * 5 * abs(np.linalg.det(affine[:3, :3])))


def test_iou_of_shifted_cubes_is_closed_form():
    a = np.array([[0, 0, 0, 2, 2, 2]], float)
    b = np.array([[1, 0, 0, 3, 2, 2], [5, 5, 5, 6, 6, 6], [0, 0, 0, 2, 2, 2]], float)
    iou = pairwise_iou(a, b)
    assert np.allclose(iou, [[4 / 12, 0.0, 1.0]])


def test_rotated_box_is_enclosed_in_the_frame():
    axes = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    det = Detection([0, 0, 0], [2, 2, 4], axes)
    (lo0, lo1, lo2, hi0, hi1, hi2), = boxes_in_frame([det], np.eye(3))
    assert np.isclose(hi0, np.sqrt(2)) and np.isclose(lo1, -np.sqrt(2)) and np.isclose(hi2, 2)
    # In its own frame the box is exact.
    assert np.allclose(boxes_in_frame([det]), [[-1, -1, -2, 1, 1, 2]])


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    dets = [Detection([0, 0, 0], [10, 10, 10], score=0.6, label=1),
            Detection([1, 0, 0], [10, 10, 10], score=0.9, label=1),
            Detection([1, 0, 0], [10, 10, 10], score=0.5, label=2),
            Detection([50, 0, 0], [10, 10, 10], score=0.3, label=1)]
    kept = nms(dets, 0.1)
    assert [d.score for d in kept] == [0.9, 0.3]
    kept = nms(dets, 0.1, per_class=True)
    assert [d.score for d in kept] == [0.9, 0.5, 0.3]
    # IoU of the first two is 9/11 = 0.818: a threshold above it keeps both.
    assert len(nms(dets[:2], 0.82)) == 2


def test_record_round_trip_and_bad_input():
    det = Detection([1, 2, 3], [4, 5, 6], score=0.25, label=2, class_name="tumour",
                    measurements={"volume_ml": np.float32(1.5), "centroid_mm": np.ones(3)})
    back = Detection.from_dict(det.to_dict())
    assert np.allclose(back.centre_mm, det.centre_mm) and back.class_name == "tumour"
    assert back.measurements["volume_ml"] == 1.5
    with pytest.raises(DimensionError):
        Detection([0, 0, np.nan], [1, 1, 1])
    with pytest.raises(DimensionError):
        Detection([0, 0, 0], [1, 1, 1], axes=np.ones((3, 3)))
    with pytest.raises(DimensionError):
        Detection.from_dict({"size_mm": [1, 1, 1]})
