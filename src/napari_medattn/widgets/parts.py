"""The parts every job widget is assembled from.

* :class:`JobWidget`: the base of a job widget. It puts the viewer in radiological view,
  applies the host workarounds (:mod:`~napari_medattn.widgets.host`) and owns a
  :class:`JobControls`: Run and Cancel on the one Job helper
  (:func:`~napari_medattn.widgets.worker.start_job`), one job at a time, a status line.
* :class:`ModelPicker`: a combo box of the built-in and user models (and folders the user
  opens), the model card as tooltip, and the chosen model loaded in the background through
  the process-wide :data:`~napari_medattn.models.cache.model_cache` (two widgets on one
  model hold it once).
* :func:`device_choice`, :func:`precision_choice`: the device and precision boxes.
* :func:`scan_layers`: the one rule for which layers are scans; :data:`DERIVED_KEY` and
  the other layer-metadata keys; :func:`heat_map_layer_data` and
  :func:`labels_layer_data`: how results are styled (and marked as derived).

A new job widget::

    class DetectWidget(JobWidget):
        def __init__(self, napari_viewer):
            super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
            self.image = QComboBox()
            self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"])
            self.device = device_choice()
            form = QFormLayout(self)
            form.addRow("Image", self.image)
            form.addRow("Model", self.model.row())
            form.addRow("Device", self.device)
            form.addRow(self.jobs)          # Run | Cancel
            form.addRow(self.status)
            on_layers_changed(napari_viewer, self._refresh)
            self._refresh()
            self.model.refresh()

        def _refresh(self, event=None):
            set_items(self.image, [layer.name for layer in scan_layers(self.viewer)])
            self.jobs.refresh()

        def ready(self) -> bool:        # Run is enabled when idle and this holds
            return bool(self.image.currentText()) and self.model.loaded is not None

        def run(self):
            layer = self.viewer.layers[self.image.currentText()]
            volume = layer_volume(layer.data, layer.metadata, name=layer.name)
            held = self.model.loaded
            def work(progress, cancel):
                boxes = detect(volume, held.module, held.card, progress=progress,
                               cancel=cancel)
                return [heat_map_layer_data(boxes.map, "detect", {})]
            return self.jobs.start(work, "Detect", self._show, model=held)

        def _show(self, layer_data):
            add_layers(self.viewer, layer_data, widget=self)

``jobs.start(..., model=held)`` runs the work holding the shared network's lease, so a
job of another widget on the same model waits for it (see
:mod:`napari_medattn.models.cache`). Combo boxes refill through
:func:`~napari_medattn.widgets.choices.set_items`; tooltips live in
:mod:`~napari_medattn.widgets.tooltips`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from napari.layers import Image
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from napari_medattn.display.layers import GEOMETRY_KEY, volume_layer_data
from napari_medattn.io.volume import Volume
from napari_medattn.models.cache import CachedModel, model_cache
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import DEFAULT_MODEL, ModelEntry, list_models
from napari_medattn.widgets import host
from napari_medattn.widgets.choices import set_models
from napari_medattn.widgets.radiology_view import install_radiology_view
from napari_medattn.widgets.tooltips import model_card_tooltip
from napari_medattn.widgets.worker import Job, JobFunction, start_job

# ------------------------------------------------------------------ layer metadata keys
#: ``layer.metadata`` key of every layer a widget computes (maps, labels, markers): the
#: name of the widget that made it. Such layers are never offered as scans.
DERIVED_KEY = "medattn_derived"
#: ``layer.metadata`` key of Segment's result layers: ``{"image": <scan layer unique_id>,
#: "model": <name>, "output": "labels" | "probability <c>" | "uncertainty" |
#: "attention <map>"}``.
RUN_KEY = "medattn_segment_run"
#: ``layer.metadata`` key of a result labels layer: hash of the labels as written.
DIGEST_KEY = "medattn_labels_digest"
#: ``layer.metadata`` key of the inspector's layers: ``{"image": <scan layer unique_id>,
#: "model": <name>, "output": <what it shows>, "top": <largest magnitude>,
#: "signed": <bool>}``.
INSPECT_KEY = "medattn_inspector"
#: ``layer.metadata`` key the Register widget sets on the moving layer when a run ends:
#: ``{"fixed": <fixed layer unique_id>, "transform": <fixed mm -> moving mm transform>,
#: "method": <name>}``. Fuse offers it as the overlay's transform, so a registration
#: reaches the fusion view without a file.
TRANSFORM_KEY = "medattn_registration"

# ---------------------------------------------------------------------------- styling
#: Opacity of result labels over the scan, and of heat maps (blended additively).
LABELS_OPACITY = 0.5
HEAT_OPACITY = 0.6
HEAT_COLORMAP = "inferno"
#: Signed maps (e.g. occlusion): blue below zero, red above.
SIGNED_COLORMAP = "bwr"

#: The precision choices: reduced where it is fast (see inference.devices.autocast_dtype),
#: or float32 everywhere.
PRECISIONS = ("auto", "float32")


def scan_layers(viewer: Any) -> list[Image]:
    """The layers that are scans: single-channel image layers opened with this plugin
    (they carry the patient geometry, :data:`GEOMETRY_KEY`) that no widget computed
    (no :data:`DERIVED_KEY`), in the viewer's order."""
    return [layer for layer in viewer.layers
            if isinstance(layer, Image) and not layer.rgb
            and GEOMETRY_KEY in layer.metadata and DERIVED_KEY not in layer.metadata]


def heat_map_layer_data(volume: Volume, made_by: str, tags: Mapping[str, Any], *,
                        signed: bool = False, top: float | None = None) -> tuple:
    """Layer-data tuple of a map on its scan's geometry, styled as every heat map.

    Pure data (no napari objects), so it can be prepared in a worker thread.

    Parameters
    ----------
    volume : Volume
        The map.
    made_by : str
        The widget that computed it (stored under :data:`DERIVED_KEY`).
    tags : mapping
        More layer metadata (the widget's run tag).
    signed : bool
        Values of both signs: :data:`SIGNED_COLORMAP` with limits symmetric about 0.
    top : float, optional
        The upper contrast limit (e.g. 1 for probabilities); default: the map's largest
        magnitude (1 for an all-zero map).
    """
    data, kwargs, kind = volume_layer_data(volume, "image")
    if top is None:
        top = float(np.max(np.abs(data))) if data.size else 0.0
    top = top if top > 0 else 1.0
    kwargs.update(colormap=SIGNED_COLORMAP if signed else HEAT_COLORMAP,
                  blending="additive", opacity=HEAT_OPACITY,
                  contrast_limits=(-top if signed else 0.0, top),
                  metadata={**kwargs["metadata"], **tags, DERIVED_KEY: made_by})
    return data, kwargs, kind


def labels_layer_data(volume: Volume, made_by: str, tags: Mapping[str, Any], *,
                      opacity: float = LABELS_OPACITY) -> tuple:
    """Layer-data tuple of a label map a widget computed, on its scan's geometry."""
    data, kwargs, kind = volume_layer_data(volume, "labels")
    kwargs.update(opacity=opacity,
                  metadata={**kwargs["metadata"], **tags, DERIVED_KEY: made_by})
    return data, kwargs, kind


def class_colormap(card: ModelCard) -> DirectLabelColormap:
    """The card's class colours by label value, background transparent."""
    colours: dict[int | None, Any] = {0: "transparent", None: "magenta"}
    colours.update({index: info.color for index, info in enumerate(card.classes) if index})
    return DirectLabelColormap(color_dict=colours)


# ---------------------------------------------------------------- device and precision
def available_devices() -> list[str]:
    """Device choices: ``auto``, ``cpu``, and ``cuda``/``mps`` where present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        devices.append("mps")
    return devices


def device_choice() -> QComboBox:
    """A box of :func:`available_devices`, ``auto`` first."""
    box = QComboBox()
    box.addItems(available_devices())
    return box


def precision_choice() -> QComboBox:
    """A box of :data:`PRECISIONS`; :func:`use_autocast` reads it."""
    box = QComboBox()
    box.addItems(PRECISIONS)
    return box


def use_autocast(box: QComboBox) -> bool:
    """Whether a :func:`precision_choice` box asks for reduced precision where fast."""
    return box.currentText() == PRECISIONS[0]


# ---------------------------------------------------------------------- jobs: Run/Cancel
class JobControls(QWidget):
    """Run and Cancel buttons on the one Job helper, and a status line: one job at a time.

    Parameters
    ----------
    run : callable
        What Run does (returns the job or None).
    ready : callable
        Whether Run may be pressed when no job runs (the widget's choices are complete).
    run_text : str
        The Run button's text.
    tooltips : tuple of str
        Tooltips of Run and Cancel.

    Attributes
    ----------
    job : Job or None
        The running (or last) job.
    status : QLabel
        A line for the widget's messages (placed by the widget).
    """

    #: Emitted after a job ended (every outcome), once the buttons are updated.
    idle = Signal()

    def __init__(self, run: Callable[[], Job | None], ready: Callable[[], bool], *,
                 run_text: str = "Run", tooltips: tuple[str, str] = ("", "")) -> None:
        super().__init__()
        self.job: Job | None = None
        self._ready = ready
        self._followers: list[QPushButton] = []
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.setToolTip(tooltips[0])
        self.cancel_button.setToolTip(tooltips[1])
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        self.run_button.clicked.connect(lambda: run())
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        """Whether a job of this widget runs."""
        return self.job is not None and self.job.running

    def follow(self, button: QPushButton) -> None:
        """Enable ``button`` exactly when Run is (another action that starts a job)."""
        self._followers.append(button)

    def refresh(self) -> None:
        """Enable Run (and its followers) when idle and ready, Cancel while busy."""
        can_run = not self.busy and bool(self._ready())
        for button in (self.run_button, *self._followers):
            button.setEnabled(can_run)
        self.cancel_button.setEnabled(self.busy)

    def start(self, function: JobFunction, description: str,
              on_result: Callable[[Any], None], *, model: CachedModel | None = None) -> Job:
        """Start ``function(progress=..., cancel=...)`` as this widget's job
        (:func:`~napari_medattn.widgets.worker.start_job`); with ``model``, the work
        holds that shared network's lease while it runs."""
        if model is not None:
            def work(progress, cancel, _function=function):
                with model.lease(cancel):
                    return _function(progress=progress, cancel=cancel)
            function = work
        self.job = start_job(function, description=description, on_result=on_result,
                             on_finished=self._finished)
        self.refresh()
        return self.job

    def cancel(self) -> None:
        """Stop the running job at its next check; it adds no layer."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.setText("Cancelling...")

    def _finished(self, job: Job) -> None:
        self.refresh()
        self.idle.emit()


class JobWidget(QWidget):
    """Base of the job widgets: see the module's example.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    run : callable
        The widget's Run action.
    tooltips : mapping
        The widget's tooltips; ``run_key`` and ``"cancel"`` are used here.
    run_text, run_key : str
        The Run button's text and tooltip key.
    """

    def __init__(self, napari_viewer: Any, *, run: Callable[[], Job | None],
                 tooltips: Mapping[str, str], run_text: str = "Run",
                 run_key: str = "run") -> None:
        super().__init__()
        self.viewer = napari_viewer
        install_radiology_view(napari_viewer)
        host.freeze_startup_objects()
        self.jobs = JobControls(run, self.ready, run_text=run_text,
                                tooltips=(tooltips[run_key], tooltips["cancel"]))

    def ready(self) -> bool:
        """Whether the choices allow Run (override; Run is also off while a job runs)."""
        return True

    @property
    def job(self) -> Job | None:
        """The running (or last) job of this widget."""
        return self.jobs.job

    @property
    def run_button(self) -> QPushButton:
        return self.jobs.run_button

    @property
    def cancel_button(self) -> QPushButton:
        return self.jobs.cancel_button

    @property
    def status(self) -> QLabel:
        return self.jobs.status

    def cancel(self) -> None:
        """Stop the running job at its next check; it adds no layer."""
        self.jobs.cancel()


# ------------------------------------------------------------------------ model picker
class ModelPicker(QComboBox):
    """The built-in and user models by name, each with its card as tooltip; the chosen
    one loaded in the background through the process-wide model cache.

    Parameters
    ----------
    jobs : JobControls
        The widget's jobs: loading is one of them (Cancel stops it, Run waits for it), and
        a model chosen while another job runs is loaded when it ends.
    tooltip : str
        Shown when no card is known.
    describe : callable, optional
        ``describe(module, card)``, run in the loading worker (holding the model's
        lease): what the widget needs to know about the network (its attention maps, its
        explainable layers); kept per model and read as :attr:`details`.
    load : bool
        False: only list the models (the widget works from the listed entry).
    open_button : bool
        Offer "Open model..." to add a model folder (:meth:`add`).
    task : str
        List only the models whose card has this task (``"segmentation"``,
        ``"detection"``); a folder the user opens is listed whatever its task.
    default : str, optional
        The model chosen when the list is first filled (the registry's default model).

    Attributes
    ----------
    loaded : CachedModel or None
        The chosen model's shared network and card, once loaded.
    details : Any
        ``describe``'s answer for :attr:`loaded`.
    open_button : QPushButton or None
    """

    #: The choice changed, or the chosen model finished loading.
    changed = Signal()

    def __init__(self, jobs: JobControls, *, tooltip: str,
                 describe: Callable[[torch.nn.Module, ModelCard], Any] | None = None,
                 load: bool = True, open_button: bool = False, task: str = "segmentation",
                 default: str | None = None) -> None:
        super().__init__()
        self._task = task
        self._default = default
        self.loaded: CachedModel | None = None
        self.details: Any = None
        self._jobs = jobs
        self._tooltip = tooltip
        self._describe = describe
        self._load = load
        self._entries: dict[str, ModelEntry | Path] = {}
        self._details_by_key: dict[Any, Any] = {}
        self._load_when_idle = False
        self.setToolTip(tooltip)
        self.open_button = QPushButton("Open model...") if open_button else None
        if self.open_button is not None:
            self.open_button.clicked.connect(self._open_clicked)
        self.currentIndexChanged.connect(self._chosen)
        jobs.idle.connect(self._job_ended)

    def row(self) -> QWidget | QHBoxLayout:
        """The box, with its "Open model..." button beside it when it has one."""
        if self.open_button is None:
            return self
        row = QHBoxLayout()
        row.addWidget(self, 1)
        row.addWidget(self.open_button)
        return row

    @property
    def entry(self) -> ModelEntry | Path | None:
        """The chosen model as listed (a registry entry, or a folder the user opened)."""
        return self._entries.get(self.currentText())

    def refresh(self) -> None:
        """List the built-in and user models again (broken ones skipped, each with a
        notification); folders the user opened stay listed."""
        problems: list[str] = []
        entries = list_models(problems)
        for problem in problems:
            show_info(problem)
        self._entries = {**{e.name: e for e in entries if e.card.task == self._task},
                         **{k: v for k, v in self._entries.items() if isinstance(v, Path)}}
        set_models(self, self._entries, fallback=self._default or DEFAULT_MODEL)
        self._chosen()

    def add(self, path: str | Path) -> str:
        """Add a model folder or file, select it (loading it in the background) and
        return the name it is listed under (the folder's or file's name)."""
        path = Path(path)
        name = path.stem if path.is_file() else path.name
        self._entries[name] = path
        self.addItem(name)
        self.setCurrentText(name)
        return name

    def select(self, name: str) -> bool:
        """Choose the model called ``name`` if listed; returns whether it is."""
        if name in self._entries:
            self.setCurrentText(name)
        return name in self._entries

    def _open_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder (card.json + weights)")
        if path:
            self.add(path)

    def _chosen(self, index: int = -1) -> None:
        entry = self.entry
        self.loaded, self.details = None, None
        self.setToolTip(model_card_tooltip(entry.card) if isinstance(entry, ModelEntry)
                        else self._tooltip)
        if entry is not None and self._load:
            held = model_cache.peek(entry) if isinstance(entry, ModelEntry) else None
            if held is not None and (self._describe is None
                                     or held.key in self._details_by_key):
                self._show(self.currentText(), held, self._details_by_key.get(held.key))
                return
            if self._jobs.busy:
                self._load_when_idle = True  # one job at a time: loaded when it ends
            else:
                self._start_load()
        self.changed.emit()
        self._jobs.refresh()

    def _start_load(self) -> None:
        name, entry, describe = self.currentText(), self.entry, self._describe

        def load(progress, cancel):
            held = model_cache.load(entry)
            if describe is None:
                return held, None
            with held.lease(cancel):
                return held, describe(held.module, held.card)

        self._jobs.start(load, f"Loading model {name}",
                         lambda outcome: self._show(name, *outcome))

    def _show(self, name: str, held: CachedModel, details: Any) -> None:
        self._details_by_key[held.key] = details
        if name != self.currentText():
            return
        self.loaded, self.details = held, details
        self.setToolTip(model_card_tooltip(held.card))
        self.changed.emit()
        self._jobs.refresh()

    def _job_ended(self) -> None:
        # A model chosen while another job ran is loaded now (once: a model that fails
        # to load is not retried until it is chosen again).
        if self._load_when_idle and self.entry is not None and self.loaded is None:
            self._load_when_idle = False
            self._start_load()
        self._load_when_idle = False
