import numpy as np
import pytest
from skimage.filters import threshold_otsu

from napari_medattn.errors import GeometryError, ModelError
from napari_medattn.inference.preprocess import (
    body_bounding_box,
    crop,
    ct_window,
    foreground_mask,
    normalize_intensity,
    paste,
    percentile_scale,
    remove_small_components,
    reorient,
    robust_zscore,
    suv_scale,
)
from napari_medattn.io import Volume
from napari_medattn.models.card import validate_normalization


def source_volume():
    # Array axes point A, I, R (a "PSR"-style permutation with flips), spacing differs.
    affine = np.zeros((4, 4))
    affine[1, 0] = -0.8   # axis 0 -> anterior
    affine[2, 1] = -2.5   # axis 1 -> inferior
    affine[0, 2] = -1.2   # axis 2 -> right
    affine[:3, 3] = (30.0, -12.0, 80.0)
    affine[3, 3] = 1
    data = np.random.default_rng(0).normal(size=(7, 5, 9)).astype(np.float32)
    return Volume(data, affine, "MR")


@pytest.mark.parametrize("code", ["RAS", "LPS", "SPL", "AIR", "ILA"])
def test_reorient_keeps_every_voxel_in_place(code):
    volume = source_volume()
    assert volume.orientation == "AIR"
    out, how = reorient(volume, code)
    assert out.orientation == code
    # Each voxel's value sits at the same patient point before and after.
    before = {tuple(np.round(volume.affine[:3, :3] @ i + volume.affine[:3, 3], 6)): volume.data[tuple(i)]
              for i in np.ndindex(volume.spatial_shape)}
    for j in np.ndindex(out.spatial_shape):
        point = tuple(np.round(out.affine[:3, :3] @ j + out.affine[:3, 3], 6))
        assert out.data[j] == before[point]
    np.testing.assert_array_equal(how.undo(out.data), volume.data)
    assert np.shares_memory(out.data, volume.data)


def test_reorient_rejects_bad_codes():
    with pytest.raises(GeometryError, match="each patient axis once"):
        reorient(source_volume(), "RLS")
    with pytest.raises(GeometryError, match="unknown letter"):
        reorient(source_volume(), "RAX")


def test_ct_window_against_numpy():
    hu = np.array([-2000, -1000, -160, 0, 240, 3000], np.int16)
    out = ct_window(hu, -160, 240)
    np.testing.assert_allclose(out, np.clip((hu + 160) / 400.0, 0, 1), rtol=1e-6)
    assert out.dtype == np.float32


def test_robust_zscore_against_numpy():
    rng = np.random.default_rng(1)
    data = np.zeros((20, 20, 20), np.float32)
    data[4:16, 4:16, 4:16] = rng.normal(300, 40, size=(12, 12, 12))
    data[5, 5, 5] = 5000  # an outlier the percentile clip removes
    mask = data > 100
    out = robust_zscore(data, mask, (1, 99))
    low, high = np.percentile(data[mask], (1, 99))
    clipped = np.clip(data, low, high)
    expected = (clipped - clipped[mask].mean()) / clipped[mask].std()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert abs(out[mask].mean()) < 1e-4 and abs(out[mask].std() - 1) < 1e-4
    # Default foreground: Otsu's threshold.
    np.testing.assert_array_equal(foreground_mask(data), data > threshold_otsu(data))


def test_percentile_and_suv_scaling_against_numpy():
    data = np.random.default_rng(2).gamma(2, 2, size=(10, 10, 10)).astype(np.float32)
    low, high = np.percentile(data, (2, 98))
    np.testing.assert_allclose(percentile_scale(data, (2, 98)),
                               np.clip((data - low) / (high - low), 0, 1), atol=1e-6)
    np.testing.assert_allclose(suv_scale(data, 8.0), np.clip(data, 0, 8) / 8, rtol=1e-6)


def test_normalize_dispatches_and_validates():
    data = np.linspace(-1200, 1200, 1000, dtype=np.float32).reshape(10, 10, 10)
    np.testing.assert_array_equal(normalize_intensity(data, {"scheme": "ct_window",
                                                             "window": [-100, 300]}),
                                  ct_window(data, -100, 300))
    np.testing.assert_array_equal(normalize_intensity(data, {"scheme": "none"}), data)
    with pytest.raises(ModelError, match="unknown normalization scheme 'hu'"):
        validate_normalization({"scheme": "hu"})
    with pytest.raises(ModelError, match="needs window"):
        validate_normalization({"scheme": "ct_window"})
    with pytest.raises(ModelError, match="two increasing numbers"):
        validate_normalization({"scheme": "ct_window", "window": [300, -100]})
    with pytest.raises(ModelError, match="does not take max"):
        validate_normalization({"scheme": "zscore", "max": 3})
    with pytest.raises(ModelError, match="expects PET in SUV, but this image is in BQML"):
        normalize_intensity(data, {"scheme": "suv", "max": 10}, units="BQML")
    np.testing.assert_array_equal(normalize_intensity(np.abs(data), {"scheme": "suv", "max": 10},
                                                      units="SUVbw"),
                                  suv_scale(np.abs(data), 10))


def test_body_crop_and_paste_back_keep_geometry():
    data = np.full((30, 40, 50), -1000.0, np.float32)
    data[5:20, 10:30, 12:40] = 40.0       # the body
    data[26:28, 2:4, 2:4] = 100.0         # a table fragment, smaller
    box = body_bounding_box(data, threshold=-500, margin=2)
    assert box == (slice(3, 22), slice(8, 32), slice(10, 42))
    affine = np.diag([0.7, 0.8, 2.0, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    volume = Volume(data, affine, "CT")
    part = crop(volume, box)
    np.testing.assert_array_equal(part.affine[:3, :3], affine[:3, :3])
    np.testing.assert_allclose(part.affine @ [0, 0, 0, 1], affine @ [3, 8, 10, 1])
    restored = paste(part.data, box, volume.spatial_shape, fill=-1000)
    expected = data.copy()
    expected[26:28, 2:4, 2:4] = -1000
    np.testing.assert_array_equal(restored, expected)
    assert body_bounding_box(np.zeros((4, 4, 4)), threshold=1) == (slice(0, 4),) * 3


def test_remove_small_components_by_volume():
    labels = np.zeros((20, 20, 20), np.uint16)
    labels[2:6, 2:6, 2:6] = 1      # 64 voxels
    labels[10:11, 10:12, 10:12] = 1  # 4 voxels
    labels[15:17, 15:17, 15:17] = 2  # 8 voxels
    labels[12, 3, 3] = 2            # 1 voxel; diagonal neighbours join in 26-connectivity
    labels[13, 4, 4] = 2
    spacing = (0.5, 1.0, 2.0)       # 1 mm^3 per voxel
    out = remove_small_components(labels, 5.0, spacing)
    assert out.dtype == np.uint16
    expected = labels.copy()
    expected[10:11, 10:12, 10:12] = 0
    expected[12, 3, 3] = expected[13, 4, 4] = 0
    np.testing.assert_array_equal(out, expected)
    assert remove_small_components(labels, 1.5, spacing)[12, 3, 3] == 2  # two joined voxels


def test_body_threshold_per_modality():
    from napari_medattn.inference.preprocess import body_threshold

    rng = np.random.default_rng(3)
    data = np.concatenate([rng.normal(5, 2, 5000), rng.normal(400, 50, 5000)]).astype(np.float32)
    assert body_threshold(data, "CT") == -500.0
    assert body_threshold(data, "PT") == pytest.approx(0.02 * np.percentile(data, 99.5))
    assert body_threshold(data, "MR") == pytest.approx(threshold_otsu(data))
    # Air (around 5) falls below, tissue (around 400) above.
    assert (data[:5000] < body_threshold(data, "MR")).mean() > 0.99
    assert (data[5000:] > body_threshold(data, "MR")).all()
