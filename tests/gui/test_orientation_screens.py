"""Radiological orientation checked on screenshot pixels, for several array orders."""

import numpy as np
import pytest

from napari_medattn.widgets.radiology_view import install_radiology_view

# dims.order for each view, the world axis sliced, and where the marker must appear:
# (screen row sign, screen column sign) relative to the canvas centre; -1 = top / left.
VIEWS = {
    "axial": ((0, 1, 2), 0, (-1, +1)),     # anterior up, patient left on screen right
    "coronal": ((1, 0, 2), 1, (-1, +1)),   # superior up, patient left on screen right
    "sagittal": ((2, 0, 1), 2, (-1, -1)),  # superior up, anterior on screen left
}
LETTERS = {
    "axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"},
    "coronal": {"top": "S", "bottom": "I", "left": "R", "right": "L"},
    "sagittal": {"top": "S", "bottom": "I", "left": "A", "right": "P"},
}


def marker_quadrant(viewer):
    """Signs (row, column) of the bright marker's centroid relative to the canvas centre."""
    shot = viewer.screenshot(canvas_only=True, flash=False)
    # White marker: bright in blue too (the gold orientation letters have no blue).
    rows, cols = np.nonzero(shot[..., 2] > 200)
    assert rows.size > 20, "the marker is not visible"
    centre = (np.array(shot.shape[:2]) - 1) / 2
    offset = np.array([rows.mean(), cols.mean()]) - centre
    assert np.all(np.abs(offset) > 5), f"marker too close to the centre: {offset}"
    return tuple(int(s) for s in np.sign(offset))


def letter_sides(viewer):
    """The canvas edges near whose middle gold letter pixels appear on screen."""
    shot = viewer.screenshot(canvas_only=True, flash=False).astype(int)
    gold = (shot[..., 0] > 180) & (shot[..., 1] > 140) & (shot[..., 2] < 90)
    height, width = gold.shape
    band = 45
    rows, cols = slice(height // 2 - 40, height // 2 + 40), slice(width // 2 - 40, width // 2 + 40)
    regions = {"top": gold[:band, cols], "bottom": gold[-band:, cols],
               "left": gold[rows, :band], "right": gold[rows, -band:]}
    return {side for side, region in regions.items() if region.sum() > 15}


def show_view(viewer, order, sliced_axis, marker_world):
    viewer.dims.order = order
    viewer.dims.set_point(sliced_axis, marker_world[sliced_axis])
    viewer.reset_view()


@pytest.mark.parametrize("codes", ["RAS", "LPS", "SLA"])
def test_marker_lands_in_the_radiological_quadrant(make_napari_viewer, marker_file, marker_world, codes):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(900, 700)
    viewer.open(str(marker_file(codes)), plugin="napari-medattn")
    layer = viewer.layers[0]
    layer.contrast_limits = (0, 1000)
    view = install_radiology_view(viewer)
    for name, (order, sliced, expected) in VIEWS.items():
        show_view(viewer, order, sliced, marker_world)
        assert view.current_view() == name
        assert marker_quadrant(viewer) == expected, name
        assert view.letters() == LETTERS[name]
        # The letters are drawn, one at the middle of each edge.
        assert letter_sides(viewer) == {"top", "bottom", "left", "right"}, name


def test_orientation_survives_user_axis_changes(make_napari_viewer, marker_file, marker_world):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(900, 700)
    viewer.open(str(marker_file("RAS")), plugin="napari-medattn")
    viewer.layers[0].contrast_limits = (0, 1000)
    view = install_radiology_view(viewer)
    # Transposed axial (x vertical): put back to y vertical, radiological again.
    show_view(viewer, (0, 2, 1), 0, marker_world)
    assert viewer.dims.order[-2:] == (1, 2)
    assert marker_quadrant(viewer) == VIEWS["axial"][2]
    # Roll to (x, z) displayed: becomes a proper coronal view with superior up.
    show_view(viewer, (1, 2, 0), 1, marker_world)
    assert view.current_view() == "coronal"
    assert tuple(viewer.scene.camera.orientation)[1:] == ("up", "right")
    assert marker_quadrant(viewer) == VIEWS["coronal"][2]
    # In 3D the letters are hidden; the camera looks from the front (anterior), superior
    # up and patient left on screen right, which is a rotation of LPS, not a mirror.
    viewer.dims.ndisplay = 3
    assert view.letters() == {}
    assert letter_sides(viewer) == set()
    assert tuple(viewer.scene.camera.orientation) == ("away", "up", "right")
    viewer.dims.ndisplay = 2
    assert view.letters() == LETTERS["coronal"]
