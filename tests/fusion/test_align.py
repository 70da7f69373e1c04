"""Overlays in the base's patient space: values at known patient points equal the source's
(closed form: trilinear interpolation reproduces a linear function of mm exactly), for
oblique, permuted and transformed overlays; bad input gets typed, one-sentence errors."""

import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_medattn.errors import DimensionError, GeometryError, InsufficientMemoryError
from napari_medattn.fusion.align import (
    FrameOfReferenceWarning,
    display_affine,
    mip,
    overlap_fraction,
    overlay_on_grid,
)
from napari_medattn.io import Volume

GRADIENT = np.array([0.7, -1.3, 2.1])  # units per mm along LPS x, y, z
OFFSET = 100.0


def linear_field(affine, shape):
    """f(p) = GRADIENT . p + OFFSET at every voxel centre p of a grid."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    points = index @ affine[:3, :3].T + affine[:3, 3]
    return (points @ GRADIENT + OFFSET).astype(np.float32), points


def grid_affine(spacing, origin, rotation=None):
    affine = np.eye(4)
    linear = np.diag(spacing)
    if rotation is not None:
        linear = rotation @ linear
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def base():
    affine = grid_affine((2.0, 2.0, 2.0), (-20.0, -20.0, -20.0))
    return Volume(np.zeros((21, 21, 21), np.float32), affine, "CT", {"name": "CT"})


def inside(overlay, points, margin=0.0):
    to_index = np.linalg.inv(overlay.affine[:3, :3]).T
    index = (points.reshape(-1, 3) - overlay.affine[:3, 3]) @ to_index
    ok = np.all((index >= margin) & (index <= np.asarray(overlay.spatial_shape) - 1 - margin), 1)
    return ok.reshape(points.shape[:-1])


def test_oblique_overlay_values_at_patient_points_equal_the_source(base):
    rotation = Rotation.from_euler("xyz", [25, -10, 35], degrees=True).as_matrix()
    affine = grid_affine((1.5, 1.7, 2.3), (-30.0, -25.0, -28.0), rotation)
    data, _ = linear_field(affine, (40, 36, 30))
    overlay = Volume(data, affine, "PT", {"name": "PET", "units": "SUV"})
    fused = overlay_on_grid(overlay, base)
    np.testing.assert_array_equal(fused.affine, base.affine)
    assert fused.modality == "PT" and fused.meta["units"] == "SUV"
    _, points = linear_field(base.affine, base.spatial_shape)
    expected = points @ GRADIENT + OFFSET
    covered = inside(overlay, points)
    assert covered.mean() > 0.3
    np.testing.assert_allclose(fused.data[covered], expected[covered], rtol=0, atol=2e-3)
    # ITK's rule: 0 from half a voxel past the outermost voxel centres on.
    assert np.all(fused.data[~inside(overlay, points, margin=-0.5)] == 0.0)


def test_permuted_and_flipped_overlay_gives_the_same_values(base):
    affine = grid_affine((1.0, 1.5, 2.0), (-24.0, -22.0, -26.0))
    data, _ = linear_field(affine, (50, 30, 28))
    plain = Volume(data, affine, "MR", {"name": "MR"})
    # The same image stored in another array order: axes (2, 0, 1), the first flipped.
    permuted_data = np.flip(data, 0).transpose(2, 0, 1)
    flipped = affine.copy()
    flipped[:3, 3] += flipped[:3, 0] * (data.shape[0] - 1)
    flipped[:3, 0] *= -1
    permuted_affine = np.eye(4)
    permuted_affine[:3, :3] = flipped[:3, [2, 0, 1]]
    permuted_affine[:3, 3] = flipped[:3, 3]
    permuted = Volume(np.ascontiguousarray(permuted_data), permuted_affine, "MR", {"name": "MR"})
    a, b = overlay_on_grid(plain, base), overlay_on_grid(permuted, base)
    np.testing.assert_allclose(a.data, b.data, atol=1e-3)
    _, points = linear_field(base.affine, base.spatial_shape)
    covered = inside(plain, points)
    np.testing.assert_allclose(a.data[covered], (points @ GRADIENT + OFFSET)[covered], atol=2e-3)


def test_transform_maps_fixed_mm_to_moving_mm(base):
    affine = grid_affine((1.0, 1.0, 1.0), (-40.0, -40.0, -40.0))
    data, _ = linear_field(affine, (81, 81, 81))
    overlay = Volume(data, affine, "MR", {"name": "moving"})
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("z", 12, degrees=True).as_matrix()
    matrix[:3, 3] = [3.0, -4.0, 5.0]
    fused = overlay_on_grid(overlay, base, matrix)
    _, points = linear_field(base.affine, base.spatial_shape)
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(fused.data, moved @ GRADIENT + OFFSET, atol=2e-3)


def test_display_affine_places_axis_aligned_overlays_and_refuses_rotations():
    affine = grid_affine((2.0, 3.0, 4.0), (1.0, 2.0, 3.0))
    overlay = Volume(np.zeros((4, 4, 4), np.float32), affine)
    shift = np.eye(4)
    shift[:3, 3] = [5.0, 0.0, -2.0]
    placed = display_affine(overlay, shift)
    # Base point x shows the overlay at x + t, so the overlay sits at its own place - t.
    np.testing.assert_allclose(placed[:3, 3], [-4.0, 2.0, 5.0])
    np.testing.assert_allclose(display_affine(overlay), affine)
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("x", 20, degrees=True).as_matrix()
    assert display_affine(overlay, turn) is None
    oblique = Volume(overlay.data, turn @ affine)
    assert display_affine(oblique) is None


def test_bad_input_gets_one_sentence_errors(base):
    far = Volume(np.ones((5, 5, 5), np.float32), grid_affine((1, 1, 1), (500.0, 0, 0)),
                 "PT", {"name": "PET"})
    assert overlap_fraction(base, far) == 0.0
    with pytest.raises(GeometryError, match="does not overlap"):
        overlay_on_grid(far, base)
    four_d = Volume(np.ones((3, 5, 5, 5), np.float32), base.affine, "PT", {"name": "dynamic"})
    with pytest.raises(DimensionError, match="3 frames"):
        overlay_on_grid(four_d, base)
    near = Volume(np.ones((5, 5, 5), np.float32), base.affine, "PT", {"name": "PET"})
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* GB of RAM but only"):
        overlay_on_grid(near, base, free_bytes=1000)


class _Header(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def test_different_frames_of_reference_warn_but_resample(base):
    overlay = Volume(np.ones((21, 21, 21), np.float32), base.affine, "PT",
                     {"name": "PET", "dicom_header": _Header(FrameOfReferenceUID="1.2.3")})
    base.meta["dicom_header"] = _Header(FrameOfReferenceUID="1.2.4")
    with pytest.warns(FrameOfReferenceWarning, match="different frames of reference"):
        fused = overlay_on_grid(overlay, base)
    assert np.all(fused.data == 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrameOfReferenceWarning)
        overlay_on_grid(overlay, base, np.eye(4))  # a transform relates the frames


def test_mip_along_patient_axes_finds_the_hot_spot():
    affine = grid_affine((2.0, 2.0, 2.0), (-10.0, -10.0, -10.0))
    data = np.zeros((11, 11, 11), np.float32)
    data[3, 8, 5] = 7.0  # LPS (-4, 6, 0) mm
    pet = Volume(data, affine, "PT", {"name": "PET"})
    coronal, pixel = mip(pet, (0, 1, 0))
    assert pixel == 2.0 and coronal.max() == pytest.approx(7.0)
    rows, cols = coronal.shape
    r, c = np.unravel_index(np.argmax(coronal), coronal.shape)
    # Rows run superior -> inferior, columns patient right -> left (viewer's left to right).
    assert r == (rows - 1) // 2 and c == 3
    np.testing.assert_allclose(coronal, data.max(axis=1).T[::-1], atol=1e-6)
    axial, _ = mip(pet, (0, 0, 1))  # from the feet, as radiological axial views
    r, c = np.unravel_index(np.argmax(axial), axial.shape)
    assert (r, c) == (8, 3)  # anterior up: row = (y - y_min) / 2; patient right on the left
    with pytest.raises(GeometryError):
        mip(pet, (0, 0, 0))


def _itk_image(data, affine):
    import SimpleITK as sitk

    # ITK index (i, j, k) = array axes (0, 1, 2) after the transpose; columns = directions.
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return image


def test_axis_parallel_overlay_equals_simpleitk_resample_to_the_border(base):
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    # A PET stored x-first and flipped (as a RAS NIfTI), 3 mm, shifted off the base grid.
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[-3.0, 0, 0], [0, 0, 3.0], [0, -2.5, 0]]
    affine[:3, 3] = [14.0, -17.3, 9.1]
    affine[3, 3] = 1
    overlay = Volume(rng.random((9, 8, 11), dtype=np.float32) * 10, affine, "PT", {"name": "PET"})
    fused = overlay_on_grid(overlay, base)
    for interpolator, order in ((sitk.sitkLinear, 1), (sitk.sitkNearestNeighbor, 0)):
        expected = sitk.GetArrayFromImage(sitk.Resample(
            _itk_image(overlay.data, overlay.affine), _itk_image(base.data, base.affine),
            sitk.Transform(), interpolator, 0.0)).transpose(2, 1, 0)
        got = overlay_on_grid(overlay, base, order=order).data
        assert (expected != 0).mean() > 0.05
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(fused.data, overlay_on_grid(overlay, base, order=1).data)


def test_displacement_field_and_linear_transform_objects(base):
    from napari_medattn.registration.transforms import DisplacementField, LinearTransform

    affine = grid_affine((1.0, 1.0, 1.0), (-40.0, -40.0, -40.0))
    data, _ = linear_field(affine, (81, 81, 81))
    overlay = Volume(data, affine, "MR", {"name": "moving"})
    shift = np.array([2.5, -1.5, 3.0])
    # A constant field over (and beyond) the base grid is the translation by the shift.
    field = DisplacementField(np.broadcast_to(shift[:, None, None, None], (3, 23, 23, 23)),
                              grid_affine((2.0, 2.0, 2.0), (-22.0, -22.0, -22.0)))
    matrix = np.eye(4)
    matrix[:3, 3] = shift
    through_field = overlay_on_grid(overlay, base, field)
    through_object = overlay_on_grid(overlay, base, LinearTransform(matrix, "rigid"))
    _, points = linear_field(base.affine, base.spatial_shape)
    expected = (points + shift) @ GRADIENT + OFFSET
    np.testing.assert_allclose(through_field.data, expected, atol=2e-3)
    np.testing.assert_allclose(through_object.data, expected, atol=2e-3)
