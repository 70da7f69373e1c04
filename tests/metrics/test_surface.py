"""Surface voxels and surface distances against SciPy's erosion and distance transform."""

import numpy as np
import pytest
from scipy import ndimage

from napari_medattn.metrics import surface_distances, surface_voxels


@pytest.mark.parametrize("shape", [(30, 26, 20), (40, 33)])
def test_surface_is_mask_minus_default_erosion(shape, blobs):
    # Blobs reach the array border, where outside counts as background (border_value=0).
    mask = blobs(shape, seed=3, classes=1) == 1
    assert mask[0].any() or mask[-1].any()
    expected = mask & ~ndimage.binary_erosion(mask, border_value=0)
    np.testing.assert_array_equal(surface_voxels(mask), expected)


def test_surface_of_a_cube_is_its_faces():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    surface = surface_voxels(mask)
    assert surface.sum() == 4 ** 3 - 2 ** 3
    assert not surface[3:5, 3:5, 3:5].any()


@pytest.mark.parametrize("shape, spacing", [((30, 26, 20), (1.0, 0.7, 2.5)),
                                            ((44, 38), (0.8, 1.3))])
def test_distances_equal_scipy_edt_with_sampling(shape, spacing, blobs):
    pred = blobs(shape, seed=4, classes=1) == 1
    ref = blobs(shape, seed=5, classes=1) == 1
    to_ref, to_pred = surface_distances(pred, ref, np.diag(spacing))
    surface_pred, surface_ref = surface_voxels(pred), surface_voxels(ref)
    expected_to_ref = ndimage.distance_transform_edt(~surface_ref, sampling=spacing)[surface_pred]
    expected_to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)[surface_ref]
    np.testing.assert_allclose(np.sort(to_ref), np.sort(expected_to_ref), rtol=1e-12)
    np.testing.assert_allclose(np.sort(to_pred), np.sort(expected_to_pred), rtol=1e-12)
    # Some voxels lie on both surfaces (distance 0 without a query): the test covers them.
    assert (to_ref == 0).any() and (to_ref > 0).any()


def test_distances_on_a_sheared_grid_equal_brute_force():
    pred = np.zeros((9, 10, 7), bool)
    ref = np.zeros((9, 10, 7), bool)
    pred[2:6, 3:8, 1:5] = True
    ref[3:8, 2:6, 2:6] = True
    linear = np.array([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 2.0]])
    to_ref, to_pred = surface_distances(pred, ref, linear)
    points_pred = np.argwhere(surface_voxels(pred)) @ linear.T
    points_ref = np.argwhere(surface_voxels(ref)) @ linear.T
    pairwise = np.linalg.norm(points_pred[:, None] - points_ref[None], axis=-1)
    np.testing.assert_allclose(np.sort(to_ref), np.sort(pairwise.min(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(np.sort(to_pred), np.sort(pairwise.min(axis=0)), rtol=1e-12)
