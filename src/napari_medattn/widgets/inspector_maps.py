"""The Attention inspector's explanations panel: maps, how telling they are, their display.

Maps come from :func:`napari_medattn.explain.explain` (Grad-CAM family, attention gates,
CBAM, channel attention, rollout, occlusion), run in the background with progress and
Cancel like every job. Each map's faithfulness numbers (deletion and insertion AUC,
stability, the verdict) are listed beside it; channel attention also draws a bar chart of
the strongest channels. The display controls (blending, opacity, threshold) act on every
heat map of the inspector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_medattn.display.layers import layer_volume
from napari_medattn.explain import ExplanationMap, explain
from napari_medattn.explain.cam import CAM_METHODS
from napari_medattn.io.volume import Volume
from napari_medattn.widgets.choices import labels_on_scan_grid, set_items
from napari_medattn.widgets.parts.layers import HEAT_OPACITY, INSPECT_KEY, heat_map_layer_data
from napari_medattn.widgets.tooltips import INSPECTOR as TOOLTIPS
from napari_medattn.widgets.worker import Job

if TYPE_CHECKING:
    from napari_medattn.widgets.inspector import InspectorWidget

DEFAULT_LAYER = "(default)"
#: The region choice that explains the class wherever the model predicts it.
WHOLE_SCAN = "(where the class is predicted)"
BLENDINGS = ("additive", "translucent")
#: Bars in the channel-attention chart.
TOP_CHANNELS = 12
#: Methods whose maps explain no class (as explain() names them), and those that take a
#: region.
CLASS_FREE = ("gate", "cbam", "channels", "rollout")
REGION_METHODS = (*CAM_METHODS, "rollout", "occlusion")


def heat_layer_data(volume: Volume, tag: dict, signed: bool = False) -> tuple:
    """Layer-data tuple of an inspector map: the heat-map style of every widget, limits
    from 0 (or -max) to the map's largest magnitude, and ``metadata[INSPECT_KEY]`` with
    that magnitude (``top``) for the threshold control.

    Pure data, so it can be prepared in a worker thread.
    """
    data, kwargs, kind = heat_map_layer_data(volume, "inspector", {INSPECT_KEY: tag},
                                             signed=signed)
    kwargs["metadata"][INSPECT_KEY] = {**tag, "top": kwargs["contrast_limits"][1],
                                       "signed": signed}
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


class ExplanationsPanel(QWidget):
    """Class, region and faithfulness choices; the map display; the maps' list and chart.

    Attributes
    ----------
    maps : list of ExplanationMap
        The last explanation run's maps.
    """

    def __init__(self, inspector: InspectorWidget) -> None:
        super().__init__()
        self.inspector = inspector
        self.maps: list[ExplanationMap] = []
        self.target = QComboBox()
        self.region = QComboBox()
        self.faithfulness = QCheckBox("Faithfulness numbers (slower)")
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
        for name, widget in (("target", self.target), ("region", self.region),
                             ("faithfulness", self.faithfulness),
                             ("blending", self.blending), ("opacity", self.opacity),
                             ("threshold", self.threshold), ("results", self.results),
                             ("chart", self.chart)):
            widget.setToolTip(TOOLTIPS[name])

        #: Rows of the inspector's main form (after the source, layer and head).
        self.form_rows = (("Class", self.target), ("Region", self.region),
                          (None, self.faithfulness))
        display = QFormLayout()
        display.addRow("Blending", self.blending)
        display.addRow("Opacity", self.opacity)
        display.addRow("Threshold", self.threshold)
        display_box = QGroupBox("Map display")
        display_box.setLayout(display)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(display_box)
        layout.addWidget(QLabel("Maps and how telling they are"))
        layout.addWidget(self.results)
        layout.addWidget(self.chart)

        self.blending.currentIndexChanged.connect(self.apply_display)
        self.opacity.valueChanged.connect(self.apply_display)
        self.threshold.valueChanged.connect(self.apply_display)
        self.results.currentRowChanged.connect(self._draw_chart)

    # -- choices --------------------------------------------------------------------
    def set_classes(self, names: list[str]) -> None:
        """The chosen model's classes; the first after the background is chosen."""
        self.target.clear()
        self.target.addItems(names)
        self.target.setCurrentIndex(min(1, len(names) - 1))

    def method_changed(self, method: str, query: bool) -> None:
        """Enable what the chosen method takes (``query``: click-to-query is chosen)."""
        self.target.setEnabled(not query and method not in CLASS_FREE)
        self.region.setEnabled(method in REGION_METHODS)
        self.faithfulness.setEnabled(not query)

    def refresh_regions(self, scan_name: str) -> None:
        """Labels layers on the chosen scan's grid (not the inspector's own), for a region."""
        names = labels_on_scan_grid(self.inspector.viewer, scan_name, skip_key=INSPECT_KEY)
        set_items(self.region, [WHOLE_SCAN, *names], fallback=WHOLE_SCAN)

    # -- running --------------------------------------------------------------------
    def run(self, layer: Any, volume: Volume, method: str, chosen_layer: str) -> Job:
        """Compute the chosen maps of the scan ``layer`` in the background."""
        inspector = self.inspector
        held = inspector.model.loaded
        module, card = held.module, held.card
        tag = {"image": layer.unique_id, "model": card.name}
        options = {"device": inspector.device.currentText(),
                   "layer": None if chosen_layer == DEFAULT_LAYER else chosen_layer,
                   "faithfulness": self.faithfulness.isChecked()}
        if self.target.isEnabled():
            options["target_class"] = self.target.currentIndex()
        if self.region.isEnabled() and self.region.currentText() != WHOLE_SCAN:
            labels = inspector.viewer.layers[self.region.currentText()]
            # The labels lie on the scan's grid (same shape): the scan's geometry maps
            # them back to the source order that explain() expects.
            options["region"] = layer_volume(np.asarray(labels.data) != 0, layer.metadata,
                                             modality="SEG").data

        def work(progress, cancel):
            maps = explain(volume, module, card, method, progress=progress, cancel=cancel,
                           **options)
            return maps, [heat_layer_data(m.volume, {**tag, "output": m.volume.name},
                                          signed=m.method == "occlusion") for m in maps]

        inspector.status.setText(f"Computing {method} of {card.name} on {layer.name}...")
        return inspector.jobs.start(work, f"{method} ({card.name} on {layer.name})",
                                    lambda outcome: self._show(*outcome), model=held)

    def _show(self, maps: list[ExplanationMap], layer_data: list[tuple]) -> None:
        self.maps = maps
        self.inspector.put_layers(layer_data)
        self.apply_display()
        self.results.clear()
        for explanation in maps:
            item = QListWidgetItem(faithfulness_text(explanation))
            scores = explanation.faithfulness
            if scores is not None and not scores.telling:
                item.setForeground(Qt.GlobalColor.red)
            self.results.addItem(item)
        self.results.setCurrentRow(0)
        self._draw_chart()
        self.inspector.status.setText(f"{len(maps)} map(s) added.")

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

    def apply_display(self, value: Any = None) -> None:
        """Blending, opacity and threshold (lower contrast limit, % of the map's maximum)
        for every heat map of the inspector."""
        for layer in self.inspector.viewer.layers:
            tag = layer.metadata.get(INSPECT_KEY)
            if not isinstance(layer, Image) or tag is None or "top" not in tag:
                continue
            layer.blending = self.blending.currentText()
            layer.opacity = self.opacity.value() / 100
            top = tag["top"]
            low = top * self.threshold.value() / 100
            layer.contrast_limits = (-top if tag["signed"] else low, top)
