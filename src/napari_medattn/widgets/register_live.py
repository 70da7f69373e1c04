"""The Register widget's moving layer while a run goes: its live preview and its placement.

Every snapshot the engine hands back is relayed to the GUI thread (queued signal) at most
:data:`PREVIEW_INTERVAL_S` apart. A linear transform moves the moving layer through its
napari affine, so nothing is resampled; a deformable one is resampled on the fixed grid in
the worker and shown as a preview layer. Where the layer was before the run is remembered,
so Cancel (or a deformable result, shown as a layer of its own) can put it back.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.io import Volume
from napari_medattn.registration import LinearTransform, Snapshot, warp
from napari_medattn.widgets.parts.layers import heat_map_layer_data
from napari_medattn.widgets.register_landmarks import LPS_TO_WORLD, MADE_BY
from napari_medattn.widgets.worker import add_layers

if TYPE_CHECKING:
    from napari_medattn.widgets.register import RegisterWidget

#: Longest wait between two preview updates while a registration runs (seconds).
PREVIEW_INTERVAL_S = 0.5


class LiveMovingLayer(QObject):
    """Preview and placement of one run's moving layer (see the module docstring)."""

    snapshot = Signal(object)

    def __init__(self, widget: RegisterWidget) -> None:
        super().__init__()
        self.widget = widget
        self.layer_name = ""
        self._original: dict[str, Any] | None = None
        self._last_preview = 0.0
        self.snapshot.connect(self._show)

    @property
    def _layers(self):
        return self.widget.viewer.layers

    def start(self, layer_name: str) -> None:
        """Follow ``layer_name`` from now on, remembering where it is."""
        self.layer_name = layer_name
        self._last_preview = 0.0
        layer = self._layers[layer_name]
        self._original = {"name": layer.name, "scale": np.array(layer.scale),
                          "translate": np.array(layer.translate),
                          "affine": np.array(layer.affine.affine_matrix)}

    def relay(self, snapshot: Snapshot, fixed: Volume, moving: Volume) -> None:
        """Worker thread: throttle, resample deformable snapshots, relay to the GUI."""
        now = time.perf_counter()
        if now - self._last_preview < PREVIEW_INTERVAL_S:
            return
        self._last_preview = now
        transform = snapshot.transform
        if isinstance(transform, LinearTransform):
            self.snapshot.emit((snapshot, None))
        else:
            self.snapshot.emit((snapshot, warp(moving, transform, fixed)))

    def _show(self, item) -> None:
        snapshot, warped = item
        self.widget.status.setText(f"{snapshot.stage}, level {snapshot.level + 1}: metric "
                                   f"{snapshot.loss:.4g}")
        if warped is None:
            self.place(snapshot.transform)
            return
        name = f"{self.layer_name} (preview)"
        if name in self._layers:
            self._layers[name].data = warped.data
        else:
            data, kwargs, kind = heat_map_layer_data(warped, MADE_BY, {})
            kwargs.update(name=name, colormap="gray", blending="translucent", opacity=1.0)
            add_layers(self.widget.viewer, [(data, kwargs, kind)], widget=self.widget)

    def remove_preview(self) -> None:
        name = f"{self.layer_name} (preview)"
        if self.layer_name and name in self._layers:
            self._layers.remove(name)

    def restore(self) -> None:
        """Put the moving layer back where it was when :meth:`start` was called."""
        if self._original and self._original["name"] in self._layers:
            layer = self._layers[self._original["name"]]
            layer.affine = self._original["affine"]
            layer.scale, layer.translate = self._original["scale"], self._original["translate"]

    def place(self, transform: LinearTransform) -> None:
        """Show the moving layer where the transform puts it in fixed space, through its
        napari affine (world = inverse(T) of its exact patient position)."""
        layer = self._layers[self.layer_name]
        geometry = layer.metadata[GEOMETRY_KEY].affine
        layer.scale, layer.translate = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
        layer.affine = LPS_TO_WORLD @ np.linalg.inv(transform.matrix) @ geometry
