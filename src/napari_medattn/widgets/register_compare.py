"""The Register widget's comparison views: checkerboard, difference and fade.

The checkerboard (tiles in mm) and the difference are the fusion library's compositions
(:mod:`napari_medattn.fusion.compose`, the ones the Fuse widget shows) of the fixed scan
and the registered moving scan, resampled on the fixed grid through the transform. The
fade slider sets the moving layer's opacity over the fixed one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QSlider, QWidget

from napari_medattn.fusion.compose import checkerboard, difference
from napari_medattn.io import volume_like
from napari_medattn.registration import warp
from napari_medattn.widgets.parts.layers import heat_map_layer_data
from napari_medattn.widgets.register_landmarks import MADE_BY
from napari_medattn.widgets.tooltips import REGISTER as TOOLTIPS
from napari_medattn.widgets.worker import add_layers

if TYPE_CHECKING:
    from napari_medattn.widgets.register import RegisterWidget

COMPARISONS = ("checkerboard", "difference")


class ComparisonPanel(QWidget):
    """View (checkerboard or difference, tile size, Compare) and Fade."""

    def __init__(self, widget: RegisterWidget) -> None:
        super().__init__()
        self.widget = widget
        self.comparison = QComboBox()
        self.comparison.addItems(COMPARISONS)
        self.tile = QDoubleSpinBox(minimum=1.0, maximum=100.0, value=10.0, suffix=" mm")
        self.fade = QSlider(Qt.Orientation.Horizontal)
        self.fade.setRange(0, 100)
        self.fade.setValue(100)
        self.fade.setToolTip(TOOLTIPS["fade"])
        self.fade.valueChanged.connect(self._fade)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.comparison)
        row.addWidget(self.tile)
        row.addWidget(widget.button("Compare", self.compare, "compare"))
        form.addRow("View", row)
        form.addRow("Fade", self.fade)

    def compare(self) -> None:
        """A checkerboard (tiles in mm) or difference layer of fixed and registered moving,
        on the fixed grid."""
        transform = self.widget.need_transform()
        fixed = self.widget.volume(self.widget.fixed.currentText())
        moved = warp(self.widget.volume(self.widget.moving.currentText()), transform, fixed)
        base = np.asarray(fixed.data, np.float32)
        signed = self.comparison.currentText() == "difference"
        values = difference(base, moved.data) if signed else \
            checkerboard(base, moved.data, fixed.spacing, self.tile.value())
        view = volume_like(fixed, values, modality=fixed.modality,
                           name=f"{self.comparison.currentText()} {fixed.name}")
        layer = heat_map_layer_data(view, MADE_BY, {}, signed=signed)
        if not signed:
            layer[1].update(colormap="gray", blending="translucent", opacity=1.0)
        add_layers(self.widget.viewer, [layer], widget=self.widget)

    def _fade(self, value: int) -> None:
        layers = self.widget.viewer.layers
        name = self.widget.moving.currentText()
        if name in layers:
            layers[name].opacity = value / 100.0
