"""The compiled linear-stage kernels against the torch closed form they replace on CPU,
and against closed-form values on a synthetic image."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medattn.io import read_volume
from napari_medattn.registration import Settings, linear_kernels, optimise
from napari_medattn.registration.engine import normalise_intensities, pyramid

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"


@pytest.fixture(scope="module")
def levels():
    fixed = read_volume(SAMPLES / "nibabel_anatomical.nii.gz")
    moved = read_volume(SAMPLES / "nibabel_anatomical_moved.nii.gz")
    return [pyramid(normalise_intensities(np.asarray(v.data, np.float32)), v.affine, (2, 1))
            for v in (fixed, moved)]


def _matrices():
    """Transforms fixed -> moving mm: near the truth, far enough that part of the fixed
    field of view leaves the moving one, and a general affine."""
    rng = np.random.default_rng(3)
    out = []
    for shift, spread in (((2.0137, -3.0291, 1.0173), 0.0), ((21.3, -9.7, 14.1), 0.05),
                          ((-4.1, 6.3, -2.2), 0.2)):
        matrix = np.eye(4)
        matrix[:3, :3] += rng.normal(0, spread, (3, 3))
        matrix[:3, 3] = shift
        out.append(matrix)
    return out


@pytest.mark.parametrize("metric", ["mse", "mi"])
@pytest.mark.parametrize("index", [0, 1])
def test_kernel_equals_the_torch_closed_form(levels, metric, index):
    run = optimise.Run(levels[0], levels[1], None, Settings(metric=metric, levels=(2, 1)),
                       None, None, None)
    rng = np.random.default_rng(index)
    run.mask_levels = [rng.random(level.data.shape) > 0.2 for level in levels[0]]  # zeros
    assert run.compiled
    kernel_level = run._linear_level(index, metric)
    run.compiled = False
    torch_level = run._linear_level(index, metric)
    assert np.array_equal(kernel_level[2], torch_level[2].numpy().reshape(-1))
    for matrix in _matrices():
        inside = _inside_fraction(kernel_level, matrix)
        ours, ours_gradient = linear_kernels.loss_and_gradient(metric, *kernel_level, matrix)
        expected, expected_gradient = run._linear_loss(torch_level, matrix, metric)
        # float64 here, float32 in torch: agreement to float32 tolerance.
        assert ours == pytest.approx(expected, rel=2e-5, abs=1e-7), inside
        scale = np.abs(expected_gradient).max()
        assert np.abs(ours_gradient - expected_gradient).max() < 2e-4 * scale, inside
        assert np.all(ours_gradient[3] == 0)


def _inside_fraction(level, matrix) -> float:
    points, _, _, image, to_index = level
    index = points @ (to_index @ matrix)[:3, :3].T + (to_index @ matrix)[:3, 3]
    return float(((index >= 0) & (index <= np.asarray(image.shape) - 1)).all(1).mean())


def test_partly_outside_transforms_are_tested(levels):
    run = optimise.Run(levels[0], levels[1], None, Settings(levels=(2, 1)), None, None, None)
    fractions = [_inside_fraction(run._linear_level(1, "mse"), m) for m in _matrices()]
    assert all(0.3 < f < 1 for f in fractions)  # the inside test matters, and many count


def test_mse_of_a_linear_ramp_in_closed_form():
    """On ``image[i, j, k] = i / 10`` with the identity grid (index = mm) and a shift ``d``
    along the first axis, every point inside reads ``(i + d) / 10``: MSE ``(d / 10)^2``,
    d MSE / d translation_0 ``2 d / 100`` and the point's coordinate times that for the
    first row of the linear part; points pushed past the last plane do not count."""
    image = np.broadcast_to(np.arange(11, dtype=np.float32)[:, None, None] / 10,
                            (11, 5, 5)).copy()
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (11, 5, 5)],
                                indexing="ij"), -1).reshape(-1, 3)
    values = grid[:, 0] / 10
    shift = 0.37
    matrix = np.eye(4)
    matrix[0, 3] = shift
    loss, gradient = linear_kernels.loss_and_gradient(
        "mse", grid, values, np.ones(len(grid), np.float32), image, np.eye(4), matrix)
    assert loss == pytest.approx((shift / 10) ** 2, rel=1e-6)
    inside = grid[:, 0] + shift <= 10
    assert gradient[0, 3] == pytest.approx(2 * shift / 100, rel=1e-6)
    assert gradient[0, 0] == pytest.approx(2 * shift / 100 * grid[inside, 0].mean(), rel=1e-6)
    assert np.allclose(gradient[1:], 0, atol=1e-12)


def test_mi_is_highest_at_alignment_and_rejects_other_metrics(levels):
    run = optimise.Run(levels[0], levels[1], None, Settings(metric="mi", levels=(2, 1)),
                       None, None, None)
    points, values, weight, _, _ = run._linear_level(1, "mi")
    image = levels[0][1].data  # the fixed image as moving: identity is the alignment
    to_index = np.linalg.inv(levels[0][1].affine)
    aligned, gradient = linear_kernels.loss_and_gradient("mi", points, values, weight, image,
                                                         to_index, np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = [1.3, 0.0, 0.0]
    assert aligned < linear_kernels.loss_and_gradient("mi", points, values, weight, image,
                                                      to_index, shifted)[0]
    with pytest.raises(ValueError, match="ncc"):
        linear_kernels.loss_and_gradient("ncc", points, values, weight, image, to_index,
                                         np.eye(4))


def test_kernel_result_does_not_depend_on_torch_threads(levels):
    run = optimise.Run(levels[0], levels[1], None, Settings(metric="mi", levels=(2, 1)),
                       None, None, None)
    level = run._linear_level(1, "mi")
    matrix = _matrices()[2]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = linear_kernels.loss_and_gradient("mi", *level, matrix)
        torch.set_num_threads(2)
        two = linear_kernels.loss_and_gradient("mi", *level, matrix)
    finally:
        torch.set_num_threads(before)
    assert one[0] == two[0] and np.array_equal(one[1], two[1])
