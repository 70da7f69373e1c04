import numpy as np
import pytest

from napari_medattn.io import Volume
from napari_medattn.metrics.registration import (
    folding,
    jacobian_determinant,
    registration_quality,
    sdlogj,
)
from napari_medattn.registration import DisplacementField, LinearTransform
from napari_medattn.registration.transforms import grid_points

# An oblique 1.5 mm grid: derivatives per mm must go through the affine exactly.
ANGLE = 0.3
AFFINE = np.eye(4)
AFFINE[:3, :3] = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0],
                           [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]]) * 1.5
AFFINE[:3, 3] = [10, -5, 3]
SHAPE = (24, 20, 12)


def test_identity_has_det_j_one_and_no_folding():
    det = jacobian_determinant(DisplacementField(np.zeros((3, *SHAPE)), AFFINE), AFFINE, SHAPE)
    assert np.allclose(det, 1.0)
    assert folding(det, AFFINE) == (0.0, 0.0)
    assert sdlogj(det) == 0.0


def test_linear_map_det_j_is_its_determinant_on_an_oblique_grid():
    matrix = np.diag([1.2, 0.9, 1.1, 1.0])
    matrix[0, 1] = 0.2
    expected = np.linalg.det(matrix[:3, :3])
    assert np.allclose(jacobian_determinant(LinearTransform(matrix), AFFINE, SHAPE), expected)
    # The same map as a displacement field on the grid: central differences of a linear
    # field are exact, so det J is the same everywhere, borders included.
    points = grid_points(AFFINE, SHAPE)
    moved = points @ matrix[:3, :3].T
    field = DisplacementField(np.moveaxis(moved - points, -1, 0), AFFINE)
    assert np.allclose(jacobian_determinant(field, AFFINE, SHAPE), expected, atol=1e-4)


def test_hand_made_folded_field_gives_the_expected_folding():
    # u_x = a sin(k x0) along array axis 0 of an axis-aligned 1 mm grid with period 12
    # voxels, phase 15 degrees. Central differences of sin(k i) are sin(k) cos(k i), so
    # with a = 2 / sin(k): det J = 1 + 2 cos(k i + phase), <= 0 where cos <= -1/2,
    # i.e. at 4 of the 12 phases (135, 165, 195, 225 degrees): 1/3 of the interior.
    affine = np.eye(4)
    shape = (48, 6, 6)
    k = 2 * np.pi / 12
    phase = np.deg2rad(15)
    i = np.arange(shape[0])
    u = np.zeros((3, *shape))
    u[0] = (2 / np.sin(k) * np.sin(k * i + phase))[:, None, None]
    det = jacobian_determinant(DisplacementField(u, affine), affine, shape)
    interior = np.zeros(shape, bool)
    interior[1:-1] = True
    expected = 1 + 2 * np.cos(k * i + phase)
    assert np.allclose(det[1:-1], expected[1:-1, None, None], atol=1e-5)
    percent, volume = folding(det, affine, interior)
    cycles = expected[1:-1]
    assert percent == pytest.approx(100 * np.mean(cycles <= 0))
    assert percent == pytest.approx(100 / 3, abs=100 / 46)
    assert volume == pytest.approx(np.clip(-cycles, 0, None).sum() * 36, rel=1e-5)


def test_quality_of_identity_on_labels_and_landmarks():
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:15, 4:12, 3:9] = 1
    labels[15:20, 4:12, 3:9] = 2
    fixed = Volume(labels.astype(np.float32), AFFINE, "MR")
    seg = Volume(labels, AFFINE, "SEG", {"classes": [("background", "#000000"),
                                                     ("a", "#ff0000"), ("b", "#00ff00")]})
    points = np.array([[0.0, 0, 0], [10, 5, 3], [-4, 2, 8]])
    shift = LinearTransform.from_parameters(translation=(1.5, 0, 0))
    quality, det = registration_quality(LinearTransform.identity(), fixed,
                                        moving_labels=seg, fixed_labels=seg,
                                        landmarks=(points, points + [1.5, 0, 0]))
    assert quality.dice == {"a": 1.0, "b": 1.0} and quality.hd95_mm == {"a": 0.0, "b": 0.0}
    assert quality.tre_mean_mm == pytest.approx(1.5)
    assert np.allclose(det, 1.0) and quality.folding_percent == 0.0
    moved, _ = registration_quality(shift, fixed, landmarks=(points, points + [1.5, 0, 0]))
    assert moved.tre_mean_mm == pytest.approx(0.0, abs=1e-9)
