from pathlib import Path

import numpy as np
import pytest

from napari_medattn.errors import Cancelled, DimensionError, GeometryError
from napari_medattn.inference.resample import NEAREST, resample_to_spacing
from napari_medattn.io import Volume, read_volume
from napari_medattn.metrics.segmentation import evaluate_pair
from napari_medattn.registration import Settings, exponentiate, register, warp
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


def test_recovers_a_synthetic_smooth_field_on_mni152():
    # A 2 mm MNI152 slab moved by a known diffeomorphism (max displacement ~5 mm); its
    # exact inverse exp(-v) is what the registration must find.
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
    moving = warp(fixed, truth, fixed)
    moving_labels = warp(fixed_labels, truth, fixed)
    result = register(fixed, moving, Settings(method="deformable", metric="ncc",
                                              levels=(2, 1), deformable_iterations=(40, 10)))
    inverse = exponentiate(-velocity, fixed.affine)
    brain = np.asarray(fixed_labels.data) > 0
    points = grid_points(fixed.affine, fixed.spatial_shape)[brain]
    error = np.linalg.norm(result.transform(points) - inverse(points), axis=1)
    start = np.linalg.norm(points - inverse(points), axis=1)
    assert error.mean() < 0.5 * start.mean()
    dice = [s.dice for s in evaluate_pair(warp(moving_labels, result.transform, fixed),
                                          fixed_labels)]
    dice_before = [s.dice for s in evaluate_pair(moving_labels, fixed_labels)]
    assert min(np.subtract(dice, dice_before)[1:]) > 0.05  # grey and white matter


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
