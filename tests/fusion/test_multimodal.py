"""Multimodal input pipeline: scans on different grids land on the reference grid at the
right patient-mm points; missing modalities are zeros; bad input is refused in one sentence."""

import numpy as np
import pytest

from napari_medattn.errors import DimensionError, GeometryError, ModelError
from napari_medattn.fusion.multimodal import multimodal_inputs
from napari_medattn.io.volume import Volume

MODALITIES = ("t1", "t1ce", "t2", "flair")
GRADIENT = np.array([0.7, -1.3, 2.1])  # value per LPS mm of the synthetic scans


def _linear_scan(affine, shape, offset=10.0, name="scan"):
    """A scan whose value is an affine function of the LPS position: trilinear
    interpolation reproduces it exactly, so the truth at any mm point is closed-form."""
    index = np.indices(shape).reshape(3, -1).T
    mm = index @ affine[:3, :3].T + affine[:3, 3]
    data = (mm @ GRADIENT + offset).reshape(shape).astype(np.float32)
    return Volume(data, affine, "MR", {"name": name})


@pytest.fixture
def scans():
    reference = np.diag([2.0, 2.0, 2.0, 1.0])
    reference[:3, 3] = (-20.0, -16.0, -12.0)
    # Finer, shifted, with the first axis flipped and the last two swapped: every index
    # differs from the reference's, only patient mm are shared.
    other = np.array([[-1.5, 0, 0, 30.0],
                      [0, 0, 1.25, -25.0],
                      [0, 1.5, 0, -20.0],
                      [0, 0, 0, 1.0]])
    return {"t2": _linear_scan(reference, (20, 16, 12), 5.0, "t2"),
            "FLAIR": _linear_scan(other, (44, 30, 44), 50.0, "flair")}


def test_values_at_known_mm_points(scans):
    inputs = multimodal_inputs(scans, MODALITIES)
    assert inputs.modalities == MODALITIES
    assert inputs.present.tolist() == [False, False, True, True]
    assert inputs.array.shape == (4, 20, 16, 12)
    np.testing.assert_array_equal(inputs.grid.affine, scans["t2"].affine)  # exact affine
    np.testing.assert_array_equal(inputs.array[2], scans["t2"].data)  # reference untouched
    assert not inputs.array[[0, 1]].any()
    # Points inside both fields of view: FLAIR's value there is the closed form.
    for index in [(0, 0, 0), (5, 7, 3), (19, 15, 11), (10, 2, 9)]:
        mm = inputs.grid.affine[:3, :3] @ np.array(index) + inputs.grid.affine[:3, 3]
        assert inputs.array[(3, *index)] == pytest.approx(mm @ GRADIENT + 50.0, abs=1e-3)


def test_other_reference_and_transform(scans):
    # FLAIR's field of view is larger: the T2 covers only part of it.
    inputs = multimodal_inputs(scans, MODALITIES, reference="flair", min_overlap=0.1)
    assert inputs.array.shape == (4, 44, 30, 44)
    np.testing.assert_array_equal(inputs.array[3], scans["FLAIR"].data)
    # A transform (reference mm -> t2 mm) of a 3 mm shift along L moves the values by it.
    shift = np.eye(4)
    shift[0, 3] = 3.0
    shifted = multimodal_inputs(scans, MODALITIES, reference="flair", min_overlap=0.1,
                                transforms={"t2": shift})
    for i in [(20, 15, 20), (25, 10, 18)]:
        mm = inputs.grid.affine[:3, :3] @ np.array(i) + inputs.grid.affine[:3, 3]
        assert inputs.array[(2, *i)] == pytest.approx(mm @ GRADIENT + 5.0, abs=1e-3)
        assert shifted.array[(2, *i)] == pytest.approx((mm + [3, 0, 0]) @ GRADIENT + 5.0,
                                                       abs=1e-3)
    with pytest.raises(GeometryError, match="covers 19% of the flair scan"):
        multimodal_inputs(scans, MODALITIES, reference="flair")


def test_bad_input(scans):
    with pytest.raises(DimensionError, match="No modality"):
        multimodal_inputs({}, MODALITIES)
    with pytest.raises(ModelError, match="does not know the modality 'pd'"):
        multimodal_inputs({"pd": scans["t2"]}, MODALITIES)
    with pytest.raises(DimensionError, match="given twice"):
        multimodal_inputs({"t2": scans["t2"], "T2": scans["FLAIR"]}, MODALITIES)
    with pytest.raises(DimensionError, match="same scan"):
        multimodal_inputs({"t2": scans["t2"], "t1": scans["t2"]}, MODALITIES)
    four_d = Volume(np.zeros((2, 8, 8, 8), np.float32), np.eye(4), "MR", {"name": "dwi"})
    with pytest.raises(DimensionError, match="2 frames"):
        multimodal_inputs({"t1": four_d}, MODALITIES)
    far = np.eye(4)
    far[:3, 3] = 500.0
    away = Volume(np.ones((8, 8, 8), np.float32), far, "MR", {"name": "away"})
    with pytest.raises(GeometryError, match="covers 0%"):
        multimodal_inputs({"t2": scans["t2"], "t1": away}, MODALITIES)
