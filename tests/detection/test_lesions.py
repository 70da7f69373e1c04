"""lesions_from_labels against scipy's connected components and closed-form diameters."""

import numpy as np
import pytest
from scipy import ndimage

from napari_medattn.detection import lesions_from_labels, longest_axial_diameter
from napari_medattn.errors import DimensionError, GeometryError
from napari_medattn.io.volume import Volume


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(30, 34, 28)), 2.0)
    labels = np.zeros(noise.shape, np.uint8)
    labels[noise > 0.12] = 1
    labels[noise < -0.14] = 2
    return labels


def _permuted_affine():
    # Array axis 0 runs superior->inferior, axis 1 right->left, axis 2 anterior->posterior.
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2] = -3.0, 0.9, 1.1
    affine[:, 3] = [10.0, -20.0, 30.0, 1.0]
    return affine


def test_instances_equal_scipy_components_in_mm():
    data = _blobs()
    affine = _permuted_affine()
    image = Volume(np.random.default_rng(1).normal(size=data.shape).astype(np.float32), affine)
    lesions = lesions_from_labels(Volume(data, affine, "SEG"), image)
    voxel_ml = 3.0 * 0.9 * 1.1 / 1000
    expected = []
    for value in (1, 2):
        pieces, n = ndimage.label(data == value)
        for i in range(1, n + 1):
            centre_idx = np.array(ndimage.center_of_mass(pieces == i))
            expected.append((value, int((pieces == i).sum()),
                             affine[:3, :3] @ centre_idx + affine[:3, 3],
                             float(ndimage.mean(image.data, pieces, i))))
    assert len(lesions) == len(expected) > 4
    for det, (value, voxels, centroid, mean) in zip(lesions, expected):
        assert det.label == value and det.measurements["voxels"] == voxels
        assert np.isclose(det.measurements["volume_ml"], voxels * voxel_ml)
        assert np.allclose(det.measurements["centroid_mm"], centroid)
        assert np.isclose(det.measurements["mean_intensity"], mean, rtol=1e-5)
        # The centroid lies inside the box.
        local = det.axes.T @ (det.measurements["centroid_mm"] - det.centre_mm)
        assert (np.abs(local) <= det.size_mm / 2 + 1e-9).all()


def test_merged_classes_and_masks():
    data = np.zeros((20, 20, 20), np.uint8)
    data[5:15, 5:15, 5:15] = 4        # oedema
    data[8:12, 8:12, 8:12] = 5        # rim inside it
    volume = Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]), "SEG", {"labels": {4: "oedema", 5: "rim"}})
    separate = lesions_from_labels(volume)
    assert [d.class_name for d in separate] == ["oedema", "rim"]
    merged = lesions_from_labels(volume, by_class=False, with_masks=True)
    assert len(merged) == 1 and merged[0].class_name == "oedema"
    assert np.allclose(merged[0].size_mm, [20, 20, 20]) and np.isclose(
        merged[0].measurements["volume_ml"], 1000 * 8 / 1000)
    mask = merged[0].mask
    assert mask.data.shape == (10, 10, 10) and np.allclose(mask.affine[:3, 3], [10, 10, 10])
    assert lesions_from_labels(volume, min_volume_ml=0.6, by_class=True)[0].class_name == "oedema"
    assert len(lesions_from_labels(volume, min_volume_ml=0.6)) == 1


def test_longest_axial_diameter_is_closed_form():
    # A 6 x 4 voxel rectangle in one axial slice of 0.8 x 1.5 mm pixels (axis 2 is S).
    affine = np.diag([0.8, 1.5, 5.0, 1.0])
    idx = np.array([[i, j, 3] for i in range(6) for j in range(4)])
    assert np.isclose(longest_axial_diameter(idx, affine), np.hypot(6 * 0.8, 4 * 1.5))
    # A tall column is measured across, not along.
    column = np.array([[0, 0, k] for k in range(10)])
    assert np.isclose(longest_axial_diameter(column, affine), np.hypot(0.8, 1.5))
    # A digital disk of radius 10 voxels: outer extent between 2r and 2r + 2 voxels.
    ii, jj = np.mgrid[-12:13, -12:13]
    disk = np.argwhere(ii ** 2 + jj ** 2 <= 100)
    disk3 = np.column_stack([np.zeros(len(disk), int), disk])  # axis 0 is S here
    d = longest_axial_diameter(disk3, np.diag([3.0, 1.0, 1.0, 1.0]))
    assert 20.0 < d <= 22.0 * np.sqrt(2)


def test_bad_input_is_one_sentence():
    with pytest.raises(DimensionError):
        lesions_from_labels(Volume(np.full((4, 4, 4), 0.5), np.eye(4)))
    labels = Volume(np.ones((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(GeometryError):
        lesions_from_labels(labels, Volume(np.ones((4, 4, 5)), np.eye(4)))
    with pytest.raises(DimensionError):
        lesions_from_labels(labels, connectivity=4)
    assert lesions_from_labels(Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))) == []
