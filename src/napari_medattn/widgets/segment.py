"""The "Segment" widget: pick a scan and a model, click Run, get labels and statistics.

The work is :func:`napari_medattn.inference.segment` and
:func:`napari_medattn.metrics.statistics.class_statistics`, run through the shared
worker helper (:mod:`napari_medattn.widgets.worker`): progress in napari's activity
dock, Cancel between windows, and layers only when the whole run succeeded. The layer
data (on the scan's exact geometry, through
:func:`~napari_medattn.display.layers.volume_layer_data`) are prepared in the worker
thread too, so the GUI thread only inserts finished layers.

Replacing a previous run. Every layer a run makes carries ``metadata[RUN_KEY]``: the
scan layer's ``unique_id`` and the model name. A new run of the same model on the same
scan replaces the layers of the previous one: a layer of the same name and type gets the
new data in place (removing a layer makes napari collect garbage on the GUI thread, a
long pause with large volumes), new kinds of layers are added (all or none), and layers
the new run no longer makes are removed last. Labels the user painted are never removed:
each labels layer also records ``metadata[DIGEST_KEY]``, a hash of the labels as
written; if the layer's data no longer match it, the layer is the user's work, it is
left in the viewer (and no longer managed by this widget, its run key removed), and the
new result is added beside it. Hashing compares the full data, so every edit counts
(brush, fill, erase, or a script writing into ``layer.data``), which an event listener
on painting alone would miss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import napari
import numpy as np
import pandas  # imported with the widget: importing it during a run stalls the GUI ~0.5 s
import torch
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_medattn.display.layers import layer_volume, volume_layer_data
from napari_medattn.errors import MedAttnError
from napari_medattn.inference.pipeline import Segmentation, segment
from napari_medattn.inference.sliding_window import attention_map_names
from napari_medattn.inference.tta import UNCERTAINTY_KINDS
from napari_medattn.inference.window_options import OutputRequest
from napari_medattn.metrics.statistics import class_statistics, write_statistics_csv
from napari_medattn.models.card import ModelCard
from napari_medattn.widgets.choices import on_layers_changed, set_items
from napari_medattn.widgets.host import warm_up_labels_display
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import (
    DERIVED_KEY,
    DIGEST_KEY,
    LABELS_OPACITY,
    RUN_KEY,
    class_colormap,
    heat_map_layer_data,
    scan_layers,
)
from napari_medattn.widgets.parts.pickers import (
    ModelPicker,
    device_choice,
    precision_choice,
    use_autocast,
)
from napari_medattn.widgets.tooltips import SEGMENT as TOOLTIPS
from napari_medattn.widgets.worker import Job, add_layers

NO_UNCERTAINTY = "none"
#: Statistics columns shown in the table (all of them go to the CSV).
TABLE_FIELDS = ("name", "voxels", "volume_ml", "mean", "sd", "min", "max", "unit",
                "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm",
                "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm")


def labels_digest(data: Any) -> str:
    """Hash (BLAKE2b hex) of a label array's values, shape and type, to detect edits."""
    array = np.ascontiguousarray(np.asarray(data))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.view(np.uint8).reshape(-1))
    return digest.hexdigest()


def segmentation_layer_data(result: Segmentation, card: ModelCard,
                            run: dict) -> list[tuple]:
    """Layer-data tuples of a segmentation: labels, then probability, uncertainty and
    attention heat maps, each on the scan's geometry and tagged with ``run`` and the
    output it shows (``metadata[RUN_KEY]["output"]``).

    Pure data (no napari objects), so it can be prepared in the worker thread.
    """
    data, kwargs, kind = volume_layer_data(result.labels, "labels")
    names = card.class_names
    # The class name of each label value: napari shows it in the status bar.
    kwargs.update(opacity=LABELS_OPACITY,
                  features=pandas.DataFrame({"index": np.arange(len(names)),
                                             "class": names}),
                  metadata={**kwargs["metadata"], RUN_KEY: {**run, "output": "labels"},
                            DIGEST_KEY: labels_digest(data), DERIVED_KEY: "segment"})
    layers = [(data, kwargs, kind)]
    # Probabilities and uncertainty live in [0, 1]; attention maps are scaled to their own
    # maximum so a map is visible whatever its range.
    heat_maps = [*((p, f"probability {c}", 1.0) for c, p in result.probabilities.items()),
                 *([(result.uncertainty, "uncertainty", 1.0)]
                   if result.uncertainty is not None else []),
                 *((a, f"attention {name}", None) for name, a in result.attention.items())]
    for volume, output, top in heat_maps:
        layers.append(heat_map_layer_data(volume, "segment",
                                          {RUN_KEY: {**run, "output": output}}, top=top))
    return layers


def _run_of(layer: Any) -> dict | None:
    """The run (scan id and model) that made ``layer``, or None for other layers."""
    tag = layer.metadata.get(RUN_KEY)
    return None if tag is None else {k: v for k, v in tag.items() if k != "output"}


def segment_details(module: torch.nn.Module, card: ModelCard) -> list[str]:
    """What the widget lists for a loaded model: its spatial attention maps (computed in
    the loading worker, which also warms up the labels display)."""
    warm_up_labels_display()
    return attention_map_names(module, card.patch_size, card.in_channels)


class SegmentWidget(JobWidget):
    """Run a segmentation model on a scan layer; show labels, heat maps and statistics.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 injects it).

    Attributes
    ----------
    job : Job or None
        The running (or last) job of this widget.
    statistics : list of dict
        Rows of the last run's statistics table (see
        :func:`~napari_medattn.metrics.statistics.class_statistics`).
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
        self.statistics: list[dict] = []

        self.image = QComboBox()
        self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"],
                                 describe=segment_details, open_button=True)
        self.device = device_choice()
        self.precision = precision_choice()
        self.tta = QCheckBox("Test-time augmentation (flips)")
        self.uncertainty = QComboBox()
        self.uncertainty.addItems([NO_UNCERTAINTY, *UNCERTAINTY_KINDS])
        self.probabilities = QListWidget()
        self.attention = QListWidget()
        for box in (self.probabilities, self.attention):
            box.setMaximumHeight(90)
        self.crop = QCheckBox("Crop to the body")
        self.min_component = QDoubleSpinBox()
        self.min_component.setRange(0.0, 1e7)
        self.min_component.setDecimals(1)
        self.min_component.setSuffix(" mm³")
        self.table = QTableWidget(0, len(TABLE_FIELDS))
        self.table.setHorizontalHeaderLabels([f.replace("_", " ") for f in TABLE_FIELDS])
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setEnabled(False)
        for name, widget in (("image", self.image), ("open_model", self.model.open_button),
                             ("device", self.device), ("precision", self.precision),
                             ("tta", self.tta), ("uncertainty", self.uncertainty),
                             ("probabilities", self.probabilities),
                             ("attention", self.attention), ("crop", self.crop),
                             ("min_component", self.min_component),
                             ("statistics", self.table), ("export", self.export_button)):
            widget.setToolTip(TOOLTIPS[name])

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Model", self.model.row())
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow(self.tta)
        form.addRow("Uncertainty", self.uncertainty)
        form.addRow("Probabilities", self.probabilities)
        form.addRow("Attention maps", self.attention)
        form.addRow(self.crop)
        form.addRow("Remove pieces under", self.min_component)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.jobs)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Statistics per class"))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.export_button)

        self.export_button.clicked.connect(self._export_clicked)
        self.model.changed.connect(self._model_changed)
        on_layers_changed(napari_viewer, self._refresh_images)
        self._refresh_images()
        self.model.refresh()

    # -- choices --------------------------------------------------------------------
    def _refresh_images(self, event: Any = None) -> None:
        set_items(self.image, [layer.name for layer in scan_layers(self.viewer)])
        self.jobs.refresh()

    def refresh_models(self) -> None:
        """List the built-in and user models (skipping broken ones with a notification)."""
        self.model.refresh()

    def add_model(self, path: str | Path) -> str:
        """Load a model from a folder or file (in the background) and select it; returns
        the name it is listed under (the folder's or file's name)."""
        return self.model.add(path)

    def ready(self) -> bool:
        return bool(self.image.currentText()) and self.model.loaded is not None

    def _model_changed(self) -> None:
        """Fill the class and attention lists of the chosen model (the attention maps are
        known once the network is loaded)."""
        held, entry = self.model.loaded, self.model.entry
        card = held.card if held is not None else getattr(entry, "card", None)
        self._fill_checklist(self.probabilities, card.class_names if card else [])
        self._fill_checklist(self.attention, self.model.details or [])

    @staticmethod
    def _fill_checklist(box: QListWidget, names: Sequence[str]) -> None:
        box.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            box.addItem(item)

    @staticmethod
    def _checked(box: QListWidget) -> list[int]:
        return [row for row in range(box.count())
                if box.item(row).checkState() == Qt.CheckState.Checked]

    # -- running --------------------------------------------------------------------
    def run(self) -> Job | None:
        """Segment the chosen image with the chosen model in the background.

        Returns the job, or None when the choices are not valid (a notification says
        why).
        """
        try:
            layer = self.viewer.layers[self.image.currentText()]
        except KeyError:
            show_error("Open a scan first: there is no image layer to segment.")
            return None
        held = self.model.loaded
        if held is None:
            show_error("Choose a model and wait until it is loaded.")
            return None
        module, card = held.module, held.card
        try:
            volume = layer_volume(layer.data, layer.metadata, name=layer.name)
        except MedAttnError as error:
            show_error(str(error))
            return None
        run = {"image": layer.unique_id, "model": card.name}
        options = dict(
            device=self.device.currentText(), use_autocast=use_autocast(self.precision),
            outputs=OutputRequest(
                tta=self.tta.isChecked(),
                uncertainty=(None if self.uncertainty.currentText() == NO_UNCERTAINTY
                             else self.uncertainty.currentText()),
                keep_probabilities=self._checked(self.probabilities),
                attention_maps=[self.attention.item(r).text()
                                for r in self._checked(self.attention)]),
            crop_to_body=self.crop.isChecked(),
            min_component_mm3=self.min_component.value() or None)
        self.status.setText(f"Segmenting {layer.name} with {card.name}...")

        def work(progress, cancel):
            warm_up_labels_display()
            result = segment(volume, module, card, progress=progress, cancel=cancel, **options)
            rows = class_statistics(result.labels, volume)
            return result, rows, segmentation_layer_data(result, card, run)

        return self.jobs.start(work, f"Segment {layer.name} ({card.name})",
                               lambda outcome: self._show_result(card, run, *outcome),
                               model=held)

    def _show_result(self, card: ModelCard, run: dict, result: Segmentation,
                     rows: list[dict], layer_data: list[tuple]) -> None:
        layer_data[0][1]["colormap"] = class_colormap(card)
        previous = [layer for layer in self.viewer.layers if _run_of(layer) == run]
        edited = [layer for layer in previous if isinstance(layer, Labels)
                  and labels_digest(layer.data) != layer.metadata.get(DIGEST_KEY)]
        for layer in edited:
            # The user's work: keep it as it is, and stop treating it as a run result.
            layer.metadata.pop(RUN_KEY, None)
            layer.metadata.pop(DIGEST_KEY, None)
        # A previous layer showing the same output is updated in place (cheaper for the
        # GUI than removing it and adding another, and it keeps the user's display
        # settings); the others are added, all or none, before anything is removed.
        reusable = {layer.metadata[RUN_KEY]["output"]: layer for layer in previous
                    if layer not in edited}
        updates, additions = [], []
        for data, kwargs, kind in layer_data:
            old = reusable.pop(kwargs["metadata"][RUN_KEY]["output"], None)
            (updates if old is not None else additions).append((old, data, kwargs, kind))
        add_layers(self.viewer, [(data, kwargs, kind) for _old, data, kwargs, kind in additions],
                   widget=self)
        for old, data, kwargs, _kind in updates:
            old.data = data
            old.metadata = kwargs["metadata"]
            if isinstance(old, Labels):
                old.features = kwargs["features"]
            else:
                old.contrast_limits = kwargs["contrast_limits"]
        for layer in reusable.values():  # asked for last time, not this time
            self.viewer.layers.remove(layer)
        self.statistics = rows
        self._fill_table(rows)
        runtime = result.provenance["runtime_s"]
        notes = " ".join(result.notes)
        kept = (f" Kept your edited labels {', '.join(repr(l.name) for l in edited)}."
                if edited else "")
        self.status.setText(f"{card.name} on {result.provenance['device']} "
                            f"({result.provenance['precision']}): "
                            f"{runtime:.1f} s.{kept} {notes}".strip())

    # -- statistics -----------------------------------------------------------------
    def _fill_table(self, rows: list[dict]) -> None:
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, field in enumerate(TABLE_FIELDS):
                value = row[field]
                text = f"{value:.6g}" if isinstance(value, float) else str(value)
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.export_button.setEnabled(bool(rows))

    def export_statistics(self, path: str | Path) -> Path | None:
        """Write the statistics of the last run to ``path`` as CSV (all of
        :data:`~napari_medattn.metrics.statistics.FIELDS`); None on failure, with a
        notification."""
        try:
            return write_statistics_csv(self.statistics, path)
        except MedAttnError as error:
            show_error(str(error))
            return None

    def _export_clicked(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(self, "Save statistics", "statistics.csv",
                                                    "CSV (*.csv)")
        if path:
            self.export_statistics(path)

