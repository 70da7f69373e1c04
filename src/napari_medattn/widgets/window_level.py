"""Window/Level widget: CT presets, window and level boxes, and a mouse drag mode.

The arithmetic lives in :mod:`napari_medattn.display.window_level`; this widget only reads
and writes ``contrast_limits`` of the active image layer.
"""

from __future__ import annotations

from typing import Any

import napari
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton
from napari.layers import Image

from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.display.window_level import (
    CT_PRESETS,
    MIN_WINDOW,
    drag_window_level,
    limits_to_window,
    percentile_limits,
    preset_limits,
    window_to_limits,
)
from napari_medattn.widgets.radiology_view import install_radiology_view, viewer_camera

AUTO = "auto (0.5-99.5 percentiles)"
CUSTOM = "custom"
#: Pixels of mouse motion to sweep the layer's whole contrast range once.
DRAG_PIXELS_PER_RANGE = 500.0

TOOLTIPS = {
    "preset": "CT presets in HU (brain, lung, bone, ...) or automatic percentiles for MR/PET.",
    "window": "Window width: the intensity range shown from black to white.",
    "level": "Window centre: the intensity shown as mid-grey.",
    "drag": "When on, dragging with the left mouse button on the image changes the window "
            "(left/right) and the level (up/down) instead of panning.",
}


class WindowLevelWidget(Container):
    """Window/level control for the active image layer: a magicgui form.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 injects it). Docking this widget also puts the viewer in
        radiological orientation for layers opened by this plugin.

    Attributes
    ----------
    preset : ComboBox
    window, level : FloatSpinBox
    drag : PushButton
        A toggle: on, left-dragging on the canvas changes the window and level.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.viewer = napari_viewer
        install_radiology_view(napari_viewer)
        self._syncing = False
        self._auto_limits: tuple[float, float] | None = None
        self.preset = ComboBox(label="Preset", choices=[CUSTOM, AUTO, *CT_PRESETS],
                               tooltip=TOOLTIPS["preset"])
        self.window = FloatSpinBox(label="Window", min=MIN_WINDOW, max=1e6, step=1.0,
                                   tooltip=TOOLTIPS["window"])
        self.level = FloatSpinBox(label="Level", min=-1e6, max=1e6, step=1.0,
                                  tooltip=TOOLTIPS["level"])
        self.drag = PushButton(text="Drag to adjust window/level", tooltip=TOOLTIPS["drag"])
        super().__init__(widgets=[self.preset, self.window, self.level, self.drag])
        # What magicgui does not express: values applied when typing ends (not on every
        # keystroke), and a toggle button.
        for box in (self.window, self.level):
            box.native.setKeyboardTracking(False)
        self.drag.native.setCheckable(True)

        self.preset.changed.connect(self._apply_preset)
        self.window.changed.connect(self._apply_boxes)
        self.level.changed.connect(self._apply_boxes)
        self.drag.native.toggled.connect(self._toggle_drag)
        napari_viewer.layers.selection.events.active.connect(self._on_active)
        self._layer: Image | None = None
        self._on_active()

    # -- layer tracking -------------------------------------------------------------
    def _on_active(self, event: Any = None) -> None:
        if self._layer is not None:
            self._layer.events.contrast_limits.disconnect(self._sync_from_layer)
        active = self.viewer.layers.selection.active
        self._layer = active if isinstance(active, Image) and not active.rgb else None
        self.enabled = self._layer is not None
        self._auto_limits = None
        if self._layer is not None and GEOMETRY_KEY in self._layer.metadata:
            if self._layer.metadata[GEOMETRY_KEY].modality.upper() != "CT":
                # MR/PET open with these limits (display.window_level.initial_limits).
                self._auto_limits = percentile_limits(self._layer.data)
        if self._layer is not None:
            self._layer.events.contrast_limits.connect(self._sync_from_layer)
            self._sync_from_layer()

    def _sync_from_layer(self, event: Any = None) -> None:
        low, high = self._layer.contrast_limits
        window, level = limits_to_window(low, high)
        self._syncing = True
        try:
            self.window.value = window
            self.level.value = level
            # Name what is shown: a CT preset, the automatic limits, or custom values.
            name = next((preset for preset in CT_PRESETS
                         if preset_limits(preset) == (low, high)), CUSTOM)
            if name == CUSTOM and self._auto_limits == (low, high):
                name = AUTO
            self.preset.value = name
        finally:
            self._syncing = False

    def _set_limits(self, low: float, high: float) -> None:
        layer = self._layer
        # napari clips limits to contrast_limits_range: widen it so a preset is never cut
        # (a lung window reaches -1200 HU, below many scans' minimum).
        range_low, range_high = layer.contrast_limits_range
        layer.contrast_limits_range = (min(range_low, low), max(range_high, high))
        layer.contrast_limits = (low, high)

    # -- user actions ---------------------------------------------------------------
    def _apply_preset(self, name: str) -> None:
        if self._syncing or self._layer is None or name == CUSTOM:
            return
        if name == AUTO:
            self._auto_limits = percentile_limits(self._layer.data)
            self._set_limits(*self._auto_limits)
        else:
            self._set_limits(*preset_limits(name))

    def _apply_boxes(self, value: float = 0.0) -> None:
        if self._syncing or self._layer is None:
            return
        self._set_limits(*window_to_limits(self.window.value, self.level.value))

    def _toggle_drag(self, on: bool) -> None:
        # Left-drag both pans and adjusts otherwise; panning is paused while the mode is on.
        viewer_camera(self.viewer).mouse_pan = not on
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._drag_callback not in callbacks:
            callbacks.append(self._drag_callback)
        elif not on and self._drag_callback in callbacks:
            callbacks.remove(self._drag_callback)

    def _drag_callback(self, viewer: napari.Viewer, event: Any):
        if self._layer is None or event.button != 1:
            return
        range_low, range_high = self._layer.contrast_limits_range
        units_per_pixel = (range_high - range_low) / DRAG_PIXELS_PER_RANGE
        last = event.pos
        yield
        while event.type == "mouse_move":
            dx, dy = event.pos[0] - last[0], event.pos[1] - last[1]
            last = event.pos
            window, level = limits_to_window(*self._layer.contrast_limits)
            window, level = drag_window_level(window, level, dx, dy, units_per_pixel)
            self._set_limits(*window_to_limits(window, level))
            yield
