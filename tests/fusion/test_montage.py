"""Montages: radiological orientation of each view, square millimetre pixels, slices."""

import numpy as np
import pytest

from napari_medattn.errors import DimensionError
from napari_medattn.fusion.compose import colormap_lut
from napari_medattn.fusion.montage import fused_montages, radiological_slice, slice_indices
from napari_medattn.io import Volume


def test_marker_lands_where_a_radiologist_expects_it():
    # Canonical (z, y, x) LPS grid, 2 mm in plane and 4 mm between slices.
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, 2.0], [0, 2.0, 0], [4.0, 0, 0]]  # z 4 mm, y and x 2 mm
    data = np.zeros((5, 10, 10), np.float32)
    # Patient right (low x), anterior (low y), superior (high z).
    data[4, 1, 1] = 1.0
    base = Volume(data, affine, "CT", {"name": "ct"})
    overlay = Volume(np.zeros_like(data), affine, "PT", {"name": "pet"})
    axial = radiological_slice(data, "axial", 4)
    assert np.argwhere(axial).tolist() == [[1, 1]]  # anterior top, right on the left
    coronal = radiological_slice(data, "coronal", 1)
    assert np.argwhere(coronal).tolist() == [[0, 1]]  # superior top, right on the left
    sagittal = radiological_slice(data, "sagittal", 1)
    assert np.argwhere(sagittal).tolist() == [[0, 1]]  # superior top, anterior on the left
    montages = fused_montages(base, overlay, base_window=(0, 1), overlay_window=(0, 1),
                              lut=colormap_lut("hot"), slices=1, columns=1)
    # Coronal: 5 slices of 4 mm become 10 rows of 2 mm (square millimetres).
    assert montages["coronal"].shape == (10, 10, 3)
    assert montages["axial"].shape == (10, 10, 3)
    with pytest.raises(DimensionError, match="not on"):
        fused_montages(base, Volume(data[:4], affine, "PT"), base_window=(0, 1),
                       overlay_window=(0, 1), lut=colormap_lut("hot"))


def test_slice_indices_are_inside_and_spread():
    assert slice_indices(10, 3) == [2, 4, 7]
    assert slice_indices(3, 9) == [0, 1, 2]
