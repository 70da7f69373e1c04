"""What a job runs with: the model (:class:`ModelPicker`), the device and the precision.

:class:`ModelPicker` lists the built-in and user models (and folders the user opens) with
the model card as tooltip, and loads the chosen one in the background through the
process-wide :data:`~napari_medattn.models.cache.model_cache` (two widgets on one model
hold it once).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from napari_medattn.models.cache import CachedModel, model_cache
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import DEFAULT_MODEL, ModelEntry, list_models
from napari_medattn.widgets.choices import set_models
from napari_medattn.widgets.parts.jobs import JobControls
from napari_medattn.widgets.tooltips import model_card_tooltip


#: The precision choices: reduced where it is fast (see inference.devices.autocast_dtype),
#: or float32 everywhere.
PRECISIONS = ("auto", "float32")


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
