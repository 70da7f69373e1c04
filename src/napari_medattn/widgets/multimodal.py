"""The "Multimodal segment" widget: assign open scans to T1, T1ce, T2 and FLAIR (any may
stay empty), click Run, get tumour labels, each region's volume and each modality's weight.

The assignments are guessed from the layer names and DICOM series descriptions
(:func:`~napari_medattn.inference.multimodal.guess_modality`) and stay editable; a choice
the user made is never overwritten by a later guess. The work is
:func:`napari_medattn.inference.multimodal.segment_multimodal` (the scans brought onto the
reference scan's grid through their exact affines, or through the transform a Register
run left on a layer), run on the one Job helper: progress, Cancel between windows, and
layers only when the whole run succeeded.
"""

from __future__ import annotations

from typing import Any

from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QLabel,
    QProgressBar,
    QWidget,
)

from napari_medattn.display.layers import layer_volume
from napari_medattn.inference.multimodal import (
    MULTIMODAL_TASK,
    MultimodalSegmentation,
    guess_modality,
    segment_multimodal,
)
from napari_medattn.models.brats import (
    BRATS_LABELS,
    BRATS_MODALITIES,
    LABEL_COLOURS,
    MODALITY_NAMES,
)
from napari_medattn.widgets.choices import on_layers_changed, set_items
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import (
    TRANSFORM_KEY,
    heat_map_layer_data,
    labels_layer_data,
    scan_layers,
)
from napari_medattn.widgets.parts.pickers import (
    ModelPicker,
    device_choice,
    precision_choice,
    use_autocast,
)
from napari_medattn.widgets.tooltips import MULTIMODAL as TOOLTIPS
from napari_medattn.widgets.worker import add_layers

#: The entry of a modality box that assigns no scan.
NONE = ""
#: The model chosen when the list is first filled.
DEFAULT_MODEL = "dmaf-brain-tumour"
MADE_BY = "multimodal segment"


def _description(layer: Any) -> str:
    """The layer's name and, for a DICOM series, its series description."""
    meta = layer.metadata.get("meta") or {}
    return f"{layer.name} {meta.get('series_description', '') if isinstance(meta, dict) else ''}"


def multimodal_layer_data(result: MultimodalSegmentation) -> list[tuple]:
    """Layer-data tuples of a result: the labels in WT/TC/ET colours, then the per-modality
    contribution maps (in [0, 1]). Pure data, prepared in the worker thread."""
    data, kwargs, kind = labels_layer_data(result.labels, MADE_BY, {})
    colours: dict[int | None, str] = {0: "transparent", None: "magenta", **LABEL_COLOURS}
    kwargs["colormap"] = DirectLabelColormap(color_dict=colours)
    layers = [(data, kwargs, kind)]
    for name, volume in result.attention.items():
        volume.meta["name"] = f"{result.labels.name} weight {name}"
        layers.append(heat_map_layer_data(volume, MADE_BY, {}, top=1.0))
    return layers


class MultimodalSegmentWidget(JobWidget):
    """Segment a brain tumour from any subset of T1, T1ce, T2 and FLAIR."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
        self.modality_boxes: dict[str, QComboBox] = {}
        self._chosen_by_user: set[str] = set()
        form = QFormLayout(self)
        for key in BRATS_MODALITIES:
            box = QComboBox()
            box.setToolTip(TOOLTIPS["modality"])
            box.activated.connect(lambda _i, k=key: self._user_chose(k))
            box.currentIndexChanged.connect(lambda _i: self.jobs.refresh())
            self.modality_boxes[key] = box
            form.addRow(MODALITY_NAMES[key], box)
        self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"], task=MULTIMODAL_TASK,
                                 default=DEFAULT_MODEL)
        self.model.changed.connect(self.jobs.refresh)
        self.device, self.precision = device_choice(), precision_choice()
        self.device.setToolTip(TOOLTIPS["device"])
        self.precision.setToolTip(TOOLTIPS["precision"])
        self.attention = QCheckBox("Add each modality's weight map")
        self.attention.setToolTip(TOOLTIPS["attention"])
        form.addRow("Model", self.model.row())
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow(self.attention)
        form.addRow(self.jobs)
        form.addRow(self.status)
        self.volumes_label = QLabel("")
        self.volumes_label.setToolTip(TOOLTIPS["volumes"])
        form.addRow("Volumes", self.volumes_label)
        bars = QWidget()
        grid = QGridLayout(bars)
        grid.setContentsMargins(0, 0, 0, 0)
        self.weight_bars: dict[str, QProgressBar] = {}
        for row, key in enumerate(BRATS_MODALITIES):
            bar = QProgressBar()
            bar.setRange(0, 100)
            bar.setValue(0)
            bar.setFormat("%p%")
            bar.setToolTip(TOOLTIPS["weights"])
            grid.addWidget(QLabel(MODALITY_NAMES[key]), row, 0)
            grid.addWidget(bar, row, 1)
            self.weight_bars[key] = bar
        form.addRow("Weights", bars)
        on_layers_changed(napari_viewer, self._refresh)
        self._refresh()
        self.model.refresh()

    # ------------------------------------------------------------------ choices
    def _user_chose(self, key: str) -> None:
        self._chosen_by_user.add(key)
        self.jobs.refresh()

    def _refresh(self, event: Any = None) -> None:
        layers = scan_layers(self.viewer)
        names = [layer.name for layer in layers]
        guesses = {layer.name: guess_modality(_description(layer)) for layer in layers}
        for key, box in self.modality_boxes.items():
            current = box.currentText()
            set_items(box, [NONE, *names])
            if key in self._chosen_by_user and current in names:
                box.setCurrentText(current)
                continue
            guessed = [name for name in names if guesses[name] == key]
            box.setCurrentText(guessed[0] if guessed else current if current in names else NONE)
        self.jobs.refresh()

    def assignments(self) -> dict[str, str]:
        """Layer name by modality, for the boxes that name a scan."""
        return {key: box.currentText() for key, box in self.modality_boxes.items()
                if box.currentText()}

    def ready(self) -> bool:
        return bool(self.assignments()) and self.model.loaded is not None

    # ---------------------------------------------------------------------- run
    def run(self):
        chosen = self.assignments()
        # A transform left by a Register run maps the fixed scan's mm to this scan's mm:
        # usable when the fixed scan is the reference (the first given, in model order).
        reference = next(k for k in BRATS_MODALITIES if k in chosen)
        reference_id = self.viewer.layers[chosen[reference]].unique_id
        volumes, transforms = {}, {}
        for key, name in chosen.items():
            layer = self.viewer.layers[name]
            volumes[key] = layer_volume(layer.data, layer.metadata, name=layer.name)
            registered = layer.metadata.get(TRANSFORM_KEY)
            if key != reference and registered and registered.get("fixed") == reference_id:
                transforms[key] = registered["transform"]
        held = self.model.loaded
        device, autocast = self.device.currentText(), use_autocast(self.precision)
        attention = self.attention.isChecked()

        def work(progress, cancel):
            result = segment_multimodal(
                volumes, held.module, held.card, transforms=transforms,
                attention=attention, device=device, use_autocast=autocast,
                progress=progress, cancel=cancel)
            return result, multimodal_layer_data(result)

        return self.jobs.start(work, "Multimodal segmentation", self._show, model=held)

    def _show(self, outcome: tuple[MultimodalSegmentation, list[tuple]]) -> None:
        result, layer_data = outcome
        add_layers(self.viewer, layer_data, widget=self)
        self.volumes_label.setText("   ".join(f"{name} {ml:.1f} mL"
                                               for name, ml in result.volumes_ml.items()))
        for key, bar in self.weight_bars.items():
            bar.setValue(int(round(100 * result.modality_weights.get(key, 0.0))))
        names = ", ".join(f"{v} {BRATS_LABELS[v]}" for v in sorted(BRATS_LABELS))
        self.status.setText(f"Done on the {result.reference} grid; labels {names}.")

