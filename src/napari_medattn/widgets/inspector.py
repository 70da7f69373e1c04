"""The "Attention inspector" widget: what a model looks at, and whether the map is telling.

Three kinds of output, all as layers on the scan's exact geometry (through
:func:`~napari_medattn.display.layers.volume_layer_data`):

* **Maps** from :func:`napari_medattn.explain.explain` (Grad-CAM family, attention gates,
  CBAM, channel attention, rollout, occlusion), run in the background with progress and
  Cancel through :func:`~napari_medattn.widgets.worker.start_job`, like Segment. Each map's
  faithfulness numbers (deletion and insertion AUC, stability, the verdict) are listed
  beside it; channel attention also draws a bar chart of the strongest channels.
* **Query maps** (method ``query``): a :class:`~napari_medattn.explain.query.QueryExplorer`
  is prepared in the background once; then, with "Click to query" on, a click on the
  scan shows what that voxel attends to in the chosen block (and for DSSA the regions its
  region routed to, outlined, and the keys it kept). A click costs one attention row (tens
  to a few hundred ms), so it runs on the GUI thread and updates the layers in place.
* **Uncertainty** from the segmentation engine (entropy, or the variance over flips), or
  a Segment run's uncertainty layer, with the axial slices where it is highest
  (:func:`~napari_medattn.explain.uncertainty.uncertain_slices`); clicking one moves the
  viewer there.

Every layer the inspector makes carries ``metadata[INSPECT_KEY]`` (scan layer id, model,
output); a new result of the same name replaces the old one's data in place.
"""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
import torch
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume, volume_layer_data
from napari_medattn.errors import MedAttnError
from napari_medattn.explain import (
    ExplanationMap,
    applicable_methods,
    explain,
    layers_for,
)
from napari_medattn.explain.cam import CAM_METHODS
from napari_medattn.explain.query import QueryExplorer, QueryResult, token_blocks
from napari_medattn.explain.uncertainty import SliceScore, uncertain_slices
from napari_medattn.inference.pipeline import segment
from napari_medattn.inference.tta import UNCERTAINTY_KINDS
from napari_medattn.io.volume import Volume
from napari_medattn.models.registry import DEFAULT_MODEL, list_models, load_model
from napari_medattn.widgets.choices import labels_on_scan_grid, set_items, set_models
from napari_medattn.widgets.radiology_view import install_radiology_view
from napari_medattn.widgets.parts import RUN_KEY, available_devices
from napari_medattn.widgets.tooltips import INSPECTOR as TOOLTIPS
from napari_medattn.widgets.tooltips import model_card_tooltip
from napari_medattn.widgets.worker import (
    Job,
    add_layers,
    start_job,
)
from napari_medattn.widgets.host import freeze_startup_objects

#: ``layer.metadata`` key of the inspector's layers: ``{"image": <scan layer unique_id>,
#: "model": <name>, "output": <what it shows>, "top": <largest magnitude>}``.
INSPECT_KEY = "medattn_inspector"
#: Method name of click-to-query token attention (beside :data:`explain.METHODS`).
QUERY = "query"
#: ``metadata[INSPECT_KEY]["output"]`` of the click-to-query layers.
QUERY_OUTPUTS = ("query attention", "query routed regions", "query kept tokens")
POINT_OUTPUT = "query point"
DEFAULT_LAYER = "(default)"
NO_RUN = "(none)"
#: The region choice that explains the class wherever the model predicts it.
WHOLE_SCAN = "(where the class is predicted)"
BLENDINGS = ("additive", "translucent")
HEAT_OPACITY = 0.6
#: Bars in the channel-attention chart.
TOP_CHANNELS = 12


def heat_layer_data(volume: Volume, tag: dict, signed: bool = False) -> tuple:
    """Layer-data tuple of a map: heat colormap (signed maps: blue-white-red around 0),
    additive blending, limits from 0 (or -max) to the map's largest magnitude.

    Pure data, so it can be prepared in a worker thread.
    """
    data, kwargs, kind = volume_layer_data(volume, "image")
    top = float(np.max(np.abs(data))) if data.size else 0.0
    top = top if top > 0 else 1.0
    kwargs.update(colormap="bwr" if signed else "inferno", blending="additive",
                  opacity=HEAT_OPACITY, contrast_limits=(-top if signed else 0.0, top),
                  metadata={**kwargs["metadata"], INSPECT_KEY: {**tag, "top": top,
                                                                "signed": signed}})
    return data, kwargs, kind


def labels_layer_data(volume: Volume, tag: dict, opacity: float = 0.5) -> tuple:
    """Layer-data tuple of a label map made by the inspector (routed regions, kept keys)."""
    data, kwargs, kind = volume_layer_data(volume, "labels")
    kwargs.update(opacity=opacity,
                  metadata={**kwargs["metadata"], INSPECT_KEY: tag})
    return data, kwargs, kind


def faithfulness_text(explanation: ExplanationMap) -> str:
    """One line per map: its name and, when computed, its numbers and verdict."""
    name = explanation.volume.name
    scores = explanation.faithfulness
    if scores is None:
        return f"{name}: faithfulness not computed"
    verdict = "telling" if scores.telling else "NOT TELLING"
    return (f"{name}: deletion AUC {scores.deletion_auc:.3f}, insertion AUC "
            f"{scores.insertion_auc:.3f}, stability r {scores.stability:.2f} - {verdict}. "
            f"{scores.reason}")


class InspectorWidget(QWidget):
    """Explanation maps, click-to-query attention and uncertainty for a scan and a model.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 injects it).

    Attributes
    ----------
    job : Job or None
        The running (or last) job.
    explorer : QueryExplorer or None
        Prepared for the current query scan and model, once "Run" ran with ``query``.
    maps : list of ExplanationMap
        The last explanation run's maps.
    slices : list of SliceScore
        The listed uncertain slices.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        install_radiology_view(napari_viewer)
        freeze_startup_objects()
        self.job: Job | None = None
        self.explorer: QueryExplorer | None = None
        self._explorer_for: tuple[Any, str] | None = None  # (scan layer, model name)
        self.maps: list[ExplanationMap] = []
        self.slices: list[SliceScore] = []
        self._entries = {}
        self._load_when_idle = False
        # name -> (module, card, {method: layers})
        self._models: dict[str, tuple[torch.nn.Module, Any, dict[str, list[str]]]] = {}

        self.image = QComboBox()
        self.segment_run = QComboBox()
        self.model = QComboBox()
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.method = QComboBox()
        self.layer = QComboBox()
        self.head = QSpinBox()
        self.head.setMinimum(-1)
        self.head.setSpecialValueText("mean of heads")
        self.target = QComboBox()
        self.region = QComboBox()
        self.faithfulness = QCheckBox("Faithfulness numbers (slower)")
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.query_mode = QCheckBox("Click to query")
        self.blending = QComboBox()
        self.blending.addItems(BLENDINGS)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(HEAT_OPACITY * 100))
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 99)
        self.results = QListWidget()
        self.results.setWordWrap(True)
        self.results.setMaximumHeight(130)
        self.chart = FigureCanvasQTAgg(Figure(figsize=(3.2, 2.2), tight_layout=True))
        self.chart.setMinimumHeight(160)
        self.chart.hide()
        self.uncertainty_kind = QComboBox()
        self.uncertainty_kind.addItems(UNCERTAINTY_KINDS)
        self.uncertainty_button = QPushButton("Compute uncertainty")
        self.uncertainty_source = QComboBox()
        self.slice_list = QListWidget()
        self.slice_list.setMaximumHeight(130)
        for name, widget in (
                ("image", self.image), ("segment_run", self.segment_run),
                ("model", self.model), ("device", self.device), ("method", self.method),
                ("layer", self.layer), ("head", self.head), ("target", self.target),
                ("region", self.region),
                ("faithfulness", self.faithfulness), ("run", self.run_button),
                ("cancel", self.cancel_button), ("query_mode", self.query_mode),
                ("blending", self.blending), ("opacity", self.opacity),
                ("threshold", self.threshold), ("results", self.results),
                ("chart", self.chart), ("uncertainty_kind", self.uncertainty_kind),
                ("uncertainty_button", self.uncertainty_button),
                ("uncertainty_source", self.uncertainty_source),
                ("slices", self.slice_list)):
            widget.setToolTip(TOOLTIPS[name])

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Segment run", self.segment_run)
        form.addRow("Model", self.model)
        form.addRow("Device", self.device)
        form.addRow("Source", self.method)
        form.addRow("Layer / block", self.layer)
        form.addRow("Head", self.head)
        form.addRow("Class", self.target)
        form.addRow("Region", self.region)
        form.addRow(self.faithfulness)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        display = QFormLayout()
        display.addRow("Blending", self.blending)
        display.addRow("Opacity", self.opacity)
        display.addRow("Threshold", self.threshold)
        display_box = QGroupBox("Map display")
        display_box.setLayout(display)
        uncertainty = QFormLayout()
        uncertainty.addRow("Kind", self.uncertainty_kind)
        uncertainty.addRow(self.uncertainty_button)
        uncertainty.addRow("Map", self.uncertainty_source)
        uncertainty.addRow(self.slice_list)
        uncertainty_box = QGroupBox("Uncertainty: most uncertain axial slices")
        uncertainty_box.setLayout(uncertainty)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.query_mode)
        layout.addWidget(self.status)
        layout.addWidget(display_box)
        layout.addWidget(QLabel("Maps and how telling they are"))
        layout.addWidget(self.results)
        layout.addWidget(self.chart)
        layout.addWidget(uncertainty_box)
        layout.addStretch(1)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.model.currentIndexChanged.connect(self._model_changed)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.layer.currentIndexChanged.connect(self._layer_changed)
        self.segment_run.currentIndexChanged.connect(self._segment_run_chosen)
        self.image.currentIndexChanged.connect(self._refresh_regions)
        self.blending.currentIndexChanged.connect(self._apply_display)
        self.opacity.valueChanged.connect(self._apply_display)
        self.threshold.valueChanged.connect(self._apply_display)
        self.results.currentRowChanged.connect(self._draw_chart)
        self.uncertainty_button.clicked.connect(self.compute_uncertainty)
        self.uncertainty_source.currentIndexChanged.connect(self._list_slices)
        self.slice_list.itemClicked.connect(self._slice_clicked)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        # The viewer outlives the widget: its click callback goes when the widget does.
        callbacks, callback = napari_viewer.mouse_drag_callbacks, self._on_click
        callbacks.append(callback)
        self.destroyed.connect(lambda *_: callback in callbacks and callbacks.remove(callback))
        self._refresh_layers()
        self.refresh_models()

    # -- choices --------------------------------------------------------------------
    def _refresh_layers(self, event: Any = None) -> None:
        """Fill the scan, Segment-run and uncertainty lists from the viewer's layers."""
        scans = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and not layer.rgb and GEOMETRY_KEY in layer.metadata
                 and RUN_KEY not in layer.metadata and INSPECT_KEY not in layer.metadata]
        runs = {}
        for layer in self.viewer.layers:
            tag = layer.metadata.get(RUN_KEY)
            scan = self._layer_by_id(tag["image"]) if tag else None
            if scan is not None:
                runs[f"{tag['model']} on {scan.name}"] = (scan.name, tag["model"])
        self._segment_runs = runs
        uncertainty = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)
                       and "uncertainty" in str((layer.metadata.get(RUN_KEY)
                                                 or layer.metadata.get(INSPECT_KEY)
                                                 or {}).get("output", ""))]
        for box, names, extra in ((self.image, scans, []), (self.segment_run, list(runs),
                                                            [NO_RUN]),
                                  (self.uncertainty_source, uncertainty, [])):
            set_items(box, extra + names)
        if self.uncertainty_source.currentText() and not self.slices:
            self._list_slices()
        self._refresh_regions()

    def _refresh_regions(self, index: int = -1) -> None:
        """Labels layers on the chosen scan's grid (not the inspector's own), for a region."""
        names = labels_on_scan_grid(self.viewer, self.image.currentText(), skip_key=INSPECT_KEY)
        set_items(self.region, [WHOLE_SCAN, *names], fallback=WHOLE_SCAN)

    def _layer_by_id(self, unique_id: Any) -> Any:
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id),
                    None)

    def _segment_run_chosen(self, index: int = -1) -> None:
        """A previous Segment run sets the scan and the model it used."""
        chosen = self._segment_runs.get(self.segment_run.currentText())
        if chosen is not None:
            self.image.setCurrentText(chosen[0])
            if chosen[1] in self._entries:
                self.model.setCurrentText(chosen[1])

    def refresh_models(self) -> None:
        """List the built-in and user models (skipping broken ones with a notification)."""
        problems: list[str] = []
        entries = list_models(problems)
        for problem in problems:
            show_info(problem)
        self._entries = {entry.name: entry for entry in entries}
        set_models(self.model, self._entries, fallback=DEFAULT_MODEL)
        self._model_changed()

    def _model_changed(self, index: int = -1) -> None:
        name = self.model.currentText()
        entry = self._entries.get(name)
        self.model.setToolTip(model_card_tooltip(entry.card) if entry else TOOLTIPS["model"])
        self.method.clear()
        self.target.clear()
        if entry is None:
            self._update_buttons()
            return
        if name in self._models:
            self._show_model(name, *self._models[name])
            return
        if self.job is not None and self.job.running:
            self._load_when_idle = True  # one job at a time: loaded when this one ends
            return

        def load(progress, cancel):
            module, card = load_model(entry.path)
            methods = {m: layers_for(module, m) for m in applicable_methods(module)}
            blocks = token_blocks(module)
            if blocks:
                methods[QUERY] = blocks
            return module, card, methods

        self._start(load, f"Loading model {name}", lambda loaded: self._show_model(name, *loaded))

    def _show_model(self, name: str, module: torch.nn.Module, card: Any,
                    methods: dict[str, list[str]]) -> None:
        self._models[name] = (module, card, methods)
        if name != self.model.currentText():
            return
        self.model.setToolTip(model_card_tooltip(card))
        self.method.blockSignals(True)
        self.method.clear()
        self.method.addItems(list(methods))
        self.method.blockSignals(False)
        self.target.clear()
        self.target.addItems(card.class_names)
        self.target.setCurrentIndex(min(1, len(card.class_names) - 1))
        self._method_changed()

    def _method_changed(self, index: int = -1) -> None:
        method = self.method.currentText()
        loaded = self._models.get(self.model.currentText())
        layers = loaded[2].get(method, []) if loaded else []
        self.layer.blockSignals(True)
        self.layer.clear()
        self.layer.addItems(layers if method == QUERY else [DEFAULT_LAYER, *layers])
        self.layer.blockSignals(False)
        self.query_mode.setEnabled(method == QUERY)
        if method != QUERY:
            self.query_mode.setChecked(False)  # clicks query only while query is chosen
        # Class-free maps (as explain() names them): native attention, rollout, queries.
        self.target.setEnabled(method not in (QUERY, "gate", "cbam", "channels", "rollout"))
        self.region.setEnabled(method in (*CAM_METHODS, "rollout", "occlusion"))
        self.faithfulness.setEnabled(method != QUERY)
        self._layer_changed()

    def _layer_changed(self, index: int = -1) -> None:
        """Heads apply to query blocks; the head range follows the chosen block."""
        heads = 0
        if self.method.currentText() == QUERY and self.model.currentText() in self._models:
            module = self._models[self.model.currentText()][0]
            block = dict(module.named_modules()).get(self.layer.currentText())
            heads = int(getattr(block, "num_heads", 0))
        self.head.setMaximum(max(heads - 1, -1))
        self.head.setEnabled(heads > 1)
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.job is not None and self.job.running
        ready = self.model.currentText() in self._models and bool(self.method.currentText())
        self.run_button.setEnabled(not busy and ready)
        self.uncertainty_button.setEnabled(not busy and ready)
        self.cancel_button.setEnabled(busy)

    # -- running --------------------------------------------------------------------
    def _start(self, function, description: str, on_result) -> Job:
        self.job = start_job(function, description=description, on_result=on_result,
                             on_finished=self._job_finished)
        self._update_buttons()
        return self.job

    def _job_finished(self, job: Job) -> None:
        self._update_buttons()
        if self._load_when_idle and self.model.currentText() not in self._models:
            self._load_when_idle = False
            self._model_changed()
        self._load_when_idle = False

    def _scan(self) -> tuple[Any, Volume] | None:
        try:
            layer = self.viewer.layers[self.image.currentText()]
            return layer, layer_volume(layer.data, layer.metadata, name=layer.name)
        except KeyError:
            show_error("Open a scan first: there is no image layer to inspect.")
        except MedAttnError as error:
            show_error(str(error))
        return None

    def cancel(self) -> None:
        """Stop the running job at its next check; it adds no layer."""
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling...")

    def run(self) -> Job | None:
        """Compute the chosen maps in the background (or prepare click-to-query).

        Returns the job, or None when the choices are not valid (a notification says why).
        """
        scan = self._scan()
        if scan is None:
            return None
        layer, volume = scan
        module, card, _methods = self._models[self.model.currentText()]
        method = self.method.currentText()
        tag = {"image": layer.unique_id, "model": card.name}
        device = self.device.currentText()
        if method == QUERY:
            def prepare(progress, cancel):
                return QueryExplorer(volume, module, card, device=device, progress=progress,
                                     cancel=cancel)

            self.status.setText(f"Preparing click-to-query of {card.name} on {layer.name}...")
            return self._start(prepare, f"Prepare queries ({card.name})",
                               lambda explorer: self._explorer_ready(explorer, layer, tag))
        chosen = self.layer.currentText()
        options = {"device": device, "layer": None if chosen == DEFAULT_LAYER else chosen,
                   "faithfulness": self.faithfulness.isChecked()}
        if self.target.isEnabled():
            options["target_class"] = self.target.currentIndex()
        if self.region.isEnabled() and self.region.currentText() != WHOLE_SCAN:
            labels = self.viewer.layers[self.region.currentText()]
            # The labels lie on the scan's grid (same shape): the scan's geometry maps
            # them back to the source order that explain() expects.
            options["region"] = layer_volume(np.asarray(labels.data) != 0, layer.metadata,
                                             modality="SEG").data

        def work(progress, cancel):
            maps = explain(volume, module, card, method, progress=progress, cancel=cancel,
                           **options)
            return maps, [heat_layer_data(m.volume, {**tag, "output": m.volume.name},
                                          signed=m.method == "occlusion") for m in maps]

        self.status.setText(f"Computing {method} of {card.name} on {layer.name}...")
        return self._start(work, f"{method} ({card.name} on {layer.name})",
                           lambda outcome: self._show_maps(*outcome))

    def _put_layers(self, layer_data: list[tuple]) -> list:
        """Add the layers, or put the new data (and name) into the inspector's layer that
        shows the same output of the same scan, in place."""
        existing = {(tag["image"], tag["output"]): layer for layer in self.viewer.layers
                    if (tag := layer.metadata.get(INSPECT_KEY)) is not None}
        additions, kept = [], []
        for data, kwargs, kind in layer_data:
            tag = kwargs["metadata"][INSPECT_KEY]
            old = existing.get((tag["image"], tag["output"]))
            if old is not None and type(old).__name__.lower() == kind:
                old.data = data
                old.metadata = kwargs["metadata"]
                old.name = kwargs["name"]
                if kind == "image":
                    old.contrast_limits = kwargs["contrast_limits"]
                kept.append(old)
            else:
                additions.append((data, kwargs, kind))
        return kept + add_layers(self.viewer, additions, widget=self)

    def _show_maps(self, maps: list[ExplanationMap], layer_data: list[tuple]) -> None:
        self.maps = maps
        self._put_layers(layer_data)
        self._apply_display()
        self.results.clear()
        for explanation in maps:
            item = QListWidgetItem(faithfulness_text(explanation))
            scores = explanation.faithfulness
            if scores is not None and not scores.telling:
                item.setForeground(Qt.GlobalColor.red)
            self.results.addItem(item)
        self.results.setCurrentRow(0)
        self._draw_chart()
        self.status.setText(f"{len(maps)} map(s) added.")

    def _draw_chart(self, row: int = -1) -> None:
        """Bar chart of the strongest channels of the selected channel-attention map."""
        row = self.results.currentRow() if row < 0 else row
        weights = self.maps[row].channel_weights if 0 <= row < len(self.maps) else None
        if weights is None:
            self.chart.hide()
            return
        top = np.argsort(-weights, kind="stable")[:TOP_CHANNELS]
        figure = self.chart.figure
        figure.clear()
        axes = figure.add_subplot()
        axes.barh(range(len(top)), weights[top], color="#d95f02")
        axes.set_yticks(range(len(top)), [str(c) for c in top])
        axes.invert_yaxis()
        axes.set_xlabel("channel weight")
        axes.set_ylabel("channel")
        axes.set_title(f"{self.maps[row].layer}: strongest channels", fontsize=9)
        self.chart.draw_idle()
        self.chart.show()

    def _apply_display(self, value: Any = None) -> None:
        """Blending, opacity and threshold (lower contrast limit, % of the map's maximum)
        for every heat map of the inspector."""
        for layer in self.viewer.layers:
            tag = layer.metadata.get(INSPECT_KEY)
            if not isinstance(layer, Image) or tag is None or "top" not in tag:
                continue
            layer.blending = self.blending.currentText()
            layer.opacity = self.opacity.value() / 100
            top = tag["top"]
            low = top * self.threshold.value() / 100
            layer.contrast_limits = (-top if tag["signed"] else low, top)

    # -- click to query ---------------------------------------------------------------
    def _explorer_ready(self, explorer: QueryExplorer, layer: Any, tag: dict) -> None:
        self.explorer = explorer
        self._explorer_for = (layer, tag)
        self.query_mode.setChecked(True)
        self.status.setText("Click a voxel of the scan to see what it attends to.")
        centre = (explorer.volume.affine @ np.append(
            (np.asarray(explorer.volume.spatial_shape) - 1) / 2, 1.0))[:3]
        self.query_point(centre)

    def _on_click(self, viewer: napari.Viewer, event: Any) -> None:
        if event.type == "mouse_press" and self.query_mode.isChecked():
            self.query_world(event.position)

    def query_world(self, position) -> QueryResult | None:
        """Query the voxel under a viewer (world) position: through the scan layer's
        transform to its canonical index, then its exact affine to patient mm."""
        if self.explorer is None or self._explorer_for is None:
            return None
        layer = self._explorer_for[0]
        if layer not in self.viewer.layers:
            return None
        index = np.asarray(layer.world_to_data(position), dtype=np.float64)[-3:]
        view = layer.metadata[GEOMETRY_KEY]
        return self.query_point((view.affine @ np.append(index, 1.0))[:3])

    def _world_of(self, point_mm) -> np.ndarray:
        """Viewer (world) position of a patient point, through the scan layer's transform."""
        layer = self._explorer_for[0]
        view = layer.metadata[GEOMETRY_KEY]
        index = np.linalg.solve(view.affine, np.append(np.asarray(point_mm, float), 1.0))[:3]
        return np.asarray(layer.data_to_world(index))[-3:]

    def query_point(self, point_mm) -> QueryResult | None:
        """Show what the voxel at ``point_mm`` (LPS mm) attends to in the chosen block."""
        if self.explorer is None or self._explorer_for is None:
            return None
        block = self.layer.currentText()
        head = self.head.value() if self.head.isEnabled() and self.head.value() >= 0 else None
        try:
            result = self.explorer.query(point_mm, block, head)
        except MedAttnError as error:
            self.status.setText(str(error))
            return None
        tag = self._explorer_for[1]
        # One layer per output, whatever the block or head: every click updates it in place.
        layers = [heat_layer_data(result.attention, {**tag, "output": QUERY_OUTPUTS[0]})]
        if result.regions is not None:
            layers.append(labels_layer_data(result.regions, {**tag, "output": QUERY_OUTPUTS[1]},
                                            opacity=0.9))
        if result.kept_tokens is not None:
            layers.append(labels_layer_data(result.kept_tokens,
                                            {**tag, "output": QUERY_OUTPUTS[2]}))
        # The clicked voxel, as a marker in world coordinates.
        scan = self._explorer_for[0]
        layers.append((self._world_of(point_mm)[None], {
            "name": POINT_OUTPUT, "size": 6, "symbol": "cross", "face_color": "cyan",
            "border_width": 0, "units": scan.units[-3:], "axis_labels": scan.axis_labels[-3:],
            "metadata": {INSPECT_KEY: {**tag, "output": POINT_OUTPUT}}}, "points"))
        for layer in self._put_layers(layers):
            if layer.metadata[INSPECT_KEY]["output"] == QUERY_OUTPUTS[1]:
                layer.contour = 2  # outlined, so the scan and the map show through
        self._apply_display()
        weights = result.attention.data
        peak = np.unravel_index(int(np.argmax(weights)), weights.shape)
        peak_mm = (result.attention.affine @ np.append(peak, 1.0))[:3]
        self.status.setText(
            f"Voxel ({', '.join(f'{p:.1f}' for p in point_mm)}) mm in {block}: peak weight "
            f"{weights[peak]:.3g} at ({', '.join(f'{p:.1f}' for p in peak_mm)}) mm "
            f"(LPS), slice z = {peak_mm[2]:.1f} mm.")
        return result

    # -- uncertainty ------------------------------------------------------------------
    def compute_uncertainty(self) -> Job | None:
        """Segment with the chosen model asking for an uncertainty map (background job)."""
        scan = self._scan()
        if scan is None:
            return None
        layer, volume = scan
        module, card, _methods = self._models[self.model.currentText()]
        kind = self.uncertainty_kind.currentText()
        tag = {"image": layer.unique_id, "model": card.name, "output": f"uncertainty {kind}"}
        device = self.device.currentText()

        def work(progress, cancel):
            # Variance is taken across the flips of test-time augmentation.
            result = segment(volume, module, card, device=device, tta=kind == "variance",
                             uncertainty=kind, progress=progress, cancel=cancel)
            result.uncertainty.meta["name"] = f"{layer.name} {card.name} uncertainty ({kind})"
            return heat_layer_data(result.uncertainty, tag)

        def show(layer_data: tuple) -> None:
            (added,) = self._put_layers([layer_data])
            self.uncertainty_source.setCurrentText(added.name)
            self._list_slices()

        return self._start(work, f"Uncertainty ({card.name} on {layer.name})", show)

    def _list_slices(self, index: int = -1) -> None:
        self.slice_list.clear()
        self.slices = []
        name = self.uncertainty_source.currentText()
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        try:
            self.slices = uncertain_slices(layer_volume(layer.data, layer.metadata))
        except MedAttnError as error:
            self.status.setText(str(error))
            return
        for entry in self.slices:
            self.slice_list.addItem(f"z = {entry.z_mm:.1f} mm (slice {entry.index}): "
                                    f"mean {entry.score:.3f}")

    def _slice_clicked(self, item: QListWidgetItem) -> None:
        self.jump_to_slice(self.slice_list.row(item))

    def jump_to_slice(self, row: int) -> None:
        """Move the viewer to the ``row``-th listed slice (the first spatial axis)."""
        layer = self.viewer.layers[self.uncertainty_source.currentText()]
        position = layer.data_to_world((*(0,) * (layer.ndim - 3), self.slices[row].index, 0, 0))
        axis = self.viewer.dims.ndim - 3
        self.viewer.dims.set_point(axis, float(position[-3]))
