"""The "Attention inspector" widget: what a model looks at, and whether the map is telling.

Assembled from the shared parts (:mod:`~napari_medattn.widgets.parts`: scan, model and
device choices, Run/Cancel) and three panels, each in its own module:

* **Explanations** (:mod:`~napari_medattn.widgets.inspector_maps`): maps from
  :func:`napari_medattn.explain.explain` with their faithfulness numbers, a channel chart,
  and the display of every inspector map.
* **Click to query** (:mod:`~napari_medattn.widgets.inspector_query`): the source
  ``query`` prepares the model once; then a click on the scan shows what that voxel
  attends to in the chosen block.
* **Uncertainty** (:mod:`~napari_medattn.widgets.inspector_uncertainty`): an uncertainty
  map and its most uncertain axial slices.

All outputs are layers on the scan's exact geometry. Every layer the inspector makes
carries ``metadata[INSPECT_KEY]`` (scan layer id, model, output); a new result of the same
output replaces the old one's data in place.
"""

from __future__ import annotations

from typing import Any

import napari
import torch
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QFormLayout, QSpinBox, QVBoxLayout

from napari_medattn.display.layers import layer_volume
from napari_medattn.errors import MedAttnError
from napari_medattn.explain import applicable_methods, layers_for
from napari_medattn.explain.query import token_blocks
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard
from napari_medattn.widgets.choices import on_layers_changed, set_items
from napari_medattn.widgets.inspector_maps import DEFAULT_LAYER, ExplanationsPanel
from napari_medattn.widgets.inspector_query import QUERY, QUERY_OUTPUTS, QueryPanel
from napari_medattn.widgets.inspector_uncertainty import UncertaintyPanel
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import INSPECT_KEY, RUN_KEY, scan_layers
from napari_medattn.widgets.parts.pickers import ModelPicker, device_choice
from napari_medattn.widgets.tooltips import INSPECTOR as TOOLTIPS
from napari_medattn.widgets.worker import Job, add_layers

__all__ = ["InspectorWidget", "INSPECT_KEY", "QUERY", "QUERY_OUTPUTS"]

NO_RUN = "(none)"


def inspector_details(module: torch.nn.Module, card: ModelCard) -> dict[str, list[str]]:
    """What the inspector offers for a loaded model: ``{method: layers or blocks}``
    (computed in the loading worker)."""
    methods = {m: layers_for(module, m) for m in applicable_methods(module)}
    blocks = token_blocks(module)
    if blocks:
        methods[QUERY] = blocks
    return methods


class InspectorWidget(JobWidget):
    """Explanation maps, click-to-query attention and uncertainty for a scan and a model.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 injects it).

    Attributes
    ----------
    explanations : ExplanationsPanel
    queries : QueryPanel
    uncertainty : UncertaintyPanel
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
        self._segment_runs: dict[str, tuple[str, str]] = {}
        self.image = QComboBox()
        self.segment_run = QComboBox()
        self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"],
                                 describe=inspector_details, open_button=True)
        self.device = device_choice()
        self.method = QComboBox()
        self.layer = QComboBox()
        self.head = QSpinBox()
        self.head.setMinimum(-1)
        self.head.setSpecialValueText("mean of heads")
        for name, widget in (("image", self.image), ("segment_run", self.segment_run),
                             ("open_model", self.model.open_button),
                             ("device", self.device), ("method", self.method),
                             ("layer", self.layer), ("head", self.head)):
            widget.setToolTip(TOOLTIPS[name])
        self.explanations = ExplanationsPanel(self)
        self.queries = QueryPanel(self)
        self.uncertainty = UncertaintyPanel(self)

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Segment run", self.segment_run)
        form.addRow("Model", self.model.row())
        form.addRow("Device", self.device)
        form.addRow("Source", self.method)
        form.addRow("Layer / block", self.layer)
        form.addRow("Head", self.head)
        for label, widget in self.explanations.form_rows:
            form.addRow(label, widget) if label else form.addRow(widget)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.jobs)
        layout.addWidget(self.queries)
        layout.addWidget(self.status)
        layout.addWidget(self.explanations)
        layout.addWidget(self.uncertainty)
        layout.addStretch(1)

        self.model.changed.connect(self._model_changed)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.layer.currentIndexChanged.connect(self._layer_changed)
        self.segment_run.currentIndexChanged.connect(self._segment_run_chosen)
        self.image.currentIndexChanged.connect(self._refresh_regions)
        on_layers_changed(napari_viewer, self._refresh_layers)
        self._refresh_layers()
        self.model.refresh()

    # -- choices --------------------------------------------------------------------
    def _refresh_layers(self, event: Any = None) -> None:
        """Fill the scan, Segment-run and uncertainty lists from the viewer's layers."""
        runs = {}
        for layer in self.viewer.layers:
            tag = layer.metadata.get(RUN_KEY)
            scan = self._layer_by_id(tag["image"]) if tag else None
            if scan is not None:
                runs[f"{tag['model']} on {scan.name}"] = (scan.name, tag["model"])
        self._segment_runs = runs
        set_items(self.image, [layer.name for layer in scan_layers(self.viewer)])
        set_items(self.segment_run, [NO_RUN, *runs])
        self.uncertainty.refresh()
        self._refresh_regions()

    def _refresh_regions(self, index: int = -1) -> None:
        self.explanations.refresh_regions(self.image.currentText())
        self.jobs.refresh()

    def _layer_by_id(self, unique_id: Any) -> Any:
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id),
                    None)

    def _segment_run_chosen(self, index: int = -1) -> None:
        """A previous Segment run sets the scan and the model it used."""
        chosen = self._segment_runs.get(self.segment_run.currentText())
        if chosen is not None:
            self.image.setCurrentText(chosen[0])
            self.model.select(chosen[1])

    def refresh_models(self) -> None:
        """List the built-in and user models (skipping broken ones with a notification)."""
        self.model.refresh()

    def _model_changed(self) -> None:
        methods = self.model.details or {}
        self.method.blockSignals(True)
        self.method.clear()
        self.method.addItems(list(methods))
        self.method.blockSignals(False)
        held = self.model.loaded
        self.explanations.set_classes(held.card.class_names if held is not None else [])
        self._method_changed()

    def _method_changed(self, index: int = -1) -> None:
        method = self.method.currentText()
        layers = (self.model.details or {}).get(method, [])
        self.layer.blockSignals(True)
        self.layer.clear()
        self.layer.addItems(layers if method == QUERY else [DEFAULT_LAYER, *layers])
        self.layer.blockSignals(False)
        self.queries.setEnabled(method == QUERY)
        if method != QUERY:
            self.queries.setChecked(False)  # clicks query only while query is chosen
        self.explanations.method_changed(method, method == QUERY)
        self._layer_changed()

    def _layer_changed(self, index: int = -1) -> None:
        """Heads apply to query blocks; the head range follows the chosen block."""
        heads = 0
        if self.method.currentText() == QUERY and self.model.loaded is not None:
            block = dict(self.model.loaded.module.named_modules()).get(self.layer.currentText())
            heads = int(getattr(block, "num_heads", 0))
        self.head.setMaximum(max(heads - 1, -1))
        self.head.setEnabled(heads > 1)
        self.jobs.refresh()

    def ready(self) -> bool:
        return self.model.loaded is not None and bool(self.method.currentText())

    # -- running --------------------------------------------------------------------
    def scan(self) -> tuple[Any, Volume] | None:
        """The chosen scan layer and its volume; None, with a notification, if there is
        none or it cannot be read."""
        try:
            layer = self.viewer.layers[self.image.currentText()]
            return layer, layer_volume(layer.data, layer.metadata, name=layer.name)
        except KeyError:
            show_error("Open a scan first: there is no image layer to inspect.")
        except MedAttnError as error:
            show_error(str(error))
        return None

    def run(self) -> Job | None:
        """Compute the chosen maps in the background (or prepare click-to-query).

        Returns the job, or None when the choices are not valid (a notification says why).
        """
        scan = self.scan()
        if scan is None or not self.ready():
            return None
        method = self.method.currentText()
        if method == QUERY:
            return self.queries.prepare(*scan)
        return self.explanations.run(*scan, method, self.layer.currentText())

    def put_layers(self, layer_data: list[tuple]) -> list:
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
