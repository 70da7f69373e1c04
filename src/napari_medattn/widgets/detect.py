"""The "Detect" widget: lesion boxes on a scan, a live score threshold, a table to jump to
each lesion, lesions from any Labels layer, and CSV export.

The work is :func:`napari_medattn.detection.detect` (or
:func:`~napari_medattn.detection.lesions_from_labels`) run through the shared Job helper:
progress in napari's activity dock, Cancel between windows, layers only when the run
succeeded. Boxes are a Shapes layer (a rectangle on every axial slice a box crosses,
coloured by class) and centres a Points layer (sized by the box, coloured by class), both
on the scan layer's display grid (see :mod:`napari_medattn.detection.layers`). The
threshold slider filters the boxes, points and table without running again; clicking a
table row moves the slices and the camera to that lesion.

The Classify row runs a scan classifier
(:func:`napari_medattn.classification.classify`) on the same scan, shows its probability,
and adds its heat map (:func:`~napari_medattn.classification.heat_map`: Grad-CAM or DSSA
routing) as a layer styled like every heat map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_medattn.classification import (
    DEFAULT_CLASSIFIER,
    HEATMAPS,
    ClassificationResult,
    classify,
    heat_map,
)
from napari_medattn.detection import Detection, lesions_from_labels
from napari_medattn.detection.detector import DEFAULT_DETECTOR, check_detector, detect
from napari_medattn.detection.export import write_detections_csv
from napari_medattn.detection.layers import box_rectangles, centre_points, world_point
from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume
from napari_medattn.errors import MedAttnError
from napari_medattn.widgets.choices import labels_on_scan_grid, on_layers_changed, set_items
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import DERIVED_KEY, heat_map_layer_data, scan_layers
from napari_medattn.widgets.parts.pickers import ModelPicker, device_choice
from napari_medattn.widgets.radiology_view import viewer_camera
from napari_medattn.widgets.tooltips import DETECT as TOOLTIPS
from napari_medattn.widgets.worker import add_layers

#: Columns of the table (score first: rows are sorted by it).
COLUMNS = ("Score", "Class", "x (mm)", "y (mm)", "z (mm)", "Size (mm)", "Volume (mL)")
#: Lowest score a run keeps; the slider shows the ones above its own value.
KEEP_SCORE = 0.05
DEFAULT_THRESHOLD = 0.3
FALLBACK_COLOUR = "#ffff00"
WIDGET = "detect"
#: The heat-map choice that adds no layer.
NO_HEATMAP = "none"
#: ``layer.metadata`` key of a classifier heat map: ``{"image": <scan layer name>,
#: "model": <name>, "kind": <gradcam | routing>, "probability": <p of class 1>}``.
CLASSIFY_KEY = "medattn_classification"


class DetectWidget(JobWidget):
    """Detect lesions in a scan layer (or list the lesions of a Labels layer).

    Attributes
    ----------
    detections : list of Detection
        Everything the last run found (scores down to :data:`KEEP_SCORE`).
    shown : list of Detection
        Those at or above the threshold, by decreasing score (the table's rows).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
        self.detections: list[Detection] = []
        self.shown: list[Detection] = []
        self._scan_name = ""
        self._colours: dict[int, str] = {}
        self.image = QComboBox()
        self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"], task="detection",
                                 default=DEFAULT_DETECTOR)
        self.device = device_choice()
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(int(DEFAULT_THRESHOLD * 100))
        self.threshold_label = QLabel(f"{DEFAULT_THRESHOLD:.2f}")
        self.labels = QComboBox()
        self.from_labels_button = QPushButton("Lesions from labels")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setEnabled(False)
        self.classifier = ModelPicker(self.jobs, tooltip=TOOLTIPS["classifier"],
                                      task="classification", default=DEFAULT_CLASSIFIER)
        self.heatmap = QComboBox()
        self.heatmap.addItems([*HEATMAPS, NO_HEATMAP])
        self.classify_button = QPushButton("Classify")
        self.probability = QLabel("")
        self.classification: ClassificationResult | None = None
        for key, widget in (("image", self.image), ("device", self.device),
                            ("threshold", self.threshold), ("labels", self.labels),
                            ("from_labels", self.from_labels_button), ("table", self.table),
                            ("export", self.export_button), ("heatmap", self.heatmap),
                            ("classify", self.classify_button),
                            ("classify", self.probability)):
            widget.setToolTip(TOOLTIPS[key])
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold, 1)
        threshold_row.addWidget(self.threshold_label)
        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Model", self.model.row())
        form.addRow("Device", self.device)
        form.addRow(self.jobs)
        form.addRow("Score ≥", threshold_row)
        form.addRow("Labels", self.labels)
        form.addRow(self.from_labels_button)
        form.addRow("Classifier", self.classifier.row())
        form.addRow("Heat map", self.heatmap)
        form.addRow(self.classify_button, self.probability)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.export_button)
        # Listing lesions needs no detector: the button follows its own rule.
        self.jobs.idle.connect(self._update_from_labels)
        self.jobs.idle.connect(self._update_classify)
        self.classifier.changed.connect(self._update_classify)
        self.classify_button.clicked.connect(self.run_classify)
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.table.cellClicked.connect(self.go_to)
        self.from_labels_button.clicked.connect(self.run_from_labels)
        self.export_button.clicked.connect(self._export_clicked)
        self.image.currentTextChanged.connect(self._refresh_labels)
        self.model.changed.connect(self.jobs.refresh)
        on_layers_changed(napari_viewer, self._refresh)
        self._refresh()
        self.model.refresh()
        self.classifier.refresh()

    # -- choices ------------------------------------------------------------------
    def _refresh(self, event: Any = None) -> None:
        set_items(self.image, [layer.name for layer in scan_layers(self.viewer)])
        self._refresh_labels()

    def _refresh_labels(self, *args: Any) -> None:
        names = labels_on_scan_grid(self.viewer, self.image.currentText(), skip_key=None) \
            if self.image.currentText() else []
        set_items(self.labels, names)
        self.jobs.refresh()
        self._update_from_labels()
        self._update_classify()

    def _update_from_labels(self) -> None:
        self.from_labels_button.setEnabled(not self.jobs.busy and bool(self.labels.currentText()))

    def _update_classify(self) -> None:
        held = self.classifier.loaded
        self.classify_button.setEnabled(
            not self.jobs.busy and bool(self.image.currentText()) and held is not None
            and held.card.task == "classification")

    def ready(self) -> bool:
        held = self.model.loaded
        return bool(self.image.currentText()) and held is not None and \
            held.card.task == "detection"

    @property
    def threshold_value(self) -> float:
        return self.threshold.value() / 100.0

    # -- running -----------------------------------------------------------------
    def run(self):
        layer = self.viewer.layers[self.image.currentText()]
        volume = layer_volume(layer.data, layer.metadata, name=layer.name)
        held = self.model.loaded
        device = self.device.currentText()
        check_detector(held.card)
        colours = {i: c.color for i, c in enumerate(held.card.classes)}

        def work(progress, cancel):
            return detect(volume, held.module, held.card, device=device,
                          min_score=KEEP_SCORE, progress=progress, cancel=cancel)

        self.status.setText(f"Detecting lesions in {layer.name}...")
        return self.jobs.start(work, f"Detect {layer.name}",
                               lambda result: self._show(layer.name, result.detections,
                                                         colours, result.provenance["notes"]),
                               model=held)

    def run_from_labels(self):
        """List the lesions of the chosen Labels layer (mean intensity from the scan)."""
        if self.jobs.busy:  # one job at a time
            return None
        if not self.labels.currentText() or not self.image.currentText():
            self.status.setText("Choose a scan and a Labels layer on its grid first.")
            return None
        scan = self.viewer.layers[self.image.currentText()]
        labels_layer = self.viewer.layers[self.labels.currentText()]
        metadata = labels_layer.metadata if GEOMETRY_KEY in labels_layer.metadata else \
            scan.metadata
        try:
            labels = layer_volume(labels_layer.data, metadata, modality="SEG",
                                  name=labels_layer.name)
            image = layer_volume(scan.data, scan.metadata, name=scan.name)
        except MedAttnError as error:
            show_error(str(error))
            return None

        def work(progress, cancel):
            return lesions_from_labels(labels, image)

        self.status.setText(f"Finding lesions in {labels_layer.name}...")
        job = self.jobs.start(work, f"Lesions from {labels_layer.name}",
                              lambda found: self._show(scan.name, found, {}, []))
        self._update_from_labels()
        return job

    def run_classify(self):
        """Classify the chosen scan; show the probability and add the heat map."""
        self._update_classify()
        if not self.classify_button.isEnabled():
            return None
        layer = self.viewer.layers[self.image.currentText()]
        try:
            volume = layer_volume(layer.data, layer.metadata, name=layer.name)
        except MedAttnError as error:
            show_error(str(error))
            return None
        held = self.classifier.loaded
        device, kind = self.device.currentText(), self.heatmap.currentText()

        def work(progress, cancel):
            result = classify(volume, held.module, held.card, device=device, cancel=cancel)
            if kind == NO_HEATMAP:
                return result, []
            found = heat_map(volume, held.module, held.card, kind, device=device,
                             progress=progress, cancel=cancel)
            tags = {CLASSIFY_KEY: {"image": layer.name, "model": held.card.name, "kind": kind,
                                   "probability": result.probability}}
            return result, [heat_map_layer_data(found.volume, WIDGET, tags, top=1.0)]

        self.status.setText(f"Classifying {layer.name}...")
        job = self.jobs.start(work, f"Classify {layer.name}",
                              lambda outcome: self._show_classification(layer.name, *outcome),
                              model=held)
        self._update_classify()
        return job

    def _show_classification(self, scan_name: str, result: ClassificationResult,
                             layer_data: list[tuple]) -> None:
        self.classification = result
        text = f"p({result.class_names[1]}) = {result.probability:.2f}"
        self.probability.setText(text)
        for _, kwargs, _ in layer_data:  # a new run's map replaces the last one of its name
            name = kwargs.get("name")
            if name in self.viewer.layers and \
                    self.viewer.layers[name].metadata.get(DERIVED_KEY) == WIDGET:
                self.viewer.layers.remove(name)
        add_layers(self.viewer, layer_data, widget=self)
        self.status.setText(f"{scan_name}: {text}.")

    # -- results -----------------------------------------------------------------
    def _show(self, scan_name: str, detections: list[Detection], colours: dict[int, str],
              notes: list[str]) -> None:
        self.detections = list(detections)
        self._scan_name = scan_name
        self._colours = colours
        self._redraw()
        message = " ".join(notes) if not detections else \
            f"{len(detections)} lesion(s) found in {scan_name}."
        self.status.setText(message or f"No lesion found in {scan_name}.")
        if not detections:
            show_info(f"No lesion found in {scan_name}.")

    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        if self._scan_name:
            self._redraw()

    def _layer_names(self) -> tuple[str, str]:
        return f"{self._scan_name} lesion boxes", f"{self._scan_name} lesion centres"

    def _redraw(self) -> None:
        """Boxes, centres and table for the detections at or above the threshold."""
        self.shown = [d for d in self.detections if d.score >= self.threshold_value]
        try:
            scan = self.viewer.layers[self._scan_name]
        except KeyError:
            return
        scale, translate = np.asarray(scan.scale)[-3:], np.asarray(scan.translate)[-3:]
        rectangles, owners = box_rectangles(self.shown, scale, translate, scan.data.shape[-3:])
        centres, sizes = centre_points(self.shown, scale, translate)
        colours = [self._colours.get(d.label, FALLBACK_COLOUR) for d in self.shown]
        boxes_name, points_name = self._layer_names()
        common = dict(scale=tuple(scale), translate=tuple(translate),
                      units=tuple(scan.units)[-3:], axis_labels=tuple(scan.axis_labels)[-3:],
                      metadata={DERIVED_KEY: WIDGET})
        edge = [colours[i] for i in owners]
        if boxes_name in self.viewer.layers:
            boxes = self.viewer.layers[boxes_name]
            boxes.data = []
            if rectangles:
                boxes.add_rectangles(rectangles, edge_color=edge, face_color="transparent",
                                     edge_width=0.5)
        else:
            self.viewer.add_shapes(rectangles, shape_type="rectangle", edge_color=edge or "yellow",
                                   face_color="transparent", edge_width=0.5, name=boxes_name,
                                   **common)
        features = {"score": [d.score for d in self.shown],
                    "class": [d.class_name for d in self.shown]}
        if points_name in self.viewer.layers:
            points = self.viewer.layers[points_name]
            points.data = centres
            points.features = features
            if len(centres):
                points.size = np.maximum(sizes, 1.0)
                points.face_color = colours
        else:
            self.viewer.add_points(centres, size=np.maximum(sizes, 1.0) if len(sizes) else 1.0,
                                   face_color=colours or "yellow", symbol="ring",
                                   border_width=0, opacity=0.8, features=features,
                                   name=points_name,
                                   **common)
        self._fill_table()
        self.export_button.setEnabled(bool(self.shown))

    def _fill_table(self) -> None:
        self.table.setRowCount(len(self.shown))
        for row, det in enumerate(self.shown):
            volume = det.measurements.get("volume_ml", det.volume_mm3 / 1000.0)
            cells = (f"{det.score:.2f}", det.class_name,
                     *(f"{v:.1f}" for v in det.centre_mm),
                     " × ".join(f"{v:.0f}" for v in det.size_mm), f"{volume:.2f}")
            for column, text in enumerate(cells):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def go_to(self, row: int, column: int = 0) -> None:
        """Move the slices and the camera to the lesion of table row ``row``."""
        if not 0 <= row < len(self.shown):
            return
        point = world_point(self.shown[row])
        lead = self.viewer.dims.ndim - 3
        for axis, value in enumerate(point):
            self.viewer.dims.set_point(lead + axis, value)
        displayed = [point[a - lead] for a in self.viewer.dims.displayed if a >= lead]
        if displayed:
            viewer_camera(self.viewer).center = tuple(displayed)

    # -- export ------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> Path:
        """Write the shown detections (the table) as CSV."""
        return write_detections_csv(path, self.shown)

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save lesions as CSV",
                                              f"{self._scan_name}_lesions.csv",
                                              "CSV (*.csv)")
        if path:
            try:
                self.export_csv(path)
            except (MedAttnError, OSError) as error:
                show_error(str(error))
