"""The Window/Level widget (a magicgui form) drives the active layer's contrast limits
(presets, boxes, drag)."""

import numpy as np
import pytest
from vispy.app.canvas import MouseEvent

from napari_medattn.display.layers import volume_layer_data
from napari_medattn.display.window_level import preset_limits
from napari_medattn.io import Volume
from napari_medattn.widgets.window_level import AUTO, CUSTOM, DRAG_PIXELS_PER_RANGE, WindowLevelWidget


@pytest.fixture
def ct_viewer(make_napari_viewer, add_layer):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, (8, 64, 64)).astype(np.int16)
    data, kwargs, kind = volume_layer_data(Volume(hu, np.eye(4), "CT", {"name": "ct"}))
    layer = add_layer(viewer, (data, kwargs, kind))
    widget = WindowLevelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, layer, widget


def test_presets_and_boxes_set_contrast(ct_viewer):
    viewer, layer, widget = ct_viewer
    assert tuple(layer.contrast_limits) == (-135.0, 215.0)  # CT opens in soft tissue
    assert (widget.window.value, widget.level.value) == (350.0, 40.0)
    assert widget.preset.value == "abdomen"
    widget.preset.value = "lung"
    assert tuple(layer.contrast_limits) == preset_limits("lung") == (-1200.0, 200.0)
    widget.preset.value = "bone"
    assert tuple(layer.contrast_limits) == (-100.0, 900.0)
    widget.window.value = 80.0
    widget.level.value = 40.0
    assert tuple(layer.contrast_limits) == (0.0, 80.0)
    assert widget.preset.value == CUSTOM
    widget.preset.value = AUTO
    assert widget.preset.value == AUTO
    expected = np.percentile(layer.data[layer.data != 0], [0.5, 99.5])
    assert np.allclose(layer.contrast_limits, expected)
    # Changing limits elsewhere (layer controls) updates the boxes.
    layer.contrast_limits = (-50.0, 150.0)
    assert (widget.window.value, widget.level.value) == (200.0, 50.0)
    assert widget.preset.value == CUSTOM
    layer.contrast_limits = (-45.0, 105.0)
    assert widget.preset.value == "liver"


def test_mr_layer_is_labelled_automatic(make_napari_viewer, add_layer):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    mr = rng.gamma(3.0, 200.0, (6, 20, 20)).astype(np.float32)
    layer = add_layer(viewer, volume_layer_data(Volume(mr, np.eye(4), "MR", {"name": "mr"})))
    widget = WindowLevelWidget(viewer)
    assert widget.preset.value == AUTO
    assert np.allclose(layer.contrast_limits, np.percentile(mr, [0.5, 99.5]))


def test_drag_right_widens_window_and_down_raises_level(ct_viewer, qtbot):
    viewer, layer, widget = ct_viewer
    widget.drag.value = True
    assert not viewer.scene.camera.mouse_pan
    # napari has no public way to reach its canvas or press the mouse on it.
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    span = layer.contrast_limits_range[1] - layer.contrast_limits_range[0]
    per_pixel = span / DRAG_PIXELS_PER_RANGE
    before = (widget.window.value, widget.level.value)
    press = MouseEvent(pos=(100, 100), type="mouse_press", button=1)
    # napari drops drag moves that come faster than it renders: pause between them.
    canvas.events.mouse_press(pos=(100, 100), modifiers=(), button=1)
    qtbot.wait(30)
    canvas.events.mouse_move(pos=(120, 100), modifiers=(), button=1, press_event=press)
    qtbot.wait(30)
    canvas.events.mouse_move(pos=(120, 110), modifiers=(), button=1, press_event=press)
    qtbot.wait(30)
    canvas.events.mouse_release(pos=(120, 110), modifiers=(), button=1)
    window, level = widget.window.value, widget.level.value
    assert window == pytest.approx(before[0] + 20 * per_pixel, abs=0.01)
    assert level == pytest.approx(before[1] + 10 * per_pixel, abs=0.01)
    widget.drag.value = False
    assert viewer.scene.camera.mouse_pan
    assert widget._drag_callback not in viewer.mouse_drag_callbacks
