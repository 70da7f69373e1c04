"""Register widget: align a moving scan to a fixed scan, live, with QA and saved transforms.

The computation is :func:`napari_medattn.registration.register` (the classical methods),
:func:`~napari_medattn.registration.learned.register_learned` (``learned``: a registration
network's field after an affine pre-alignment; ``learned-refine``: then classical iterations
started from it) or :func:`~napari_medattn.registration.fit_landmarks` (landmarks), run on
the one Job helper; this widget collects the parameters, shows the optimisation as it goes
and turns results into layers. Its parts: the moving layer's live preview and placement
(:mod:`.register_live`), and the panels of landmarks (:mod:`.register_landmarks`), results
and QA (:mod:`.register_results`) and comparison views (:mod:`.register_compare`).

* **Defaults per modality pair.** Choosing the scans (or switching between a linear and
  the deformable method) fills Metric, Levels, Regularisation and Smoothness from
  :func:`~napari_medattn.registration.defaults_for` of their contrasts, the table the
  command line reads too; the user may change them afterwards.
* **Mask.** An optional labels layer on the fixed scan's grid: only its voxels > 0 count
  in the metric (the engine takes a fixed mask only).
* **Live preview.** The moving scan follows the optimisation about twice a second: a
  linear transform moves the moving layer through its napari affine (nothing is
  resampled), a deformable one is shown by a preview layer on the fixed grid.
* **Stopping.** *Cancel* keeps nothing: the moving layer goes back where it was. *Stop and
  keep* stops as Cancel does and keeps the last state the engine reached (the
  :class:`~napari_medattn.errors.Cancelled` error's ``partial`` transform) as the result.
* **Results.** A linear result stays as the moving layer's affine; a deformable one adds
  the moving scan on the fixed grid, a det J layer (det J - 1, diverging colours) and a
  folds layer when any voxel folds. Every result (a loaded transform too) is recorded on
  the moving layer under :data:`~napari_medattn.widgets.parts.layers.TRANSFORM_KEY`,
  where the Fuse widget finds it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume
from napari_medattn.errors import Cancelled, GeometryError, MedAttnError, ModelError
from napari_medattn.io import Volume, volume_like
from napari_medattn.registration import METHODS as ENGINE_METHODS
from napari_medattn.registration import (
    LinearTransform,
    Settings,
    bake,
    contrast_of,
    defaults_for,
    register,
    warp,
)
from napari_medattn.registration.defaults import deformable_iterations_for, pair_kind
from napari_medattn.registration.learned import DEFAULT_MODEL, register_learned
from napari_medattn.widgets.choices import labels_on_scan_grid, on_layers_changed, set_items
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import (
    TRANSFORM_KEY,
    heat_map_layer_data,
    labels_layer_data,
    scan_layers,
)
from napari_medattn.widgets.parts.pickers import ModelPicker, device_choice
from napari_medattn.widgets.register_compare import ComparisonPanel
from napari_medattn.widgets.register_landmarks import LPS_TO_WORLD, MADE_BY, LandmarksPanel
from napari_medattn.widgets.register_live import LiveMovingLayer
from napari_medattn.widgets.register_results import ResultsPanel
from napari_medattn.widgets.tooltips import REGISTER as TOOLTIPS
from napari_medattn.widgets.worker import Job, add_layers

LEARNED_METHODS = ("learned", "learned-refine")
METHODS = ("rigid", "similarity", "affine", "deformable", *LEARNED_METHODS, "landmarks")
#: Methods whose result has a deformable part (their metric is the table's deformable one).
DEFORMABLE_METHODS = ("deformable", *LEARNED_METHODS)
METRICS = ("mse", "ncc", "mi")
NO_MASK = "(none)"
#: How the pair note names each row of the defaults table.
PAIR_KINDS = {"same": "same contrast", "cross": "different contrasts", "pet": "PET pair",
              "unknown": "modality unknown"}

__all__ = ["LPS_TO_WORLD", "RegisterWidget"]


@dataclasses.dataclass
class _Run:
    """What a run (or a loaded transform) was made from."""

    fixed: Volume
    moving: Volume
    method: str
    fixed_layer: str
    moving_layer: str


class RegisterWidget(JobWidget):
    """Dock widget: fixed/moving scans, method and optimiser settings, landmarks, results."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
        self.fixed, self.moving, self.mask = QComboBox(), QComboBox(), QComboBox()
        self.method, self.metric = QComboBox(), QComboBox()
        self.method.addItems(METHODS)
        self.metric.addItems(METRICS)
        self.pair_note = QLabel("")
        self.levels = QLineEdit("4,2,1")
        self.iterations = QSpinBox(minimum=5, maximum=500, value=Settings.iterations)
        self.weight = QDoubleSpinBox(minimum=0.0, maximum=100.0, value=Settings.weight,
                                     singleStep=0.1)
        self.smoothing = QDoubleSpinBox(minimum=0.5, maximum=30.0, value=Settings.smoothing_mm,
                                        suffix=" mm")
        self.device = device_choice()
        # Registration networks by name (none loaded here: register_learned loads the chosen
        # one through the shared model cache), or a model folder the user opens.
        self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"], load=False,
                                 open_button=True, task="registration", default=DEFAULT_MODEL)
        self.keep_button = QPushButton("Stop and keep")
        self.keep_button.setToolTip(TOOLTIPS["keep"])
        self.keep_button.setEnabled(False)
        self.keep_button.clicked.connect(self.stop_and_keep)
        self.transform: Any = None
        self._run: _Run | None = None
        self._defaults_key: tuple | None = None
        self._keep = False
        self._outcome: Any = None  # the worker's result, or the partial transform
        self.live = LiveMovingLayer(self)
        self.landmarks = LandmarksPanel(self)
        self.results = ResultsPanel(self)
        self.views = ComparisonPanel(self)
        self._build_form()
        for box in (self.fixed, self.moving, self.method):
            box.currentTextChanged.connect(self._choices_changed)
        self.jobs.idle.connect(self._job_ended)
        on_layers_changed(napari_viewer, self._refresh)
        self.model.refresh()
        self._refresh()

    # ------------------------------------------------------------------ layout and lists
    def _build_form(self) -> None:
        form = QFormLayout(self)
        for label, box, key in (("Fixed", self.fixed, "fixed"), ("Moving", self.moving, "moving"),
                                ("Defaults", self.pair_note, "defaults"),
                                ("Method", self.method, "method"),
                                ("Metric", self.metric, "metric"),
                                ("Levels", self.levels, "levels"),
                                ("Iterations", self.iterations, "iterations"),
                                ("Regularisation", self.weight, "weight"),
                                ("Smoothness", self.smoothing, "smoothing"),
                                ("Fixed mask", self.mask, "mask"),
                                ("Device", self.device, "device")):
            box.setToolTip(TOOLTIPS[key])
            form.addRow(label, box)
        form.addRow("Model", self.model.row())
        buttons = QHBoxLayout()
        buttons.addWidget(self.jobs)
        buttons.addWidget(self.keep_button)
        form.addRow(buttons)
        form.addRow(self.status)
        form.addRow(self.landmarks)
        form.addRow(self.results)
        form.addRow(self.views)

    def button(self, text: str, action, key: str) -> QPushButton:
        """A push button with its tooltip whose ``action`` reports bad input on the status
        line (:meth:`guarded`)."""
        button = QPushButton(text)
        button.setToolTip(TOOLTIPS[key])
        button.clicked.connect(lambda: self.guarded(action))
        return button

    def guarded(self, action) -> None:
        """Run ``action()``; a :class:`MedAttnError` becomes the status line."""
        try:
            action()
        except MedAttnError as error:
            self.status.setText(str(error))

    def _refresh(self, event: Any = None) -> None:
        names = [layer.name for layer in scan_layers(self.viewer)]
        set_items(self.fixed, names)
        set_items(self.moving, names, fallback=names[1] if len(names) > 1 else None)
        self.results.refresh()
        self._choices_changed()

    def _choices_changed(self, text: str = "") -> None:
        set_items(self.mask, [NO_MASK, *self._masks_on_fixed_grid()])
        # Each box is enabled only where the chosen method reads it.
        method = self.method.currentText()
        classical = method in ENGINE_METHODS
        for box in (self.metric, self.levels, self.weight, self.smoothing, self.mask):
            box.setEnabled(classical)
        self.iterations.setEnabled(classical or method == "learned-refine")
        for box in (self.model, self.model.open_button):
            box.setEnabled(method in LEARNED_METHODS)
        self._apply_defaults()
        self.jobs.refresh()

    def _masks_on_fixed_grid(self) -> list[str]:
        """Labels layers on the fixed scan's grid (same shape and, when they carry one,
        the same patient geometry)."""
        name = self.fixed.currentText()
        if name not in self.viewer.layers:
            return []
        affine = self.viewer.layers[name].metadata[GEOMETRY_KEY].affine
        layers = self.viewer.layers
        return [n for n in labels_on_scan_grid(self.viewer, name)
                if GEOMETRY_KEY not in layers[n].metadata
                or np.allclose(layers[n].metadata[GEOMETRY_KEY].affine, affine, atol=1e-4)]

    def ready(self) -> bool:
        return bool(self.fixed.currentText()) and bool(self.moving.currentText()) and \
            self.fixed.currentText() != self.moving.currentText()

    def volume(self, name: str) -> Volume:
        """The layer ``name`` as a Volume in patient mm."""
        layer = self.viewer.layers[name]
        return layer_volume(layer.data, layer.metadata, name=layer.name)

    # ---------------------------------------------------------- defaults by modality pair
    def _contrasts(self) -> tuple[str, str]:
        return tuple(contrast_of(self.viewer.layers[box.currentText()].metadata[GEOMETRY_KEY])
                     for box in (self.fixed, self.moving))

    def _apply_defaults(self) -> None:
        """Fill the settings from the defaults table when the pair (or linear/deformable)
        changes; later edits by the user stand until then."""
        if not self.ready():
            self.pair_note.setText("")
            self._defaults_key = None
            return
        deformable = self.method.currentText() in DEFORMABLE_METHODS
        key = (self.fixed.currentText(), self.moving.currentText(), deformable)
        if key == self._defaults_key:
            return
        self._defaults_key = key
        contrasts = self._contrasts()
        settings = defaults_for(*contrasts, "deformable" if deformable else "rigid")
        self.metric.setCurrentText(settings.metric)
        self.levels.setText(",".join(str(f) for f in settings.levels))
        self.weight.setValue(settings.weight)
        self.smoothing.setValue(settings.smoothing_mm)
        self.pair_note.setText(f"{contrasts[0]} / {contrasts[1]}: "
                               f"{PAIR_KINDS[pair_kind(*contrasts)]}")

    def settings(self) -> Settings:
        """The engine settings of the boxes (the rest from the pair's defaults)."""
        method = self.method.currentText()
        try:
            levels = tuple(int(f) for f in self.levels.text().split(","))
        except ValueError:
            raise GeometryError("Levels must be comma-separated shrink factors, e.g. "
                                "4,2,1.") from None
        base = defaults_for(*self._contrasts(),
                            "deformable" if method in DEFORMABLE_METHODS else method)
        return dataclasses.replace(
            base, metric=self.metric.currentText(), levels=levels,
            iterations=self.iterations.value(),
            deformable_iterations=deformable_iterations_for(levels),
            weight=self.weight.value(), smoothing_mm=self.smoothing.value(),
            device=self._device())

    def _device(self) -> str:
        device = self.device.currentText()
        return "cpu" if device == "auto" else device

    def _learned_options(self, method: str) -> dict[str, Any]:
        """register_learned's keywords for the chosen model (name or folder)."""
        entry = self.model.entry
        if entry is None:
            raise ModelError("No registration model is installed; open a model folder "
                             "(Open model...) or choose a classical method.")
        if self._mask_volume() is not None:
            raise GeometryError("The learned methods take no mask; choose (none) or the "
                                "deformable method.")
        refine = self.iterations.value() if method == "learned-refine" else 0
        return {"model": str(entry) if isinstance(entry, Path) else entry.name,
                "refine_iterations": refine, "device": self._device()}

    def _mask_volume(self) -> Volume | None:
        name = self.mask.currentText()
        if name in ("", NO_MASK):
            return None
        # On the fixed grid by construction of the list: read it with the fixed geometry
        # (a labels layer the user made in napari carries none of its own).
        fixed_layer = self.viewer.layers[self.fixed.currentText()]
        return layer_volume(self.viewer.layers[name].data, fixed_layer.metadata,
                            modality="SEG", name=name)

    # --------------------------------------------------------------------------- running
    def run(self) -> Job | None:
        try:
            method = self.method.currentText()
            run = _Run(self.volume(self.fixed.currentText()),
                       self.volume(self.moving.currentText()), method,
                       self.fixed.currentText(), self.moving.currentText())
            initial = self.landmarks.fit() if method == "landmarks" or \
                self.landmarks.has_pairs() else None
            if method in LEARNED_METHODS:  # with its own affine pre-alignment
                engine = functools.partial(register_learned, run.fixed, run.moving,
                                           **self._learned_options(method))
            elif method != "landmarks":
                engine = functools.partial(register, run.fixed, run.moving, self.settings(),
                                           initial=initial, fixed_mask=self._mask_volume())
        except MedAttnError as error:
            self.status.setText(str(error))
            return None
        self._run = run
        self.live.start(run.moving_layer)
        self.status.setText("Registering...")
        self._keep, self._outcome = False, None

        def work(progress, cancel):
            if method == "landmarks":
                self._outcome = initial
                return initial
            try:
                result = engine(progress=progress, cancel=cancel,
                                callback=lambda s: self.live.relay(s, run.fixed, run.moving))
            except Cancelled as error:
                self._outcome = getattr(error, "partial", None)
                raise
            self._outcome = result
            return result

        job = self.jobs.start(work, "Register", self._show_result)
        self.keep_button.setEnabled(True)
        return job

    def stop_and_keep(self) -> None:
        """Stop the run at its next check and keep the last state it reached."""
        if self.jobs.busy:
            self._keep = True
            self.jobs.cancel()
            self.status.setText("Stopping; the last state will be kept...")

    def _job_ended(self) -> None:
        """After every outcome: drop the preview; after Stop and keep show the last state;
        after Cancel or a failure put the moving layer back (nothing is kept)."""
        self.keep_button.setEnabled(False)
        self.live.remove_preview()
        job = self.jobs.job
        if job is None or job.outcome == "done":
            return
        if job.outcome == "cancelled" and self._keep and self._outcome is not None:
            try:
                self._show_result(self._outcome)
            except MedAttnError as error:
                self.live.restore()
                self.status.setText(f"{error} Nothing was kept.")
                return
            self.status.setText(f"Stopped; kept the last state of {self._run.moving_layer} "
                                f"({self._run.method}).")
            return
        self.live.restore()
        self.status.setText(f"Registration {job.outcome}; nothing was kept.")

    # ------------------------------------------------------------------------- results
    def show_loaded(self, transform) -> None:
        """Show a transform read from a file as the result for the chosen scans."""
        self._run = _Run(self.volume(self.fixed.currentText()),
                         self.volume(self.moving.currentText()), "file",
                         self.fixed.currentText(), self.moving.currentText())
        self.live.start(self._run.moving_layer)
        self._show_result(transform)

    def _show_result(self, result) -> None:
        """Turn a Result, or a bare transform (landmarks, a file, a stopped run), into
        layers, the QA table and the moving layer's :data:`TRANSFORM_KEY` record."""
        from napari_medattn.metrics.registration import registration_quality

        fixed, moving = self._run.fixed, self._run.moving
        transform = getattr(result, "transform", result)
        layers = []
        if isinstance(transform, LinearTransform):
            self.live.place(transform)
        else:
            # The moving layer showed the affine stage's preview; the result is the
            # resampled layer below, so the moving scan goes back where it was.
            self.live.restore()
            transform = bake(transform, fixed.affine, fixed.spatial_shape)
            warped = warp(moving, transform, fixed)
            data, kwargs, kind = heat_map_layer_data(warped, MADE_BY, {})
            kwargs.update(colormap="gray", blending="translucent", opacity=1.0)
            layers.append((data, kwargs, kind))
        similarity = ((result.loss_before, result.loss_after) if hasattr(result, "loss_after")
                      else None)
        points = self.landmarks.points() if self.landmarks.has_pairs() else None
        quality, det_j = registration_quality(transform, fixed, landmarks=points,
                                              similarity=similarity)
        if not isinstance(transform, LinearTransform):
            det = volume_like(fixed, (det_j - 1).astype(np.float32), modality="OT",
                              name=f"{moving.name} det J - 1")
            layers.append(heat_map_layer_data(det, MADE_BY, {}, signed=True))
            folds = det_j <= 0
            if folds.any():
                layers.append(labels_layer_data(volume_like(
                    fixed, folds.astype(np.uint8), name=f"{moving.name} folds"), MADE_BY, {}))
        add_layers(self.viewer, layers, widget=self)
        self.transform = transform
        self.viewer.layers[self._run.moving_layer].metadata[TRANSFORM_KEY] = {
            "fixed": self.viewer.layers[self._run.fixed_layer].unique_id,
            "transform": transform, "method": self._run.method}
        self.results.show_quality(quality)
        self.status.setText(f"Registered {moving.name} to {fixed.name}.")

    def need_transform(self):
        """The last result's transform (fixed mm -> moving mm)."""
        if self.transform is None:
            raise GeometryError("Register or load a transform first.")
        return self.transform
