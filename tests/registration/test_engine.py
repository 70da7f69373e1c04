from pathlib import Path

import numpy as np
import pytest

from napari_medattn.errors import Cancelled, DimensionError, GeometryError
from napari_medattn.inference.resample import NEAREST, resample_to_spacing
from napari_medattn.io import Volume, read_volume
from napari_medattn.metrics.segmentation import evaluate_pair
from napari_medattn.registration import (
    LinearTransform,
    Settings,
    exponentiate,
    register,
    warp,
)
from napari_medattn.registration.synthetic import random_velocity
from napari_medattn.registration.transforms import grid_points

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"


def tre(result, truth, volume):
    points = grid_points(volume.affine, volume.spatial_shape).reshape(-1, 3)
    return np.linalg.norm(result(points) - truth(points), axis=1).mean()


@pytest.mark.parametrize("method,metric", [("rigid", "mse"), ("affine", "mi")])
def test_recovers_the_known_rigid_motion_of_the_nibabel_pair(nibabel_pair, method, metric):
    fixed, moved, truth = nibabel_pair
    snapshots = []
    result = register(fixed, moved, Settings(method=method, metric=metric),
                      callback=snapshots.append)
    # Mean over every voxel of the fixed grid: the target registration error in mm.
    assert tre(result.transform, truth, fixed) < 0.5
    assert tre(truth.__class__(np.eye(4)), truth, fixed) > 10  # the motion is real
    assert result.loss_after < result.loss_before
    assert snapshots and snapshots[-1].transform is not None


def test_linear_stage_with_local_ncc_goes_through_autograd(nibabel_pair):
    """Local NCC has no compiled kernel: the linear stage differentiates it by autograd."""
    fixed, moved, truth = nibabel_pair
    result = register(fixed, moved, Settings(method="rigid", metric="ncc", levels=(4, 2),
                                             iterations=10))
    assert tre(result.transform, truth, fixed) < 0.5
    assert result.loss_after < result.loss_before


def test_result_does_not_depend_on_voxel_order(nibabel_pair):
    fixed, moved, truth = nibabel_pair
    flipped = fixed.canonical()  # other array order and axis signs, same patient space
    assert not np.allclose(flipped.affine, fixed.affine)
    result = register(flipped, moved, Settings(method="rigid"))
    assert tre(result.transform, truth, fixed) < 0.5


def test_is_deterministic_on_cpu(nibabel_pair):
    fixed, moved, _ = nibabel_pair
    settings = Settings(method="rigid", metric="mi", iterations=10)
    first = register(fixed, moved, settings).transform.matrix
    assert np.array_equal(first, register(fixed, moved, settings).transform.matrix)


def test_cancel_stops_with_the_last_transform(nibabel_pair):
    fixed, moved, _ = nibabel_pair
    with pytest.raises(Cancelled) as caught:
        register(fixed, moved, Settings(method="rigid"), cancel=lambda: True)
    assert caught.value.partial is not None


@pytest.fixture(scope="module")
def mni_slab_pair():
    """A 2 mm MNI152 slab moved by a known diffeomorphism (max displacement ~5 mm): fixed,
    moving, their tissue labels, and the velocity ``v`` with moving = fixed o exp(v), so
    the registration must find exp(-v)."""
    mni = read_volume(SAMPLES / "mni152_t1.nii.gz")
    labels = read_volume(SAMPLES / "mni152_tissue_labels.nii.gz")
    fixed = resample_to_spacing(mni, (2.0, 2.0, 2.0))
    fixed_labels = resample_to_spacing(labels, (2.0, 2.0, 2.0), order=NEAREST)
    crop = (slice(14, 86), slice(16, 100), slice(36, 68))
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in crop]
    fixed = Volume(np.ascontiguousarray(fixed.data[crop]), fixed.affine @ shift, "MR")
    fixed_labels = Volume(np.ascontiguousarray(fixed_labels.data[crop]), fixed.affine, "SEG")
    velocity = random_velocity(fixed.spatial_shape, 2.0, magnitude_mm=5.0, seed=1)
    truth = exponentiate(velocity, fixed.affine)
    return (fixed, warp(fixed, truth, fixed), fixed_labels, warp(fixed_labels, truth, fixed),
            velocity)


def field_error(transform, velocity, fixed, fixed_labels) -> tuple[float, float]:
    """Mean distance (mm) inside the brain from the true inverse exp(-v): of the found
    transform, and of the identity (the error before registering)."""
    inverse = exponentiate(-velocity, fixed.affine)
    points = grid_points(fixed.affine, fixed.spatial_shape)[np.asarray(fixed_labels.data) > 0]
    return (np.linalg.norm(transform(points) - inverse(points), axis=1).mean(),
            np.linalg.norm(points - inverse(points), axis=1).mean())


def test_recovers_a_synthetic_smooth_field_on_mni152(mni_slab_pair):
    fixed, moving, fixed_labels, moving_labels, velocity = mni_slab_pair
    result = register(fixed, moving, Settings(method="deformable", metric="ncc",
                                              levels=(2, 1), deformable_iterations=(40, 10)))
    error, start = field_error(result.transform, velocity, fixed, fixed_labels)
    assert error < 0.5 * start
    dice = [s.dice for s in evaluate_pair(warp(moving_labels, result.transform, fixed),
                                          fixed_labels)]
    dice_before = [s.dice for s in evaluate_pair(moving_labels, fixed_labels)]
    assert min(np.subtract(dice, dice_before)[1:]) > 0.05  # grey and white matter


def test_starting_from_the_true_velocity_beats_starting_from_zero(mni_slab_pair):
    # "Learned + refine": a deformable run started from a given velocity on the fixed grid
    # (here the exact answer -v) keeps it as the linear part says and only refines it.
    fixed, moving, fixed_labels, _, velocity = mni_slab_pair
    identity = LinearTransform.identity()
    # A refinement's small steps (learning rate 0.05 of a voxel), the same for both runs.
    settings = Settings(method="deformable", metric="ncc", levels=(1,),
                        deformable_iterations=(4,), learning_rate=0.05)
    cold = register(fixed, moving, settings, initial=identity)
    warm = register(fixed, moving, settings, initial=identity, initial_velocity=-velocity)
    cold_error, start = field_error(cold.transform, velocity, fixed, fixed_labels)
    warm_error, _ = field_error(warm.transform, velocity, fixed, fixed_labels)
    assert warm_error < 0.4 * start and warm_error < 0.6 * cold_error
    assert warm.loss_after < cold.loss_after
    assert np.array_equal(warm.linear.matrix, np.eye(4))  # the linear stage was skipped
    untouched = register(fixed, moving, Settings(method="deformable", metric="ncc", levels=(1,),
                                                 deformable_iterations=(0,)),
                         initial=identity, initial_velocity=-velocity)
    # No iterations: the velocity comes back as given, up to its resampling onto the
    # half-resolution (4 mm) control grid (0.20 mm of the 2.3 mm motion).
    assert field_error(untouched.transform, velocity, fixed, fixed_labels)[0] < 0.25
    with pytest.raises(GeometryError, match="linear transform"):
        register(fixed, moving, settings, initial_velocity=-velocity)
    with pytest.raises(GeometryError, match="deformable"):
        register(fixed, moving, Settings(method="rigid"), initial=identity,
                 initial_velocity=-velocity)
    with pytest.raises(GeometryError, match="must be"):
        register(fixed, moving, settings, initial=identity, initial_velocity=velocity[:, 1:])


def test_bad_input_gets_one_sentence(nibabel_pair):
    fixed, moved, _ = nibabel_pair
    flat = Volume(np.ones((30, 30, 1), np.float32), np.eye(4), "MR")
    with pytest.raises(DimensionError, match="2D"):
        register(fixed, flat)
    four = Volume(np.ones((2, 10, 10, 10), np.float32), np.eye(4), "MR")
    with pytest.raises(DimensionError, match="4D"):
        register(four, moved)
    broken = Volume(np.asarray(fixed.data, np.float32).copy(), fixed.affine, "MR")
    broken.data[3, 3, 3] = np.nan
    with pytest.raises(DimensionError, match="NaN"):
        register(broken, moved)
    far = moved.affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(GeometryError, match="do not overlap"):
        register(fixed, Volume(moved.data, far, "MR"), Settings(initialise="none"))
    empty = Volume(np.zeros(fixed.spatial_shape, np.uint8), fixed.affine, "SEG")
    with pytest.raises(DimensionError, match="mask is empty"):
        register(fixed, moved, fixed_mask=empty)
    with pytest.raises(GeometryError, match="metric"):
        register(fixed, moved, Settings(metric="cc"))
