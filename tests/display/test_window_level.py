"""Window/level arithmetic: presets, percentiles, modality defaults and the drag rule."""

import numpy as np
import pytest

from napari_medattn.display.window_level import (
    CT_PRESETS,
    DEFAULT_CT_PRESET,
    MIN_WINDOW,
    drag_window_level,
    initial_limits,
    limits_to_window,
    percentile_limits,
    preset_limits,
    window_to_limits,
)
from napari_medattn.errors import DimensionError

# The values from the project literature notes (3D Slicer presets and common settings).
EXPECTED_HU = {
    "brain": (0.0, 100.0), "subdural": (-25.0, 175.0), "stroke": (20.0, 60.0),
    "lung": (-1200.0, 200.0), "mediastinum": (-125.0, 225.0), "abdomen": (-135.0, 215.0),
    "liver": (-45.0, 105.0), "bone": (-100.0, 900.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_HU))
def test_ct_presets_give_clinical_limits(name):
    assert preset_limits(name) == EXPECTED_HU[name]
    assert limits_to_window(*preset_limits(name)) == (CT_PRESETS[name].window,
                                                      CT_PRESETS[name].level)


def test_unknown_preset_and_bad_window_are_typed_errors():
    with pytest.raises(DimensionError, match="Unknown window preset"):
        preset_limits("kidney")
    with pytest.raises(DimensionError, match="positive"):
        window_to_limits(0.0, 40.0)


def test_percentiles_ignore_zero_background_like_numpy_on_foreground():
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 30, 40), np.float32)
    volume[5:15, 5:25, 5:35] = rng.normal(600, 80, (10, 20, 30))
    foreground = volume[volume != 0]
    assert percentile_limits(volume) == pytest.approx(
        tuple(np.percentile(foreground, [0.5, 99.5])))
    # With the background counted the lower limit collapses to 0.
    low, _ = percentile_limits(volume, foreground_only=False)
    assert low == 0.0


def test_percentiles_subsample_large_volumes_close_to_exact():
    rng = np.random.default_rng(1)
    volume = rng.gamma(4.0, 100.0, (160, 160, 100)).astype(np.float32)  # 2.56 M voxels
    exact = np.percentile(volume, [0.5, 99.5])
    assert np.allclose(percentile_limits(volume), exact, rtol=0.02)


def test_percentiles_constant_nan_and_empty():
    assert percentile_limits(np.full((4, 4, 4), 7.0)) == (6.5, 7.5)
    data = np.full((4, 4, 4), np.nan)
    data[0, 0, :] = [1.0, 2.0, 3.0, 4.0]
    low, high = percentile_limits(data, 0, 100)
    assert (low, high) == (1.0, 4.0)
    assert percentile_limits(np.zeros((3, 3, 3))) == (-0.5, 0.5)
    assert percentile_limits(np.full((3, 3, 3), np.inf)) == (0.0, 1.0)
    with pytest.raises(DimensionError):
        percentile_limits(data, 60, 40)


def test_initial_limits_follow_modality():
    mr = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    assert initial_limits(mr, "CT") == preset_limits(DEFAULT_CT_PRESET)
    assert initial_limits(mr, "CT", header_window=(80.0, 40.0)) == (0.0, 80.0)
    assert initial_limits(mr, "MR") == pytest.approx(tuple(np.percentile(mr, [0.5, 99.5])))
    assert initial_limits(mr, "PT") == initial_limits(mr, "MR")


def test_drag_directions_and_floor():
    # Right widens the window, down raises the level.
    assert drag_window_level(400.0, 40.0, 10, 0, 2.0) == (420.0, 40.0)
    assert drag_window_level(400.0, 40.0, -10, 0, 2.0) == (380.0, 40.0)
    assert drag_window_level(400.0, 40.0, 0, 5, 2.0) == (400.0, 50.0)
    assert drag_window_level(400.0, 40.0, 0, -5, 2.0) == (400.0, 30.0)
    assert drag_window_level(10.0, 40.0, -100, 0, 1.0)[0] == MIN_WINDOW
