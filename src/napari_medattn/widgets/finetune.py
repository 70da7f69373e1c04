"""The "Fine-tune" widget: teach a model the labels a user corrected on a scan.

The work is :func:`napari_medattn.training.finetune.finetune`, run through the shared
worker helper (:mod:`napari_medattn.widgets.worker`): training steps and then the windows
of the final segmentation advance one progress bar in napari's activity dock, Cancel
stops between steps (or windows), and the training loss of every step is drawn in the
widget as it comes. Loss points are emitted from the worker thread through a queued Qt
signal, so the plot is only touched on the GUI thread.

When the run succeeds the new model is in the per-user model folder (listed by
``medattn models`` and by the model list of every widget docked in the window, which are
refreshed), and its segmentation of the scan is added as a labels layer made
exactly as the Segment widget makes its own
(:func:`~napari_medattn.widgets.segment.segmentation_layer_data`, the card's class
colours, the run tag: running the new model in the Segment widget later updates this
layer in place). A cancelled run leaves neither a model folder nor a layer; that holds
even for a cancel that arrives after the model was installed but before the result
reached the GUI (the folder is then removed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import napari
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error
from napari.utils.theme import get_theme
from qtpy.QtCore import Qt, Signal, Slot
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
)

from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume
from napari_medattn.errors import MedAttnError
from napari_medattn.training.finetune import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    FinetuneResult,
    check_model_name,
    finetune,
    suggest_name,
)
from napari_medattn.widgets.choices import (
    labels_on_scan_grid,
    on_layers_changed,
    set_items,
)
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import class_colormap, scan_layers
from napari_medattn.widgets.parts.pickers import ModelPicker, device_choice
from napari_medattn.widgets.segment import segmentation_layer_data
from napari_medattn.widgets.tooltips import FINETUNE as TOOLTIPS
from napari_medattn.widgets.worker import Job, add_layers


class LossPlot(FigureCanvasQTAgg):
    """Training loss per step, redrawn as points arrive, in the viewer's theme colours.

    Emit :attr:`point` from any thread: the canvas lives on the GUI thread, so Qt queues
    the call to :meth:`add_point` there.

    Attributes
    ----------
    steps, losses : list
        The points drawn so far.
    """

    point = Signal(int, float)

    def __init__(self, theme: str) -> None:
        colours = get_theme(theme)
        self._background = colours.background.as_hex()
        self._text = colours.text.as_hex()
        self._line_colour = colours.current.as_hex()
        figure = Figure(figsize=(3.6, 2.2), dpi=100, facecolor=self._background,
                        layout="constrained")
        super().__init__(figure)
        self.setMinimumHeight(180)  # room for the axes' labels in a narrow dock
        self.axes = figure.add_subplot()
        self.steps: list[int] = []
        self.losses: list[float] = []
        (self._line,) = self.axes.plot([], [], "o-", markersize=3, color=self._line_colour)
        self._style()
        self.point.connect(self.add_point)

    def _style(self) -> None:
        axes = self.axes
        axes.set_facecolor(self._background)
        axes.set_xlabel("step", color=self._text)
        axes.set_ylabel("Dice + CE loss", color=self._text)
        axes.tick_params(colors=self._text, labelsize=8)
        for spine in axes.spines.values():
            spine.set_color(self._text)
        axes.grid(alpha=0.25)

    def clear(self) -> None:
        """Forget the points (a new run starts)."""
        self.steps.clear()
        self.losses.clear()
        self._line.set_data([], [])
        self.draw_idle()

    @Slot(int, float)
    def add_point(self, step: int, loss: float) -> None:
        """Append a point and redraw (on the GUI thread)."""
        self.steps.append(step)
        self.losses.append(loss)
        self._line.set_data(self.steps, self.losses)
        self.axes.relim()
        self.axes.autoscale_view()
        self.draw_idle()


class FinetuneWidget(JobWidget):
    """Fine-tune a model on a scan layer and a labels layer; add the new model's result.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 injects it).

    Attributes
    ----------
    job : Job or None
        The running (or last) job of this widget.
    result : FinetuneResult or None
        What the last successful run made.
    plot : LossPlot
        The live loss plot.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, run=self.start, tooltips=TOOLTIPS, run_text="Start",
                         run_key="start")
        self.result: FinetuneResult | None = None
        self._suggested = ""
        self._installed: Path | None = None

        self.image = QComboBox()
        self.labels = QComboBox()
        # Fine-tuning reads the base model's folder itself: the picker only lists.
        self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"], load=False)
        self.name = QLineEdit()
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(DEFAULT_STEPS)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(DEFAULT_LR)
        self.device = device_choice()
        self.plot = LossPlot(napari_viewer.theme)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        for key, widget in (("image", self.image), ("labels", self.labels),
                            ("name", self.name), ("steps", self.steps), ("lr", self.lr),
                            ("device", self.device), ("plot", self.plot)):
            widget.setToolTip(TOOLTIPS[key])

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Labels", self.labels)
        form.addRow("Base model", self.model)
        form.addRow("New model name", self.name)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Device", self.device)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.jobs)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.status)

        self.model.changed.connect(self._model_changed)
        self.jobs.idle.connect(self._job_finished)
        self.image.currentIndexChanged.connect(self._refresh_labels)
        on_layers_changed(napari_viewer, self._refresh_layers)
        self._refresh_layers()
        self.model.refresh()

    @property
    def start_button(self):
        """The Start button (the shared Run button, named for what it does here)."""
        return self.jobs.run_button

    # -- choices --------------------------------------------------------------------
    def _refresh_layers(self, event: Any = None) -> None:
        set_items(self.image, [layer.name for layer in scan_layers(self.viewer)])
        self._refresh_labels()

    def _refresh_labels(self, index: int = -1) -> None:
        """Labels layers on the chosen scan's grid, the top-most first."""
        set_items(self.labels, labels_on_scan_grid(self.viewer, self.image.currentText()))
        self.jobs.refresh()

    def refresh_models(self) -> None:
        """List the built-in and user models this widget can start from."""
        self.model.refresh()

    def _model_changed(self) -> None:
        entry = self.model.entry
        # A name the user typed is kept; the suggestion follows the base model.
        if entry is not None and self.name.text() in ("", self._suggested):
            self._suggested = suggest_name(entry.name)
            self.name.setText(self._suggested)

    def ready(self) -> bool:
        return bool(self.image.currentText() and self.labels.currentText()
                    and self.model.entry is not None)

    # -- running --------------------------------------------------------------------
    def start(self) -> Job | None:
        """Fine-tune in the background with the chosen layers, model and settings.

        Returns the job, or None when the choices are not valid (a notification says
        why).
        """
        try:
            name = check_model_name(self.name.text().strip())
            image = self.viewer.layers[self.image.currentText()]
            labels = self.viewer.layers[self.labels.currentText()]
            volume = layer_volume(image.data, image.metadata, name=image.name)
            # A copy: the user may keep painting while the model trains.
            label_data = np.array(labels.data)
            target = (layer_volume(label_data, labels.metadata, modality="SEG",
                                   name=labels.name)
                      if GEOMETRY_KEY in labels.metadata else label_data)
        except MedAttnError as error:
            show_error(str(error))
            return None
        except KeyError:
            show_error("Choose a scan and a labels layer drawn on it first.")
            return None
        base = self.model.entry
        steps, lr, device = self.steps.value(), self.lr.value(), self.device.currentText()
        run = {"image": image.unique_id, "model": name}
        relay = self.plot.point
        self._installed = None
        self.plot.clear()
        self.status.setText(f"Fine-tuning {base.name} on {image.name} and {labels.name}...")

        def work(progress, cancel):
            def report(info: dict) -> None:
                # One bar for both phases: the steps, then the windows of the final run.
                if info["phase"] == "train":
                    progress(info["step"], info["steps"])
                    relay.emit(info["step"], info["loss"])
                else:
                    progress(steps + info["done"], steps + info["total"])

            result = finetune(volume, target, base, name=name, steps=steps, lr=lr,
                              device=device, progress=report, cancel=cancel)
            self._installed = result.entry.path
            card = result.entry.card
            return result, segmentation_layer_data(result.segmentation, card, run)

        return self.jobs.start(work, f"Fine-tune {base.name} as {name}",
                               lambda outcome: self._show_result(*outcome))

    def _show_result(self, result: FinetuneResult, layer_data: list[tuple]) -> None:
        card = result.entry.card
        layer_data[0][1]["colormap"] = class_colormap(card)
        add_layers(self.viewer, layer_data, widget=self)
        self.result = result
        # Every model list in the window lists the new model (found through Qt: this
        # widget's and those of the other docked widgets).
        for picker in {self.model, *self.window().findChildren(ModelPicker)}:
            picker.refresh()
        dice = ", ".join(f"{s.name} {s.dice:.2f}" for s in result.scores)
        losses = result.losses
        self.status.setText(
            f"Saved {card.name} to {result.entry.path}. Loss {losses[0]:.3f} -> "
            f"{losses[-1]:.3f} in {len(losses)} steps; Dice on this same image (its "
            f"training data, not held out): {dice}.")

    def _job_finished(self) -> None:
        if self.job.outcome == "cancelled":
            if self._installed is not None:
                # Cancel came after the model was installed: the user asked for nothing.
                shutil.rmtree(self._installed, ignore_errors=True)
            self.status.setText("Cancelled: no model was saved.")
        elif self.job.outcome == "failed":
            self.status.setText("Fine-tuning failed (see the notification).")
        self._installed = None
