import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_medattn.errors import GeometryError
from napari_medattn.registration import (
    DisplacementField,
    LinearTransform,
    bake,
    compose,
    exponentiate,
    fit_landmarks,
    landmark_errors,
)
from napari_medattn.registration.synthetic import random_velocity
from napari_medattn.registration.transforms import CompositeTransform, grid_points

RNG = np.random.default_rng(3)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-20, -24, -16]


def random_rigid(seed=0):
    rng = np.random.default_rng(seed)
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(rng.normal(0, 0.3, 3)).as_matrix()
    matrix[:3, 3] = rng.normal(0, 10, 3)
    return LinearTransform(matrix, "rigid")


def test_linear_composition_and_inverse_are_exact():
    a, b = random_rigid(1), random_rigid(2)
    points = RNG.normal(0, 50, (20, 3))
    chained = compose(a, b)
    assert isinstance(chained, LinearTransform)
    assert np.allclose(chained(points), b(a(points)))
    assert np.allclose(a.inverse()(a(points)), points, atol=1e-9)


def test_composite_applies_in_order_fixed_points_meet_them():
    shift = LinearTransform.from_parameters(translation=(5, 0, 0))
    field = DisplacementField(np.full((3, 10, 12, 8), 1.5, np.float32), AFFINE)
    chain = compose(field, shift)
    assert isinstance(chain, CompositeTransform)
    inside = np.array([[-10.0, -10.0, -8.0]])
    assert np.allclose(chain(inside), inside + 1.5 + [5, 0, 0])


def test_field_outside_its_grid_is_zero_like_itk():
    field = DisplacementField(np.ones((3, 4, 4, 4), np.float32), np.eye(4))
    assert np.allclose(field(np.array([[100.0, 0, 0]])), [[100.0, 0, 0]])


def test_velocity_exponential_inverse_is_negated_velocity():
    shape = (20, 24, 16)
    v = random_velocity(shape, 2.0, magnitude_mm=4.0, smoothness_mm=8.0, seed=1)
    forward, backward = exponentiate(v, AFFINE), exponentiate(-v, AFFINE)
    points = grid_points(AFFINE, shape)[4:-4, 4:-4, 4:-4].reshape(-1, 3)
    assert np.abs(forward.displacement).max() > 2.0
    round_trip = backward(forward(points)) - points
    assert np.abs(round_trip).max() < 0.15


def test_field_inverse_reports_small_error():
    shape = (20, 24, 16)
    field = exponentiate(random_velocity(shape, 2.0, magnitude_mm=3.0, seed=2), AFFINE)
    inverse, error = field.inverse()
    assert error < 0.05
    points = grid_points(AFFINE, shape)[4:-4, 4:-4, 4:-4].reshape(-1, 3)
    assert np.abs(field(inverse(points)) - points).max() < 0.05


def test_bake_of_a_linear_transform_reproduces_it():
    rigid = random_rigid(4)
    field = bake(rigid, AFFINE, (6, 7, 5))
    points = grid_points(AFFINE, (6, 7, 5)).reshape(-1, 3)
    assert np.allclose(field(points), rigid(points), atol=1e-4)


@pytest.mark.parametrize("kind", ["rigid", "similarity"])
def test_landmark_fit_equals_closed_form_kabsch(kind):
    fixed = RNG.normal(0, 40, (12, 3))
    truth = random_rigid(5)
    scale = 1.2 if kind == "similarity" else 1.0
    moving = scale * truth(fixed) + RNG.normal(0, 0.5, (12, 3))
    fit = fit_landmarks(fixed, moving, kind)
    # Independent reference: scipy's Kabsch (Rotation.align_vectors) on centred points,
    # with the similarity scale of Umeyama's closed form.
    centred_f, centred_m = fixed - fixed.mean(0), moving - moving.mean(0)
    rotation, _ = Rotation.align_vectors(centred_m, centred_f)
    reference = rotation.as_matrix()
    if kind == "similarity":
        reference *= np.sum(centred_m * (centred_f @ reference.T)) / np.sum(centred_f ** 2)
    assert np.allclose(fit.matrix[:3, :3], reference, atol=1e-8)
    assert np.allclose(fit.matrix[:3, 3], moving.mean(0) - reference @ fixed.mean(0), atol=1e-6)
    errors = landmark_errors(fit, fixed, moving)
    assert errors.shape == (12,) and 0 < errors.mean() < 2.0


def test_affine_landmarks_recover_exact_affine():
    matrix = np.eye(4)
    matrix[:3, :3] = RNG.normal(0, 0.2, (3, 3)) + np.eye(3)
    matrix[:3, 3] = [4, -2, 7]
    fixed = RNG.normal(0, 30, (6, 3))
    fit = fit_landmarks(fixed, LinearTransform(matrix)(fixed), "affine")
    assert np.allclose(fit.matrix, matrix, atol=1e-9)


def test_degenerate_landmarks_are_refused():
    line = np.outer(np.arange(4.0), [1, 2, 3])
    with pytest.raises(GeometryError, match="one line"):
        fit_landmarks(line, line, "rigid")
    with pytest.raises(GeometryError, match="at least 4"):
        fit_landmarks(line[:3], line[:3], "affine")


def test_grid_lines_show_in_plane_displacement_only():
    from napari_medattn.io import Volume
    from napari_medattn.registration import grid_lines

    volume = Volume(np.zeros((10, 12, 8), np.float32), AFFINE, "MR")
    straight = grid_lines(LinearTransform.identity(), volume, axis=2, index=3, step_mm=4.0)
    # 12 voxels * 2 mm / 4 mm -> 6 lines along axis 0, 10 * 2 / 4 -> 5 along axis 1
    assert len(straight) == 6 + 5
    assert all(np.allclose(line[:, 2], AFFINE[2, 2] * 3 + AFFINE[2, 3]) for line in straight)
    shift = LinearTransform.from_parameters(translation=(1.0, 0.0, 5.0))
    moved = grid_lines(shift, volume, axis=2, index=3, step_mm=4.0)
    for before, after in zip(straight, moved):
        # the in-plane shift (x) is drawn, the through-plane one (z) is not
        assert np.allclose(after - before, [1.0, 0.0, 0.0])
