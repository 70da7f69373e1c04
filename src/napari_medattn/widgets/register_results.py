"""The Register widget's results panel: the QA table and what a transform is used for.

The QA table lists :func:`~napari_medattn.metrics.registration.registration_quality`'s
figures of the last result (folding, SDlogJ, det J range, landmark TRE, metric before and
after). The transform then warps a labels layer drawn on the moving scan onto the fixed
grid (nearest neighbour, class names kept), is saved or loaded as a file SimpleITK, ANTs
and 3D Slicer read (:mod:`napari_medattn.registration.itk_files`), and is drawn as a
deformation grid on the current axial slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume
from napari_medattn.registration import (
    LinearTransform,
    grid_lines,
    read_transform,
    warp,
    write_transform,
)
from napari_medattn.registration.itk_files import check_fits
from napari_medattn.widgets.choices import set_items
from napari_medattn.widgets.parts.layers import DERIVED_KEY, labels_layer_data
from napari_medattn.widgets.register_landmarks import LPS_TO_WORLD, MADE_BY
from napari_medattn.widgets.worker import add_layers

if TYPE_CHECKING:
    from napari_medattn.metrics.registration import RegistrationQuality
    from napari_medattn.widgets.register import RegisterWidget

#: Spacing of the deformation grid's lines (mm).
GRID_STEP_MM = 8.0


class ResultsPanel(QWidget):
    """QA table, Apply to labels, Save/Load transform and Deformation grid."""

    def __init__(self, widget: RegisterWidget) -> None:
        super().__init__()
        self.widget = widget
        self.quality = QTableWidget(0, 2)
        self.quality.setHorizontalHeaderLabels(["measure", "value"])
        self.labels = QComboBox()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("QA", self.quality)
        apply_row = QHBoxLayout()
        apply_row.addWidget(self.labels)
        apply_row.addWidget(widget.button("Apply to labels", self.apply_to_labels, "apply"))
        form.addRow("Labels", apply_row)
        files = QHBoxLayout()
        files.addWidget(widget.button("Save transform...", self.save_transform, "save"))
        files.addWidget(widget.button("Load transform...", self.load_transform, "load"))
        form.addRow(files)
        form.addRow(widget.button("Deformation grid", self.deformation_grid, "grid"))

    def refresh(self) -> None:
        """List the labels layers that carry a scan's geometry."""
        set_items(self.labels, [layer.name for layer in self.widget.viewer.layers
                                if isinstance(layer, Labels) and GEOMETRY_KEY in layer.metadata])

    def show_quality(self, quality: RegistrationQuality) -> None:
        """Fill the QA table with a result's figures."""
        rows = [("folding (%)", f"{quality.folding_percent:.3f}"),
                ("SDlogJ", f"{quality.sdlogj:.4f}"),
                ("det J min / max", f"{quality.det_j_min:.3f} / {quality.det_j_max:.3f}")]
        if quality.tre_mean_mm is not None:
            rows.append(("landmark TRE (mm)", f"{quality.tre_mean_mm:.2f}"))
        if quality.similarity_after is not None:
            rows.append(("metric before / after", f"{quality.similarity_before:.4g} / "
                                                  f"{quality.similarity_after:.4g}"))
        self.quality.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            self.quality.setItem(row, 0, QTableWidgetItem(name))
            self.quality.setItem(row, 1, QTableWidgetItem(value))

    def apply_to_labels(self) -> None:
        """Warp the chosen labels layer (drawn on the moving scan) onto the fixed grid,
        nearest neighbour; class names are kept."""
        transform = self.widget.need_transform()
        layer = self.widget.viewer.layers[self.labels.currentText()]
        labels = layer_volume(layer.data, layer.metadata, modality="SEG", name=layer.name)
        fixed = self.widget.volume(self.widget.fixed.currentText())
        moved = warp(labels, transform, fixed, labels=True,
                     name=f"{layer.name} on {fixed.name}")
        add_layers(self.widget.viewer, [labels_layer_data(moved, MADE_BY, {})],
                   widget=self.widget)

    def save_transform(self, path: str | None = None) -> None:
        """Write the transform: an ITK transform file (linear) or a displacement-field
        NIfTI (deformable); ``path`` None asks for it."""
        transform = self.widget.need_transform()
        suffix = "ITK transform (*.tfm)" if isinstance(transform, LinearTransform) else \
            "Displacement field (*.nii.gz)"
        path = path or QFileDialog.getSaveFileName(self, "Save transform", "", suffix)[0]
        if path:
            write_transform(path, transform)
            self.widget.status.setText(f"Saved {path}.")

    def load_transform(self, path: str | None = None) -> None:
        """Read a transform file made for the fixed scan's grid and show its result;
        ``path`` None asks for it."""
        path = path or QFileDialog.getOpenFileName(
            self, "Load transform", "", "Transforms (*.tfm *.txt *.mat *.nii *.nii.gz)")[0]
        if not path:
            return
        transform = read_transform(path)
        fixed = self.widget.volume(self.widget.fixed.currentText())
        check_fits(transform, fixed.affine, fixed.spatial_shape)
        self.widget.show_loaded(transform)

    def deformation_grid(self, step_mm: float = GRID_STEP_MM) -> None:
        """A Shapes layer of grid lines on the current axial slice of the fixed scan,
        moved by the transform (in-plane part; straight lines: no deformation)."""
        transform = self.widget.need_transform()
        viewer = self.widget.viewer
        fixed = self.widget.volume(self.widget.fixed.currentText())
        # The fixed layer's data are canonical: array axis 0 is world axis 0 (z).
        z = viewer.dims.point[0]
        to_index = np.linalg.inv(fixed.affine)
        point = LPS_TO_WORLD[:3, :3].T @ np.asarray(viewer.dims.point[-3:], float)
        index = int(np.clip(round(float(to_index[0, :3] @ point + to_index[0, 3])), 0,
                            fixed.spatial_shape[0] - 1))
        lines = grid_lines(transform, fixed, axis=0, index=index, step_mm=step_mm)
        paths = [line @ LPS_TO_WORLD[:3, :3].T for line in lines]
        viewer.add_shapes(paths, shape_type="path", edge_color="yellow", edge_width=0.4,
                          name=f"deformation grid z {z:.1f} mm",
                          metadata={DERIVED_KEY: MADE_BY})
