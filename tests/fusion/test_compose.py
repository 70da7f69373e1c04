"""Composition: exact expectations for windows, colour tables, blend, checkerboard tiles
in mm and difference."""

import numpy as np
import pytest
from matplotlib import colormaps

from napari_medattn.errors import DimensionError
from napari_medattn.fusion.compose import (
    PET_RAINBOW_COLORS,
    apply_lut,
    apply_window,
    blend,
    checkerboard,
    checkerboard_mask,
    colormap_lut,
    colour_overlay,
    compose_rgb,
    difference,
    preset_window,
)


def test_suv_windows_map_suv_to_unit_range():
    suv = np.array([-1.0, 0.0, 1.0, 2.5, 5.0, 7.5, 10.0, 25.0, np.nan])
    np.testing.assert_allclose(apply_window(suv, *preset_window("SUV 0-5")),
                               [0, 0, 0.2, 0.5, 1, 1, 1, 1, np.nan])
    np.testing.assert_allclose(apply_window(suv, *preset_window("SUV 0-10")),
                               [0, 0, 0.1, 0.25, 0.5, 0.75, 1, 1, np.nan])
    np.testing.assert_allclose(apply_window(suv, *preset_window("SUV 0-20")),
                               [0, 0, 0.05, 0.125, 0.25, 0.375, 0.5, 1, np.nan])


def test_ct_preset_window_is_level_plus_minus_half_width():
    # Brain: W 100 L 50 -> 0..100 HU; bone W 1000 L 400 -> -100..900 HU.
    assert preset_window("brain") == (0.0, 100.0)
    assert preset_window("bone") == (-100.0, 900.0)
    np.testing.assert_allclose(apply_window([-1000, 0, 25, 100, 3000], *preset_window("brain")),
                               [0, 0, 0.25, 1, 1])
    with pytest.raises(DimensionError, match="Unknown window"):
        preset_window("SUV 0-3")
    with pytest.raises(DimensionError):
        apply_window([1.0], 5.0, 5.0)


def test_luts_match_matplotlib_and_rainbow_control_points():
    hot = colormap_lut("hot", 256)
    np.testing.assert_allclose(hot, colormaps["hot"](np.arange(256) / 255)[:, :3], atol=1e-6)
    rainbow = colormap_lut("pet_rainbow", len(PET_RAINBOW_COLORS))
    np.testing.assert_allclose(rainbow, PET_RAINBOW_COLORS, atol=1e-6)
    values = np.array([[0.0, 1.0], [0.5, np.nan]])
    rgb = apply_lut(values, hot)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], hot[0])
    np.testing.assert_allclose(rgb[0, 1], hot[255])
    np.testing.assert_allclose(rgb[1, 0], hot[128])  # round(0.5 * 255) = 128
    np.testing.assert_allclose(rgb[1, 1], hot[0])
    with pytest.raises(DimensionError, match="Unknown colormap"):
        colormap_lut("jet")


def test_blend_is_the_fade_between_base_and_overlay():
    base, overlay = np.array([0.0, 0.2, 1.0]), np.array([1.0, 0.6, 0.0])
    np.testing.assert_allclose(blend(base, overlay, 0.0), base)
    np.testing.assert_allclose(blend(base, overlay, 1.0), overlay)
    np.testing.assert_allclose(blend(base, overlay, 0.25), [0.25, 0.3, 0.75])
    with pytest.raises(DimensionError):
        blend(base, overlay, 1.5)
    with pytest.raises(DimensionError, match="one grid"):
        blend(base, overlay[:2], 0.5)


def test_colour_overlay_leaves_anatomy_where_overlay_is_below_window():
    lut = colormap_lut("hot")
    base = np.array([0.5, 0.5])
    pet = np.array([0.0, 1.0])
    rgb = colour_overlay(base, pet, lut, opacity=0.4)
    np.testing.assert_allclose(rgb[0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(rgb[1], 0.6 * 0.5 + 0.4 * lut[-1], atol=1e-6)


@pytest.mark.parametrize("spacing,tile_mm,run", [((1.0, 1.0), 10.0, (10, 10)),
                                                ((2.0, 0.5), 10.0, (5, 20)),
                                                ((2.5, 2.5), 5.0, (2, 2))])
def test_checkerboard_tiles_have_the_size_asked_for_in_mm(spacing, tile_mm, run):
    mask = checkerboard_mask((40, 60), spacing, tile_mm)
    for axis in (0, 1):
        line = mask[:, 0] if axis == 0 else mask[0, :]
        edges = np.flatnonzero(np.diff(line.astype(int))) + 1
        lengths = np.diff(np.concatenate([[0], edges]))
        assert set(lengths.tolist()) == {run[axis]}
        # Tile edge length in mm is what was asked for.
        assert lengths[0] * spacing[axis] == pytest.approx(tile_mm)
    assert mask[0, 0] and not mask[0, run[1]] and mask[run[0], run[1]]


def test_checkerboard_3d_and_rgb_alternates_sources():
    base = np.zeros((4, 4, 4, 3), np.float32)
    overlay = np.ones((4, 4, 4, 3), np.float32)
    out = checkerboard(base, overlay, (1.0, 1.0, 1.0), 2.0)
    assert out[0, 0, 0].tolist() == [0, 0, 0]
    assert out[2, 0, 0].tolist() == [1, 1, 1]
    assert out[2, 2, 0].tolist() == [0, 0, 0]
    assert out[2, 2, 2].tolist() == [1, 1, 1]
    with pytest.raises(DimensionError, match="positive size"):
        checkerboard_mask((4, 4), (1.0, 1.0), 0.0)


def test_difference_and_compose_modes():
    a, b = np.array([[0.0, 0.5], [1.0, 0.25]]), np.array([[0.0, 0.25], [0.0, 0.5]])
    np.testing.assert_allclose(difference(a, b), [[0, 0.25], [1, -0.25]])
    rgb = compose_rgb(a, b, "difference", lut=colormap_lut("gray"))
    np.testing.assert_allclose(rgb[..., 0], [[0.5, 0.625], [1.0, 0.375]])
    board = compose_rgb(a, b, "checkerboard", lut=colormap_lut("gray"), spacing=(1, 1),
                        tile_mm=1.0)
    # Base on even tiles (0,0) and (1,1); the overlay through the grey table on the others.
    np.testing.assert_allclose(board[..., 0], [[0.0, 0.25], [0.0, 0.25]], atol=2e-3)
    with pytest.raises(DimensionError, match="Unknown fusion mode"):
        compose_rgb(a, b, "sideways", lut=colormap_lut("gray"))


def test_overlay_table_is_transparent_below_window_and_cursor_text():
    from napari_medattn.fusion.compose import fused_values_text, overlay_lut_rgba

    rgba = overlay_lut_rgba("inferno", 16)
    assert rgba[0, 3] == 0.0 and np.all(rgba[1:, 3] == 1.0)
    np.testing.assert_allclose(rgba[:, :3], colormap_lut("inferno", 16))
    text = fused_values_text([("CT", 45.2, "HU"), ("PET", 6.2049, "SUV"), ("MR", None, "")])
    assert text == "CT 45 HU · PET 6.2 SUV · MR -"
