"""Register widget: align a moving scan to a fixed scan, live, with QA and saved transforms.

The computation is :func:`napari_medattn.registration.register` (and
:func:`~napari_medattn.registration.fit_landmarks` for landmarks) run on the one Job helper;
this widget collects the parameters, shows the optimisation as it goes and turns results
into layers. Live preview: every snapshot the engine hands back is relayed to the GUI
thread at most :data:`PREVIEW_INTERVAL_S` apart; a linear transform moves the moving
layer through its napari affine (nothing is resampled), a deformable one is shown by a
preview layer resampled on the fixed grid in the worker. A linear result stays as the
moving layer's affine; a deformable one adds the moving scan on the fixed grid, a det J
layer (det J - 1, diverging colours) and a folds layer when any voxel folds. Cancel keeps
nothing: the moving layer goes back where it was. The comparison views are the fusion
library's (:mod:`napari_medattn.fusion.compose`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from napari.layers import Labels, Points
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)

from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume
from napari_medattn.errors import GeometryError, MedAttnError
from napari_medattn.fusion.compose import checkerboard, difference
from napari_medattn.io import volume_like
from napari_medattn.registration import (
    LinearTransform,
    Settings,
    bake,
    fit_landmarks,
    grid_lines,
    landmark_errors,
    read_transform,
    register,
    warp,
    write_transform,
)
from napari_medattn.widgets.choices import on_layers_changed, set_items
from napari_medattn.widgets.parts import (
    DERIVED_KEY,
    JobWidget,
    device_choice,
    heat_map_layer_data,
    labels_layer_data,
    scan_layers,
)
from napari_medattn.widgets.tooltips import REGISTER as TOOLTIPS
from napari_medattn.widgets.worker import add_layers

METHODS = ("rigid", "similarity", "affine", "deformable", "landmarks")
METRICS = ("auto", "mse", "ncc", "mi")
COMPARISONS = ("checkerboard", "difference")
#: Longest wait between two preview updates while a registration runs (seconds).
PREVIEW_INTERVAL_S = 0.5
#: LPS (x, y, z) -> napari world (z, y, x).
LPS_TO_WORLD = np.eye(4)[[2, 1, 0, 3]]
MADE_BY = "register"


class _PreviewRelay(QObject):
    """Carries snapshots from the worker thread to the GUI thread (queued signal)."""

    snapshot = Signal(object)


class RegisterWidget(JobWidget):
    """Dock widget: fixed/moving scans, method and optimiser settings, landmarks, results."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
        self.fixed, self.moving, self.labels = QComboBox(), QComboBox(), QComboBox()
        self.method, self.metric = QComboBox(), QComboBox()
        self.method.addItems(METHODS)
        self.metric.addItems(METRICS)
        self.levels = QLineEdit("4,2,1")
        self.iterations = QSpinBox(minimum=5, maximum=500, value=20)
        self.weight = QDoubleSpinBox(minimum=0.0, maximum=100.0, value=2.0, singleStep=0.1)
        self.smoothing = QDoubleSpinBox(minimum=0.5, maximum=30.0, value=4.0, suffix=" mm")
        self.device = device_choice()
        self.residuals = QTableWidget(0, 2)
        self.residuals.setHorizontalHeaderLabels(["pair", "residual (mm)"])
        self.quality = QTableWidget(0, 2)
        self.quality.setHorizontalHeaderLabels(["measure", "value"])
        self.comparison = QComboBox()
        self.comparison.addItems(COMPARISONS)
        self.tile = QDoubleSpinBox(minimum=1.0, maximum=100.0, value=10.0, suffix=" mm")
        self.fade = QSlider(Qt.Orientation.Horizontal)
        self.fade.setRange(0, 100)
        self.fade.setValue(100)
        self.transform: Any = None
        self._original: dict[str, Any] | None = None
        self._last_preview = 0.0
        self._relay = _PreviewRelay()
        self._relay.snapshot.connect(self._show_snapshot)
        self._build_form()
        self.jobs.idle.connect(self._job_ended)
        on_layers_changed(napari_viewer, self._refresh)
        self._refresh()

    # ------------------------------------------------------------------ layout and lists
    def _build_form(self) -> None:
        form = QFormLayout(self)
        for label, box, key in (("Fixed", self.fixed, "fixed"), ("Moving", self.moving, "moving"),
                                ("Method", self.method, "method"),
                                ("Metric", self.metric, "metric"),
                                ("Levels", self.levels, "levels"),
                                ("Iterations", self.iterations, "iterations"),
                                ("Regularisation", self.weight, "weight"),
                                ("Smoothness", self.smoothing, "smoothing"),
                                ("Device", self.device, "device")):
            box.setToolTip(TOOLTIPS[key])
            form.addRow(label, box)
        form.addRow(self.jobs)
        form.addRow(self.status)
        points = self._button("Add landmark layers", self.add_landmark_layers, "landmarks")
        form.addRow(points)
        form.addRow(self.residuals)
        form.addRow("QA", self.quality)
        apply_row = QHBoxLayout()
        apply_row.addWidget(self.labels)
        apply_row.addWidget(self._button("Apply to labels", self.apply_to_labels, "apply"))
        form.addRow("Labels", apply_row)
        files = QHBoxLayout()
        files.addWidget(self._button("Save transform...", self.save_transform, "save"))
        files.addWidget(self._button("Load transform...", self.load_transform, "load"))
        form.addRow(files)
        form.addRow(self._button("Deformation grid", self.deformation_grid, "grid"))
        compare = QHBoxLayout()
        compare.addWidget(self.comparison)
        compare.addWidget(self.tile)
        compare.addWidget(self._button("Compare", self.compare, "compare"))
        form.addRow("View", compare)
        self.fade.setToolTip(TOOLTIPS["fade"])
        self.fade.valueChanged.connect(self._fade)
        form.addRow("Fade", self.fade)

    def _button(self, text: str, action, key: str) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(TOOLTIPS[key])
        button.clicked.connect(lambda: self._guarded(action))
        return button

    def _guarded(self, action) -> None:
        try:
            action()
        except MedAttnError as error:
            self.status.setText(str(error))

    def _refresh(self, event: Any = None) -> None:
        names = [layer.name for layer in scan_layers(self.viewer)]
        set_items(self.fixed, names)
        set_items(self.moving, names, fallback=names[1] if len(names) > 1 else None)
        set_items(self.labels, [layer.name for layer in self.viewer.layers
                                if isinstance(layer, Labels) and GEOMETRY_KEY in layer.metadata])
        self.jobs.refresh()

    def ready(self) -> bool:
        return bool(self.fixed.currentText()) and bool(self.moving.currentText()) and \
            self.fixed.currentText() != self.moving.currentText()

    def _volume(self, name: str):
        layer = self.viewer.layers[name]
        return layer_volume(layer.data, layer.metadata, name=layer.name)

    # ------------------------------------------------------------------------- landmarks
    def _points_layers(self) -> tuple[Points | None, Points | None]:
        names = (f"{self.fixed.currentText()} landmarks", f"{self.moving.currentText()} landmarks")
        layers = [self.viewer.layers[n] if n in self.viewer.layers else None for n in names]
        return layers[0], layers[1]

    def add_landmark_layers(self) -> None:
        """Two Points layers, one per scan; points pair by the order they are added."""
        for name, colour in ((self.fixed.currentText(), "cyan"),
                             (self.moving.currentText(), "yellow")):
            if f"{name} landmarks" not in self.viewer.layers:
                layer = self.viewer.add_points(
                    np.empty((0, 3)), name=f"{name} landmarks", ndim=3, face_color=colour,
                    size=4, metadata={DERIVED_KEY: MADE_BY})
                layer.mode = "add"
                layer.events.data.connect(lambda event: self._guarded(self.update_residuals))

    def landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """The paired points in LPS mm (fixed, moving), as many as both layers have."""
        fixed_layer, moving_layer = self._points_layers()
        if fixed_layer is None or moving_layer is None:
            raise GeometryError("Add the landmark layers and click pairs of points first.")
        count = min(len(fixed_layer.data), len(moving_layer.data))
        world_to_lps = LPS_TO_WORLD[:3, :3].T
        return (np.asarray(fixed_layer.data[:count]) @ world_to_lps,
                np.asarray(moving_layer.data[:count]) @ world_to_lps)

    def update_residuals(self) -> None:
        """Refit the landmarks and show each pair's residual (mm), live while clicking."""
        fixed, moving = self.landmarks()
        self.residuals.setRowCount(0)
        if len(fixed) < 3:
            return
        fit = fit_landmarks(fixed, moving, self._landmark_kind())
        for row, error in enumerate(landmark_errors(fit, fixed, moving)):
            self.residuals.insertRow(row)
            self.residuals.setItem(row, 0, QTableWidgetItem(str(row + 1)))
            self.residuals.setItem(row, 1, QTableWidgetItem(f"{error:.2f}"))

    def _landmark_kind(self) -> str:
        method = self.method.currentText()
        return method if method in ("rigid", "similarity", "affine") else "rigid"

    # --------------------------------------------------------------------------- running
    def settings(self) -> Settings:
        method = self.method.currentText()
        metric = self.metric.currentText()
        if metric == "auto":
            metric = "ncc" if method == "deformable" else "mi"
        try:
            levels = tuple(int(f) for f in self.levels.text().split(","))
        except ValueError:
            raise GeometryError("Levels must be comma-separated shrink factors, e.g. "
                                "4,2,1.") from None
        device = self.device.currentText()
        return Settings(method=method, metric=metric, levels=levels,
                        iterations=self.iterations.value(),
                        deformable_iterations=tuple(max(10, 80 // f) for f in levels),
                        weight=self.weight.value(), smoothing_mm=self.smoothing.value(),
                        device="cpu" if device == "auto" else device)

    def run(self):
        try:
            fixed = self._volume(self.fixed.currentText())
            moving = self._volume(self.moving.currentText())
            initial = None
            if self.method.currentText() == "landmarks" or self._has_landmarks():
                initial = fit_landmarks(*self.landmarks(), self._landmark_kind())
            settings = None if self.method.currentText() == "landmarks" else self.settings()
        except MedAttnError as error:
            self.status.setText(str(error))
            return None
        self._remember_moving_layer()
        self.status.setText("Registering...")
        self._last_preview = 0.0

        def work(progress, cancel):
            if settings is None:
                return initial
            return register(fixed, moving, settings, initial=initial, progress=progress,
                            cancel=cancel, callback=lambda s: self._preview(s, fixed, moving))

        return self.jobs.start(work, "Register",
                               lambda result: self._show_result(result, fixed, moving))

    def _job_ended(self) -> None:
        """After every outcome: drop the preview; after a cancel or failure put the
        moving layer back (Cancel keeps nothing)."""
        self._remove_preview()
        job = self.jobs.job
        if job is not None and job.outcome != "done":
            self._restore_moving_layer()
            self.status.setText(f"Registration {job.outcome}; nothing was kept.")

    def _has_landmarks(self) -> bool:
        fixed_layer, moving_layer = self._points_layers()
        return fixed_layer is not None and moving_layer is not None and min(
            len(fixed_layer.data), len(moving_layer.data)) >= 3

    def _preview(self, snapshot, fixed, moving) -> None:
        """Worker thread: throttle, resample deformable snapshots, relay to the GUI."""
        now = time.perf_counter()
        if now - self._last_preview < PREVIEW_INTERVAL_S:
            return
        self._last_preview = now
        transform = snapshot.transform
        if isinstance(transform, LinearTransform):
            self._relay.snapshot.emit((snapshot, None))
        else:
            self._relay.snapshot.emit((snapshot, warp(moving, transform, fixed)))

    def _show_snapshot(self, item) -> None:
        snapshot, warped = item
        self.status.setText(f"{snapshot.stage}, level {snapshot.level + 1}: metric "
                            f"{snapshot.loss:.4g}")
        if warped is None:
            self._place_moving_layer(snapshot.transform)
            return
        name = f"{self.moving.currentText()} (preview)"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = warped.data
        else:
            data, kwargs, kind = heat_map_layer_data(warped, MADE_BY, {})
            kwargs.update(name=name, colormap="gray", blending="translucent", opacity=1.0)
            add_layers(self.viewer, [(data, kwargs, kind)], widget=self)

    def _remove_preview(self) -> None:
        name = f"{self.moving.currentText()} (preview)"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    # ------------------------------------------------------------- moving layer placement
    def _remember_moving_layer(self) -> None:
        layer = self.viewer.layers[self.moving.currentText()]
        self._original = {"name": layer.name, "scale": np.array(layer.scale),
                          "translate": np.array(layer.translate),
                          "affine": np.array(layer.affine.affine_matrix)}

    def _restore_moving_layer(self) -> None:
        if self._original and self._original["name"] in self.viewer.layers:
            layer = self.viewer.layers[self._original["name"]]
            layer.affine = self._original["affine"]
            layer.scale, layer.translate = self._original["scale"], self._original["translate"]

    def _place_moving_layer(self, transform: LinearTransform) -> None:
        """Show the moving layer where the transform puts it in fixed space, through its
        napari affine (world = inverse(T) of its exact patient position)."""
        layer = self.viewer.layers[self.moving.currentText()]
        geometry = layer.metadata[GEOMETRY_KEY].affine
        layer.scale, layer.translate = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
        layer.affine = LPS_TO_WORLD @ np.linalg.inv(transform.matrix) @ geometry

    # ------------------------------------------------------------------------- results
    def _show_result(self, transform, fixed, moving) -> None:
        from napari_medattn.metrics.registration import registration_quality

        result = transform
        transform = getattr(result, "transform", result)
        self.transform = transform
        layers = []
        if isinstance(transform, LinearTransform):
            self._place_moving_layer(transform)
        else:
            # The moving layer showed the affine stage's preview; the result is the
            # resampled layer below, so the moving scan goes back where it was.
            self._restore_moving_layer()
            transform = bake(transform, fixed.affine, fixed.spatial_shape)
            self.transform = transform
            warped = warp(moving, transform, fixed)
            data, kwargs, kind = heat_map_layer_data(warped, MADE_BY, {})
            kwargs.update(colormap="gray", blending="translucent", opacity=1.0)
            layers.append((data, kwargs, kind))
        similarity = ((result.loss_before, result.loss_after) if hasattr(result, "loss_after")
                      else None)
        points = self.landmarks() if self._has_landmarks() else None
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
        self._fill_quality(quality)
        self.status.setText(f"Registered {moving.name} to {fixed.name}.")

    def _fill_quality(self, quality) -> None:
        rows = [("folding (%)", f"{quality.folding_percent:.3f}"),
                ("SDlogJ", f"{quality.sdlogj:.4f}"),
                ("det J min / max", f"{quality.det_j_min:.3f} / {quality.det_j_max:.3f}")]
        if quality.tre_mean_mm is not None:
            rows.append(("landmark TRE (mm)", f"{quality.tre_mean_mm:.2f}"))
        if quality.similarity_after is not None:
            rows.append(("metric before / after", f"{quality.similarity_before:.4g} / "
                                                  f"{quality.similarity_after:.4g}"))
        self.quality.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            self.quality.setItem(row, 0, QTableWidgetItem(name))
            self.quality.setItem(row, 1, QTableWidgetItem(value))

    def _need_transform(self):
        if self.transform is None:
            raise GeometryError("Register or load a transform first.")
        return self.transform

    def apply_to_labels(self) -> None:
        """Warp the chosen labels layer (drawn on the moving scan) onto the fixed grid,
        nearest neighbour; class names are kept."""
        transform = self._need_transform()
        layer = self.viewer.layers[self.labels.currentText()]
        labels = layer_volume(layer.data, layer.metadata, modality="SEG", name=layer.name)
        fixed = self._volume(self.fixed.currentText())
        moved = warp(labels, transform, fixed, labels=True,
                     name=f"{layer.name} on {fixed.name}")
        add_layers(self.viewer, [labels_layer_data(moved, MADE_BY, {})], widget=self)

    def save_transform(self, path: str | None = None) -> None:
        transform = self._need_transform()
        suffix = "ITK transform (*.tfm)" if isinstance(transform, LinearTransform) else \
            "Displacement field (*.nii.gz)"
        path = path or QFileDialog.getSaveFileName(self, "Save transform", "", suffix)[0]
        if path:
            write_transform(path, transform)
            self.status.setText(f"Saved {path}.")

    def load_transform(self, path: str | None = None) -> None:
        path = path or QFileDialog.getOpenFileName(
            self, "Load transform", "", "Transforms (*.tfm *.txt *.mat *.nii *.nii.gz)")[0]
        if not path:
            return
        transform = read_transform(path)
        fixed = self._volume(self.fixed.currentText())
        from napari_medattn.registration.itk_files import check_fits

        check_fits(transform, fixed.affine, fixed.spatial_shape)
        self._remember_moving_layer()
        self._show_result(transform, fixed, self._volume(self.moving.currentText()))

    def deformation_grid(self, step_mm: float = 8.0) -> None:
        """A Shapes layer of grid lines on the current axial slice of the fixed scan,
        moved by the transform (in-plane part; straight lines: no deformation)."""
        transform = self._need_transform()
        fixed = self._volume(self.fixed.currentText())
        # The fixed layer's data are canonical: array axis 0 is world axis 0 (z).
        z = self.viewer.dims.point[0]
        to_index = np.linalg.inv(fixed.affine)
        point = LPS_TO_WORLD[:3, :3].T @ np.asarray(self.viewer.dims.point[-3:], float)
        index = int(np.clip(round(float(to_index[0, :3] @ point + to_index[0, 3])), 0,
                            fixed.spatial_shape[0] - 1))
        lines = grid_lines(transform, fixed, axis=0, index=index, step_mm=step_mm)
        paths = [line @ LPS_TO_WORLD[:3, :3].T for line in lines]
        self.viewer.add_shapes(paths, shape_type="path", edge_color="yellow", edge_width=0.4,
                               name=f"deformation grid z {z:.1f} mm",
                               metadata={DERIVED_KEY: MADE_BY})

    def compare(self) -> None:
        """A checkerboard (tiles in mm) or difference layer of fixed and registered moving,
        on the fixed grid (the fusion library's composition)."""
        transform = self._need_transform()
        fixed = self._volume(self.fixed.currentText())
        moved = warp(self._volume(self.moving.currentText()), transform, fixed)
        base = np.asarray(fixed.data, np.float32)
        if self.comparison.currentText() == "checkerboard":
            values = checkerboard(base, moved.data, fixed.spacing, self.tile.value())
            signed = False
        else:
            values = difference(base, moved.data)
            signed = True
        view = volume_like(fixed, values, modality=fixed.modality,
                           name=f"{self.comparison.currentText()} {fixed.name}")
        layer = heat_map_layer_data(view, MADE_BY, {}, signed=signed)
        if not signed:
            layer[1].update(colormap="gray", blending="translucent", opacity=1.0)
        add_layers(self.viewer, [layer], widget=self)

    def _fade(self, value: int) -> None:
        name = self.moving.currentText()
        if name in self.viewer.layers:
            self.viewer.layers[name].opacity = value / 100.0
