"""Volume.index_to_mm / mm_to_index: the exact affine, checked against nibabel's
apply_affine and SimpleITK's physical points on a real file and an oblique grid."""

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.affines import apply_affine
from nibabel.testing import data_path

from napari_medattn.errors import DimensionError
from napari_medattn.io import read_volume
from napari_medattn.io.volume import RAS_TO_LPS, Volume, index_to_mm, mm_to_index

ANATOMICAL = os.path.join(data_path, "anatomical.nii")


def test_points_of_a_real_file_match_nibabel_and_simpleitk():
    volume = read_volume(ANATOMICAL)
    index = np.array([[0, 0, 0], [32, 40, 24], [10.5, 3.25, 7]])
    ras = apply_affine(nib.load(ANATOMICAL).affine, index)
    np.testing.assert_allclose(volume.index_to_mm(index), ras * [-1, -1, 1], atol=1e-9)
    # SimpleITK reads the same file in LPS; its index order is the NIfTI's (i, j, k).
    image = sitk.ReadImage(ANATOMICAL)
    for row in index:
        np.testing.assert_allclose(
            volume.index_to_mm(row), image.TransformContinuousIndexToPhysicalPoint(
                [float(v) for v in row]), atol=1e-4)
    np.testing.assert_allclose(volume.mm_to_index(volume.index_to_mm(index)), index,
                               atol=1e-9)


def test_oblique_grid_round_trip_and_shapes():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 1.2, 3.0])
    affine[:3, 3] = [-90.0, 12.5, 40.0]
    volume = Volume(np.zeros((4, 5, 6), np.float32), affine)
    index = rng.uniform(-2, 8, size=(2, 7, 3))
    points = volume.index_to_mm(index)
    assert points.shape == (2, 7, 3)
    np.testing.assert_allclose(points, apply_affine(affine, index), atol=1e-12)
    np.testing.assert_allclose(mm_to_index(affine, points), index, atol=1e-10)
    np.testing.assert_allclose(index_to_mm(affine, [1, 2, 3]),
                               (affine @ [1, 2, 3, 1])[:3], atol=1e-12)
    np.testing.assert_allclose(mm_to_index(RAS_TO_LPS, [1.0, 2.0, 3.0]), [-1, -2, 3])
    with pytest.raises(DimensionError, match="3 coordinates"):
        volume.mm_to_index([1.0, 2.0])
