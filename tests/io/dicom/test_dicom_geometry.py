"""Slice stacking geometry and PET SUV, checked against direct computations."""

import numpy as np
import pydicom
import pytest

from napari_medattn.errors import GeometryError
from napari_medattn.io.dicom.geometry import stack_geometry
from napari_medattn.io.pet import suv_bw_factor

AXIAL = np.array([1.0, 0, 0, 0, 1, 0])


def test_stack_sorted_along_normal_not_input_order():
    z = np.array([10.0, -5.0, 5.0, 0.0])
    positions = np.stack([np.full(4, -100.0), np.full(4, -120.0), z], axis=1)
    order, affine, warnings = stack_geometry(positions, AXIAL, np.array([0.5, 0.6]), series="s")
    np.testing.assert_array_equal(order, [1, 3, 2, 0])
    np.testing.assert_allclose(affine[:3, 0], [0, 0, 5.0])
    np.testing.assert_allclose(affine[:3, 1], [0, 0.5, 0])  # rows step along column cosines
    np.testing.assert_allclose(affine[:3, 2], [0.6, 0, 0])
    np.testing.assert_allclose(affine[:3, 3], [-100, -120, -5])
    assert warnings == []


def test_tilted_stack_is_sheared_and_exact():
    tilt = np.deg2rad(20.0)
    step = np.array([0.0, 3.0 * np.tan(tilt), 3.0])
    positions = np.array([k * step for k in range(6)]) + [1.0, 2.0, 3.0]
    _, affine, warnings = stack_geometry(positions[::-1], AXIAL, np.array([1.0, 1.0]), series="s")
    np.testing.assert_allclose(affine[:3, 0], step, atol=1e-12)
    for k in range(6):
        np.testing.assert_allclose(affine @ [k, 0, 0, 1], np.r_[positions[k], 1], atol=1e-12)
    assert len(warnings) == 1 and "20.00 degrees" in warnings[0]


def test_position_off_the_line_refused():
    positions = np.array([[0, 0, 0], [0, 0, 2.0], [0.5, 0, 4.0], [0, 0, 6.0]])
    with pytest.raises(GeometryError, match="slice 3 lies 0.5 mm off the line"):
        stack_geometry(positions, AXIAL, np.ones(2), series="s")


def test_duplicate_position_refused():
    positions = np.array([[0, 0, 0], [0, 0, 2.0], [0, 0, 2.0]])
    with pytest.raises(GeometryError, match="two slices at the same position"):
        stack_geometry(positions, AXIAL, np.ones(2), series="s")


def test_decimal_string_rounding_tolerated():
    z = np.round(np.arange(10) * 0.6 + 1e-4 * np.sin(np.arange(10)), 6)
    positions = np.stack([np.zeros(10), np.zeros(10), z], axis=1)
    _, affine, _ = stack_geometry(positions, AXIAL, np.ones(2), series="s")
    np.testing.assert_allclose(affine[2, 0], (z[-1] - z[0]) / 9)


def test_single_slice_uses_thickness_or_says_it_assumes():
    _, affine, warnings = stack_geometry(np.zeros((1, 3)), AXIAL, np.ones(2), series="s",
                                         single_slice_step=3.0)
    np.testing.assert_allclose(affine[:3, 0], [0, 0, 3.0])
    assert warnings == []
    _, affine, warnings = stack_geometry(np.zeros((1, 3)), AXIAL, np.ones(2), series="s")
    np.testing.assert_allclose(affine[:3, 0], [0, 0, 1.0])
    assert "1 mm is assumed" in warnings[0]


def _pet(**changes):
    ds = pydicom.Dataset()
    ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "START", 80
    ds.SeriesTime = "001500"
    info = pydicom.Dataset()
    info.RadionuclideTotalDose, info.RadionuclideHalfLife = 4.0e8, 6586.2
    info.RadiopharmaceuticalStartTime = "234500"  # injected before midnight
    ds.RadiopharmaceuticalInformationSequence = [info]
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def test_suv_decay_across_midnight():
    factor, reason = suv_bw_factor(_pet())
    assert reason == ""
    assert factor == pytest.approx(80_000 / (4.0e8 * 2 ** (-1800 / 6586.2)), rel=1e-12)


def test_suv_admin_decay_correction_uses_injected_dose():
    factor, _ = suv_bw_factor(_pet(DecayCorrection="ADMIN"))
    assert factor == pytest.approx(80_000 / 4.0e8, rel=1e-12)


@pytest.mark.parametrize("changes, reason", [
    ({"Units": "CNTS"}, "units are CNTS"),
    ({"PatientWeight": None}, "PatientWeight is missing"),
    ({"DecayCorrection": "NONE"}, "DecayCorrection is NONE"),
    ({"SeriesTime": None}, "time is missing"),
])
def test_suv_refused_with_reason(changes, reason):
    factor, text = suv_bw_factor(_pet(**changes))
    assert factor is None and reason in text


def test_scanner_style_tilt_tilted_planes_table_steps_along_z():
    # How CT scanners record gantry tilt: the image planes are tilted (column cosines
    # leave the axial plane) while the table moves straight along z.
    tilt = np.deg2rad(12.0)
    orientation = np.array([1.0, 0, 0, 0, np.cos(tilt), np.sin(tilt)])
    positions = np.array([[-50.0, -40.0, 2.5 * k] for k in range(8)])
    _, affine, warnings = stack_geometry(positions, orientation, np.array([0.5, 0.5]),
                                         series="s")
    np.testing.assert_allclose(affine[:3, 0], [0, 0, 2.5], atol=1e-12)
    np.testing.assert_allclose(affine[:3, 1], [0, 0.5 * np.cos(tilt), 0.5 * np.sin(tilt)])
    assert "12.00 degrees" in warnings[0]
    # Pixel (row 10, column 3) of slice 5 is where the DICOM geometry puts it.
    expected = positions[5] + 10 * 0.5 * orientation[3:] + 3 * 0.5 * orientation[:3]
    np.testing.assert_allclose(affine @ [5, 10, 3, 1], np.r_[expected, 1], atol=1e-12)
