"""The Attention inspector's click-to-query panel: what a clicked voxel attends to.

Run with the source ``query`` prepares a :class:`~napari_medattn.explain.query.QueryExplorer`
in the background once; then, with "Click to query" on, a click on the scan shows what
that voxel attends to in the chosen block (and for DSSA the regions its region routed to,
outlined, and the keys it kept). A click costs one attention row (tens to a few hundred
ms), so it runs on the GUI thread and updates the layers in place; while another job
computes with the same (shared) model, the click says so and waits for the next one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QCheckBox

from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.errors import MedAttnError
from napari_medattn.explain.query import QueryExplorer, QueryResult
from napari_medattn.io.volume import Volume, index_to_mm, mm_to_index
from napari_medattn.widgets.inspector_maps import heat_layer_data
from napari_medattn.widgets.parts.layers import DERIVED_KEY, INSPECT_KEY, labels_layer_data
from napari_medattn.widgets.tooltips import INSPECTOR as TOOLTIPS
from napari_medattn.widgets.worker import Job

if TYPE_CHECKING:
    from napari_medattn.widgets.inspector import InspectorWidget

#: Method name of click-to-query token attention (beside :data:`explain.METHODS`).
QUERY = "query"
#: ``metadata[INSPECT_KEY]["output"]`` of the click-to-query layers.
QUERY_OUTPUTS = ("query attention", "query routed regions", "query kept tokens")
POINT_OUTPUT = "query point"


class QueryPanel(QCheckBox):
    """The "Click to query" switch, the prepared explorer, and the click handling.

    Attributes
    ----------
    explorer : QueryExplorer or None
        Prepared for the current query scan and model, once Run ran with ``query``.
    """

    def __init__(self, inspector: InspectorWidget) -> None:
        super().__init__("Click to query")
        self.setToolTip(TOOLTIPS["query_mode"])
        self.inspector = inspector
        self.explorer: QueryExplorer | None = None
        self._explorer_for: tuple[Any, dict] | None = None  # (scan layer, run tag)
        self._held = None  # the shared model the explorer computes with
        # The viewer outlives the widget: its click callback goes when the widget does.
        callbacks, callback = inspector.viewer.mouse_drag_callbacks, self._on_click
        callbacks.append(callback)
        self.destroyed.connect(lambda *_: callback in callbacks and callbacks.remove(callback))

    @property
    def query_mode(self) -> QCheckBox:
        """The switch itself (this panel is the check box)."""
        return self

    def prepare(self, layer: Any, volume: Volume) -> Job:
        """Prepare click-to-query of the chosen model on the scan ``layer`` (a job)."""
        inspector = self.inspector
        held = inspector.model.loaded
        module, card, device = held.module, held.card, inspector.device.currentText()
        tag = {"image": layer.unique_id, "model": card.name}

        def work(progress, cancel):
            return QueryExplorer(volume, module, card, device=device, progress=progress,
                                 cancel=cancel)

        inspector.status.setText(f"Preparing click-to-query of {card.name} on {layer.name}...")
        return inspector.jobs.start(work, f"Prepare queries ({card.name})",
                                    lambda explorer: self._ready(explorer, layer, tag, held),
                                    model=held)

    def _ready(self, explorer: QueryExplorer, layer: Any, tag: dict, held: Any) -> None:
        self.explorer = explorer
        self._explorer_for = (layer, tag)
        self._held = held
        self.setChecked(True)
        self.inspector.status.setText("Click a voxel of the scan to see what it attends to.")
        volume = explorer.volume
        self.query_point(volume.index_to_mm((np.asarray(volume.spatial_shape) - 1) / 2))

    def _on_click(self, viewer: Any, event: Any) -> None:
        if event.type == "mouse_press" and self.isChecked():
            self.query_world(event.position)

    def query_world(self, position) -> QueryResult | None:
        """Query the voxel under a viewer (world) position: through the scan layer's
        transform to its canonical index, then its exact affine to patient mm."""
        if self.explorer is None or self._explorer_for is None:
            return None
        layer = self._explorer_for[0]
        if layer not in self.inspector.viewer.layers:
            return None
        index = np.asarray(layer.world_to_data(position), dtype=np.float64)[-3:]
        return self.query_point(index_to_mm(layer.metadata[GEOMETRY_KEY].affine, index))

    def _world_of(self, point_mm) -> np.ndarray:
        """Viewer (world) position of a patient point, through the scan layer's transform."""
        layer = self._explorer_for[0]
        index = mm_to_index(layer.metadata[GEOMETRY_KEY].affine, point_mm)
        return np.asarray(layer.data_to_world(index))[-3:]

    def query_point(self, point_mm) -> QueryResult | None:
        """Show what the voxel at ``point_mm`` (LPS mm) attends to in the chosen block."""
        if self.explorer is None or self._explorer_for is None:
            return None
        inspector = self.inspector
        block = inspector.layer.currentText()
        head = inspector.head.value() if inspector.head.isEnabled() and \
            inspector.head.value() >= 0 else None
        with self._held.lease(blocking=False) as free:
            if not free:
                inspector.status.setText("The model is busy with another job; click again "
                                         "when it has finished.")
                return None
            try:
                result = self.explorer.query(point_mm, block, head)
            except MedAttnError as error:
                inspector.status.setText(str(error))
                return None
        tag = self._explorer_for[1]
        # One layer per output, whatever the block or head: every click updates it in place.
        layers = [heat_layer_data(result.attention, {**tag, "output": QUERY_OUTPUTS[0]})]
        if result.regions is not None:
            layers.append(labels_layer_data(
                result.regions, "inspector", {INSPECT_KEY: {**tag, "output": QUERY_OUTPUTS[1]}},
                opacity=0.9))
        if result.kept_tokens is not None:
            layers.append(labels_layer_data(
                result.kept_tokens, "inspector",
                {INSPECT_KEY: {**tag, "output": QUERY_OUTPUTS[2]}}))
        # The clicked voxel, as a marker in world coordinates.
        scan = self._explorer_for[0]
        layers.append((self._world_of(point_mm)[None], {
            "name": POINT_OUTPUT, "size": 6, "symbol": "cross", "face_color": "cyan",
            "border_width": 0, "units": scan.units[-3:], "axis_labels": scan.axis_labels[-3:],
            "metadata": {INSPECT_KEY: {**tag, "output": POINT_OUTPUT},
                         DERIVED_KEY: "inspector"}}, "points"))
        for layer in inspector.put_layers(layers):
            if layer.metadata[INSPECT_KEY]["output"] == QUERY_OUTPUTS[1]:
                layer.contour = 2  # outlined, so the scan and the map show through
        inspector.explanations.apply_display()
        weights = result.attention.data
        peak = np.unravel_index(int(np.argmax(weights)), weights.shape)
        peak_mm = result.attention.index_to_mm(peak)
        inspector.status.setText(
            f"Voxel ({', '.join(f'{p:.1f}' for p in point_mm)}) mm in {block}: peak weight "
            f"{weights[peak]:.3g} at ({', '.join(f'{p:.1f}' for p in peak_mm)}) mm "
            f"(LPS), slice z = {peak_mm[2]:.1f} mm.")
        return result
