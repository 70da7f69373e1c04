"""The Attention inspector's uncertainty panel: where the model is least sure.

An uncertainty map comes from the segmentation engine (entropy, or the variance over
flips) or from a Segment run's uncertainty layer; the panel lists the axial slices where
it is highest (:func:`~napari_medattn.explain.uncertainty.uncertain_slices`), and clicking
one moves the viewer there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from napari_medattn.display.layers import layer_volume
from napari_medattn.errors import MedAttnError
from napari_medattn.explain.uncertainty import SliceScore, uncertain_slices
from napari_medattn.inference.pipeline import segment
from napari_medattn.inference.tta import UNCERTAINTY_KINDS
from napari_medattn.inference.window_options import OutputRequest
from napari_medattn.io.volume import Volume
from napari_medattn.widgets.choices import set_items
from napari_medattn.widgets.inspector_maps import heat_layer_data
from napari_medattn.widgets.parts.layers import INSPECT_KEY, RUN_KEY
from napari_medattn.widgets.tooltips import INSPECTOR as TOOLTIPS
from napari_medattn.widgets.worker import Job

if TYPE_CHECKING:
    from napari_medattn.widgets.inspector import InspectorWidget


def is_uncertainty_layer(layer: Any) -> bool:
    """Whether a layer is an uncertainty map of Segment or of the inspector."""
    tag = layer.metadata.get(RUN_KEY) or layer.metadata.get(INSPECT_KEY) or {}
    return isinstance(layer, Image) and "uncertainty" in str(tag.get("output", ""))


class UncertaintyPanel(QGroupBox):
    """Compute an uncertainty map; list and visit its most uncertain axial slices.

    Attributes
    ----------
    slices : list of SliceScore
        The listed uncertain slices.
    """

    def __init__(self, inspector: InspectorWidget) -> None:
        super().__init__("Uncertainty: most uncertain axial slices")
        self.inspector = inspector
        self.slices: list[SliceScore] = []
        self.kind = QComboBox()
        self.kind.addItems(UNCERTAINTY_KINDS)
        self.button = QPushButton("Compute uncertainty")
        self.source = QComboBox()
        self.slice_list = QListWidget()
        self.slice_list.setMaximumHeight(130)
        for name, widget in (("uncertainty_kind", self.kind),
                             ("uncertainty_button", self.button),
                             ("uncertainty_source", self.source), ("slices", self.slice_list)):
            widget.setToolTip(TOOLTIPS[name])
        form = QFormLayout(self)
        form.addRow("Kind", self.kind)
        form.addRow(self.button)
        form.addRow("Map", self.source)
        form.addRow(self.slice_list)
        inspector.jobs.follow(self.button)
        self.button.clicked.connect(self.compute)
        self.source.currentIndexChanged.connect(self.list_slices)
        self.slice_list.itemClicked.connect(self._slice_clicked)

    def refresh(self) -> None:
        """List the uncertainty layers in the viewer."""
        set_items(self.source, [layer.name for layer in self.inspector.viewer.layers
                                if is_uncertainty_layer(layer)])
        if self.source.currentText() and not self.slices:
            self.list_slices()

    def compute(self) -> Job | None:
        """Segment with the chosen model asking for an uncertainty map (background job)."""
        inspector = self.inspector
        scan = inspector.scan()
        if scan is None:
            return None
        layer, volume = scan
        held = inspector.model.loaded
        module, card = held.module, held.card
        kind = self.kind.currentText()
        tag = {"image": layer.unique_id, "model": card.name, "output": f"uncertainty {kind}"}
        device = inspector.device.currentText()

        def work(progress, cancel):
            # Variance is taken across the flips of test-time augmentation.
            result = segment(volume, module, card, device=device, progress=progress,
                             outputs=OutputRequest(tta=kind == "variance", uncertainty=kind),
                             cancel=cancel)
            uncertainty: Volume = result.uncertainty
            uncertainty.meta["name"] = f"{layer.name} {card.name} uncertainty ({kind})"
            return heat_layer_data(uncertainty, tag)

        def show(layer_data: tuple) -> None:
            (added,) = inspector.put_layers([layer_data])
            self.source.setCurrentText(added.name)
            self.list_slices()

        return inspector.jobs.start(work, f"Uncertainty ({card.name} on {layer.name})", show,
                                    model=held)

    def list_slices(self, index: int = -1) -> None:
        """Rank the axial slices of the chosen uncertainty layer."""
        self.slice_list.clear()
        self.slices = []
        name = self.source.currentText()
        viewer = self.inspector.viewer
        if not name or name not in viewer.layers:
            return
        layer = viewer.layers[name]
        try:
            self.slices = uncertain_slices(layer_volume(layer.data, layer.metadata))
        except MedAttnError as error:
            self.inspector.status.setText(str(error))
            return
        for entry in self.slices:
            self.slice_list.addItem(f"z = {entry.z_mm:.1f} mm (slice {entry.index}): "
                                    f"mean {entry.score:.3f}")

    def _slice_clicked(self, item: QListWidgetItem) -> None:
        self.jump_to_slice(self.slice_list.row(item))

    def jump_to_slice(self, row: int) -> None:
        """Move the viewer to the ``row``-th listed slice (the first spatial axis)."""
        viewer = self.inspector.viewer
        layer = viewer.layers[self.source.currentText()]
        position = layer.data_to_world((*(0,) * (layer.ndim - 3), self.slices[row].index, 0, 0))
        viewer.dims.set_point(viewer.dims.ndim - 3, float(position[-3]))
