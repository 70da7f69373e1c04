"""The resampler's two compiled paths against independent references: scipy's
``affine_transform`` (its zoom_shift path for diagonal mappings, its general path
otherwise) for the "nearest" and "constant" border rules, SimpleITK's ``Resample`` for
the "itk" rule, and each other at the borders of the source grid."""

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_medattn.errors import GeometryError
from napari_medattn.inference import resample
from napari_medattn.inference.resample import LINEAR, NEAREST, parallel_axes, resample_to_grid
from napari_medattn.io import Volume

SHAPE = (9, 8, 7)


def source_volume(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = (-4.0, 3.0, 7.0)
    data = (rng.random(SHAPE) * 100).astype(dtype) if dtype != np.uint8 else \
        rng.integers(0, 6, SHAPE).astype(np.uint8)
    return Volume(data, affine, "CT" if dtype != np.uint8 else "SEG")


def border_grid(volume, zoom):
    """A target grid parallel to the source whose coordinates along each axis step by
    ``zoom`` from 1.5 voxels before the first centre to past the last, hitting -0.5, 0,
    n - 1 and n - 0.5 exactly (binary fractions)."""
    mapping = np.diag([*zoom, 1.0])
    mapping[:3, 3] = -1.5
    shape = tuple(int(np.ceil((n + 2.0) / z)) + 1 for n, z in zip(SHAPE, zoom))
    return volume.affine @ mapping, shape, mapping


def fill_for(order):
    """A fill value no source voxel has: labels are 0-5, intensities 0-100."""
    return 200 if order == NEAREST else -7.0


def scipy_reference(data, matrix, offset, shape, order, mode):
    cval = fill_for(order)
    out = np.empty(shape, dtype=data.dtype if order == NEAREST else np.float32)
    source = data if order == NEAREST else data.astype(np.float32)
    ndimage.affine_transform(source, matrix, offset=offset, output_shape=shape, output=out,
                             order=order, mode=mode, cval=cval, prefilter=False)
    return out


@pytest.mark.parametrize("mode", ["nearest", "constant"])
@pytest.mark.parametrize("order, dtype", [(LINEAR, np.float32), (LINEAR, np.int16),
                                          (NEAREST, np.uint8)])
def test_separable_path_equals_scipy_at_the_borders(mode, order, dtype):
    volume = source_volume(dtype)
    for zoom in ((0.5, 0.25, 0.5), (1.0, 0.5, 0.25)):
        affine, shape, mapping = border_grid(volume, zoom)
        assert parallel_axes(mapping) == (0, 1, 2)
        got = resample_to_grid(volume, affine, shape, order=order, mode=mode,
                               cval=fill_for(order)).data
        # scipy's zoom_shift path: the diagonal given as a vector.
        with pytest.warns(UserWarning, match="1-D array"):
            expected = scipy_reference(volume.data, np.array(zoom), mapping[:3, 3], shape,
                                       order, mode)
        if order == NEAREST:
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
        if mode == "constant":
            assert (got == fill_for(order)).mean() > 0.1  # border decisions were made


@pytest.mark.parametrize("mode", ["nearest", "constant", "itk"])
@pytest.mark.parametrize("order", [LINEAR, NEAREST])
def test_fast_and_general_paths_agree_at_the_borders(mode, order):
    """The separable path and the oblique loop, given the same axis-parallel mapping,
    make the same decision for every voxel at -0.5, 0, n - 1, n - 0.5 and between."""
    volume = source_volume(np.float32 if order == LINEAR else np.uint8, seed=1)
    affine, shape, mapping = border_grid(volume, (0.25, 0.5, 0.25))
    fill = fill_for(order)
    fast = resample_to_grid(volume, affine, shape, order=order, mode=mode, cval=fill).data
    general = np.empty_like(fast)
    resample._oblique_resample(volume.data, mapping, order, mode, fill, general)
    np.testing.assert_allclose(fast, general, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(fast == fill, general == fill)
    inside = np.ones(shape, bool)
    for d, n in enumerate(SHAPE):
        c = mapping[d, d] * np.arange(shape[d]) + mapping[d, 3]
        low, high = {"nearest": (-np.inf, np.inf), "constant": (0, n - 1),
                     "itk": (-0.5, n - 0.5 - 1e-9)}[mode]
        axis_inside = (c >= low) & (c <= high)
        inside &= axis_inside.reshape([-1 if a == d else 1 for a in range(3)])
    np.testing.assert_array_equal(fast != fill, inside)


def rotated_mapping(angles, axes="xyz"):
    mapping = np.eye(4)
    mapping[:3, :3] = Rotation.from_euler(axes, angles, degrees=True).as_matrix() * 0.7
    mapping[:3, 3] = (1.0, -2.0, 0.5)
    return mapping


@pytest.mark.parametrize("mode", ["nearest", "constant"])
@pytest.mark.parametrize("order, dtype", [(LINEAR, np.float32), (LINEAR, np.int16),
                                          (NEAREST, np.uint8)])
def test_oblique_path_equals_scipys_general_path(mode, order, dtype):
    volume = source_volume(dtype, seed=2)
    # A rotation about the first axis keeps that axis's coordinates on binary fractions
    # (0.7 * k + 0.5 is not, so shift it to land on 0 and n - 1 exactly too).
    for mapping in (rotated_mapping([20, -15, 30]), rotated_mapping([25], "x")):
        if np.allclose(mapping[0, 1:3], 0):
            mapping[0, :3] = [1.0, 0.0, 0.0]
            mapping[0, 3] = -1.0
        shape = (13, 12, 11)
        assert parallel_axes(mapping) is None
        got = resample_to_grid(volume, volume.affine @ mapping, shape, order=order,
                               mode=mode, cval=fill_for(order)).data
        expected = scipy_reference(volume.data, mapping[:3, :3], mapping[:3, 3], shape,
                                   order, mode)
        if order == NEAREST:
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
        assert (got == fill_for(order)).any() == (mode == "constant")


def to_itk(data, affine):
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return image


@pytest.mark.parametrize("case", ["permuted_flipped", "oblique"])
@pytest.mark.parametrize("order", [LINEAR, NEAREST])
def test_itk_mode_equals_simpleitk_resample(case, order):
    rng = np.random.default_rng(3)
    source_affine = np.zeros((4, 4))
    source_affine[:3, :3] = [[-3.0, 0, 0], [0, 0, 2.5], [0, -2.0, 0]]  # RAS-like, permuted
    source_affine[:3, 3] = (14.1, -17.3, 9.2)
    source_affine[3, 3] = 1.0
    if case == "oblique":
        turn = np.eye(4)
        turn[:3, :3] = Rotation.from_euler("xz", [10, 10], degrees=True).as_matrix()
        source_affine = turn @ source_affine
    data = (rng.random((11, 10, 12)) * 10).astype(np.float32)
    if order == NEAREST:
        data = (data // 2).astype(np.uint8)
    target_affine = np.zeros((4, 4))  # array axes z, y, x as a canonical CT
    target_affine[:3, :3] = [[0, 0, 0.98], [0, 0.98, 0], [2.0, 0, 0]]
    target_affine[:3, 3] = (-19.9, -21.7, -12.0)
    target_affine[3, 3] = 1.0
    shape = (12, 36, 40)
    got = resample_to_grid(Volume(data, source_affine), target_affine, shape, order=order,
                           mode="itk", cval=0.0).data
    interpolator = sitk.sitkLinear if order == LINEAR else sitk.sitkNearestNeighbor
    expected = sitk.GetArrayFromImage(sitk.Resample(
        to_itk(data, source_affine), to_itk(np.zeros(shape, np.float32), target_affine),
        sitk.Transform(), interpolator, 0.0)).transpose(2, 1, 0)
    assert (expected == 0).mean() > 0.1 and (expected != 0).mean() > 0.1
    if order == NEAREST:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("oblique", [False, True])
def test_thread_count_does_not_change_the_result(oblique):
    volume = source_volume(np.int16, seed=4)
    mapping = rotated_mapping([5, 10, -5]) if oblique else np.diag([0.3, 0.4, 0.35, 1.0])
    affine, shape = volume.affine @ mapping, (31, 22, 19)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = resample_to_grid(volume, affine, shape, mode="constant").data
        torch.set_num_threads(2)
        two = resample_to_grid(volume, affine, shape, mode="constant").data
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_single_voxel_axes_and_big_endian_data():
    data = np.arange(12, dtype=">f4").reshape(1, 3, 4)
    volume = Volume(data, np.eye(4))
    for mapping in (np.diag([1.0, 0.5, 0.5, 1.0]), rotated_mapping([0, 0, 10])):
        got = resample_to_grid(volume, mapping, (2, 5, 7), mode="nearest").data
        expected = scipy_reference(data.astype(np.float32), mapping[:3, :3], mapping[:3, 3],
                                   (2, 5, 7), LINEAR, "nearest")
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_no_full_size_temporaries():
    """Peak memory traced while resampling a small int16 volume onto a large grid: the
    float32 output, a float32 copy of the source and small tables; a float64 array of the
    target grid's size (8 bytes per voxel) would exceed it."""
    volume = source_volume(np.int16, seed=5)
    shape = (64, 96, 96)
    for mapping in (np.diag([0.12, 0.07, 0.07, 1.0]), rotated_mapping([3, 5, 7]) * 0.15):
        mapping[3, 3] = 1.0
        resample_to_grid(volume, volume.affine @ mapping, (2, 2, 2))  # compile first
        tracemalloc.start()
        resample_to_grid(volume, volume.affine @ mapping, shape)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * np.prod(shape) * 1.2


def test_unknown_mode_is_refused():
    with pytest.raises(GeometryError, match="border mode"):
        resample_to_grid(source_volume(), np.eye(4), (2, 2, 2), mode="wrap")


@pytest.mark.parametrize("mode", ["constant", "itk"])
def test_point_path_keeps_the_border_rule(mode):
    """A transform given as a callable (evaluated point by point, as displacement fields
    are) and the same shift as a matrix make the same border decisions."""
    from napari_medattn.inference.resample import resample_through
    from napari_medattn.registration.transforms import LinearTransform

    volume = source_volume(np.float32, seed=6)
    affine, shape, _ = border_grid(volume, (0.5, 0.25, 0.5))
    matrix = np.eye(4)
    matrix[:3, 3] = (0.75, -1.0, 1.25)  # mm; binary fractions keep coordinates exact
    through_points = resample_through(volume, affine, shape, lambda p: p + matrix[:3, 3],
                                      mode=mode, cval=-7.0).data
    through_matrix = resample_through(volume, affine, shape, LinearTransform(matrix, "rigid"),
                                      mode=mode, cval=-7.0).data
    np.testing.assert_array_equal(through_points == -7.0, through_matrix == -7.0)
    np.testing.assert_allclose(through_points, through_matrix, rtol=1e-6, atol=1e-5)
    assert 0.1 < (through_points == -7.0).mean() < 0.9
