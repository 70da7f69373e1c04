"""The Register widget's landmarks panel: two Points layers, pairs by order, residuals.

*Add landmark layers* creates one Points layer per scan (fixed cyan, moving yellow) in add
mode; a click on a 2D slice of any view adds a 3D point. Pairs match by the order their
points were added; as soon as three pairs exist the panel fits them
(:func:`~napari_medattn.registration.fit_landmarks`, the kind the Method box asks for,
rigid otherwise) and lists each pair's residual in mm, live while clicking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Points
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from napari_medattn.errors import GeometryError
from napari_medattn.registration import fit_landmarks, landmark_errors
from napari_medattn.widgets.parts.layers import DERIVED_KEY

if TYPE_CHECKING:
    from napari_medattn.widgets.register import RegisterWidget

#: LPS (x, y, z) -> napari world (z, y, x).
LPS_TO_WORLD = np.eye(4)[[2, 1, 0, 3]]
#: Points colours of the fixed and the moving scan's landmarks.
COLOURS = ("cyan", "yellow")
MADE_BY = "register"
#: The landmark fits; any other method starts from a rigid fit of the pairs.
FITS = ("rigid", "similarity", "affine")


class LandmarksPanel(QWidget):
    """The *Add landmark layers* button and the residual table of the Register widget."""

    def __init__(self, widget: RegisterWidget) -> None:
        super().__init__()
        self.widget = widget
        self.residuals = QTableWidget(0, 2)
        self.residuals.setHorizontalHeaderLabels(["pair", "residual (mm)"])
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(widget.button("Add landmark layers", self.add_layers, "landmarks"))
        column.addWidget(self.residuals)

    def _names(self) -> tuple[str, str]:
        return (f"{self.widget.fixed.currentText()} landmarks",
                f"{self.widget.moving.currentText()} landmarks")

    def layers(self) -> tuple[Points | None, Points | None]:
        """The fixed and moving scans' landmark layers (None where not added)."""
        viewer = self.widget.viewer
        fixed, moving = (viewer.layers[n] if n in viewer.layers else None
                         for n in self._names())
        return fixed, moving

    def add_layers(self) -> None:
        """Two Points layers, one per scan; points pair by the order they are added."""
        viewer = self.widget.viewer
        for name, colour in zip(self._names(), COLOURS):
            if name not in viewer.layers:
                layer = viewer.add_points(np.empty((0, 3)), name=name, ndim=3,
                                          face_color=colour, size=4,
                                          metadata={DERIVED_KEY: MADE_BY})
                layer.mode = "add"
                layer.events.data.connect(
                    lambda event: self.widget.guarded(self.update_residuals))

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The paired points in LPS mm (fixed, moving), as many as both layers have."""
        fixed_layer, moving_layer = self.layers()
        if fixed_layer is None or moving_layer is None:
            raise GeometryError("Add the landmark layers and click pairs of points first.")
        count = min(len(fixed_layer.data), len(moving_layer.data))
        world_to_lps = LPS_TO_WORLD[:3, :3].T
        return (np.asarray(fixed_layer.data[:count]) @ world_to_lps,
                np.asarray(moving_layer.data[:count]) @ world_to_lps)

    def has_pairs(self) -> bool:
        """Whether both layers exist and hold at least three pairs (enough for a fit)."""
        fixed_layer, moving_layer = self.layers()
        return fixed_layer is not None and moving_layer is not None and min(
            len(fixed_layer.data), len(moving_layer.data)) >= 3

    def kind(self) -> str:
        """The fit the Method box asks for (rigid for the intensity-based methods)."""
        method = self.widget.method.currentText()
        return method if method in FITS else "rigid"

    def fit(self):
        """The least-squares transform (fixed mm -> moving mm) of the pairs."""
        return fit_landmarks(*self.points(), self.kind())

    def update_residuals(self) -> None:
        """Refit the landmarks and show each pair's residual (mm), live while clicking."""
        fixed, moving = self.points()
        self.residuals.setRowCount(0)
        if len(fixed) < 3:
            return
        errors = landmark_errors(fit_landmarks(fixed, moving, self.kind()), fixed, moving)
        self.residuals.setRowCount(len(errors))
        for row, error in enumerate(errors):
            self.residuals.setItem(row, 0, QTableWidgetItem(str(row + 1)))
            self.residuals.setItem(row, 1, QTableWidgetItem(f"{error:.2f}"))
