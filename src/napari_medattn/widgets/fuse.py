"""Fuse widget: a base scan and overlays (PET/CT, MR/CT, before/after) in patient space.

The arithmetic is in :mod:`napari_medattn.fusion` (windows, colour tables, checkerboard,
resampling onto the base grid); this widget styles layers and starts the resampling job.
An overlay napari can place by its own affine (axis-aligned, no rotating transform) is
shown as it is, without resampling; an oblique one, or one seen through a rotating or
deformable transform, is resampled onto the base grid in the background and the status
line says so. The transform is the one opened from a file, else the Register widget's
result when the overlay was registered to the base (the overlay layer's
:data:`~napari_medattn.widgets.parts.layers.TRANSFORM_KEY` record names the base as its
fixed layer). The window, colormap and opacity controls act on the overlay chosen in the
Overlay box; each overlay keeps its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import Colormap
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
)

from napari_medattn.display.layers import GEOMETRY_KEY, volume_layer_data
from napari_medattn.io.units import intensity_unit
from napari_medattn.display.window_level import CT_PRESETS
from napari_medattn.errors import MedAttnError
from napari_medattn.fusion.align import display_affine, overlay_on_grid
from napari_medattn.io import Volume
from napari_medattn.fusion.compose import (
    MODALITY_NAMES,
    OVERLAY_COLORMAPS,
    PET_PRESETS,
    apply_window,
    checkerboard_mask,
    fused_values_text,
    overlay_lut_rgba,
    preset_window,
)
from napari_medattn.registration.itk_files import read_transform
from napari_medattn.widgets.choices import on_layers_changed, set_items
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import DERIVED_KEY, TRANSFORM_KEY, scan_layers
from napari_medattn.widgets.radiology_view import viewer_camera
from napari_medattn.widgets.three_planes import set_three_planes
from napari_medattn.widgets.tooltips import FUSE as TOOLTIPS
from napari_medattn.widgets.worker import Job, add_layers

MODES = ("blend", "checkerboard", "difference", "side by side")
CUSTOM = "custom"
#: ``layer.metadata`` key of the Fuse widget's layers: ``{"overlay": name, "role":
#: "resampled" | "checkerboard" | "difference"}``.
FUSE_KEY = "medattn_fuse"
#: Rotation of the 3D MIP per timer tick (degrees) and the tick (ms): 10 s per turn.
MIP_STEP_DEG, MIP_TICK_MS = 3.0, 83
_LOWEST = np.finfo(np.float32).min  # below every window: drawn transparent


class FuseWidget(JobWidget):
    """Base and overlays: colormap, window, opacity, fade, mode, three planes, 3D MIP."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS, run_text="Fuse")
        self.transform: Any = None  # opened from a file ("Open..."): wins over Register's
        self.transform_name = "from a file"
        self.shown: dict[str, Image] = {}  # overlay name -> the layer that displays it
        self.base, self.overlay = QComboBox(), QComboBox()
        self.transform_label = QLabel("none")
        self.open_transform = QPushButton("Open...")
        self.colormap = QComboBox()
        self.colormap.addItems(OVERLAY_COLORMAPS)
        self.preset = QComboBox()
        self.preset.addItems([*PET_PRESETS, *CT_PRESETS, CUSTOM])
        self.low, self.high = QDoubleSpinBox(), QDoubleSpinBox()
        for box in (self.low, self.high):
            box.setRange(-1e6, 1e6)
            box.setDecimals(2)
        self.opacity, self.fade = _slider(100), _slider(50)
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.tile = QDoubleSpinBox()
        self.tile.setRange(1.0, 500.0)
        self.tile.setValue(20.0)
        self.tile.setSuffix(" mm")
        self.planes = QCheckBox("Axial, coronal and sagittal, linked")
        self.mip = QCheckBox("Rotating MIP of the overlay (3D)")
        self._timer = QTimer(self)
        self._timer.setInterval(MIP_TICK_MS)
        self._timer.timeout.connect(self._rotate)
        self._layout()
        self._connect()
        on_layers_changed(napari_viewer, self._refresh)
        self._refresh()

    # ------------------------------------------------------------------------ layout
    def _layout(self) -> None:
        for key, widget in (("base", self.base), ("overlay", self.overlay),
                            ("transform", self.open_transform), ("colormap", self.colormap),
                            ("preset", self.preset), ("low", self.low), ("high", self.high),
                            ("opacity", self.opacity), ("fade", self.fade),
                            ("mode", self.mode), ("tile", self.tile),
                            ("planes", self.planes), ("mip", self.mip)):
            widget.setToolTip(TOOLTIPS[key])
        form = QFormLayout(self)
        form.addRow("Base", self.base)
        form.addRow("Overlay", self.overlay)
        row = QHBoxLayout()
        row.addWidget(self.transform_label, 1)
        row.addWidget(self.open_transform)
        form.addRow("Transform", row)
        form.addRow(self.jobs)
        form.addRow("Colormap", self.colormap)
        form.addRow("Window", self.preset)
        window = QHBoxLayout()
        window.addWidget(self.low)
        window.addWidget(self.high)
        form.addRow("Low / high", window)
        form.addRow("Opacity", self.opacity)
        form.addRow("Fade", self.fade)
        form.addRow("Mode", self.mode)
        form.addRow("Tile", self.tile)
        form.addRow(self.planes)
        form.addRow(self.mip)
        form.addRow(self.status)

    def _connect(self) -> None:
        self.overlay.currentTextChanged.connect(self._show_overlay_settings)
        self.overlay.currentTextChanged.connect(lambda _t: self._show_transform())
        self.base.currentTextChanged.connect(lambda _t: self._show_transform())
        self.open_transform.clicked.connect(self._open_transform)
        self.colormap.currentTextChanged.connect(lambda _t: self._restyle())
        self.preset.currentTextChanged.connect(self._apply_preset)
        self.low.valueChanged.connect(lambda _v: self._set_window())
        self.high.valueChanged.connect(lambda _v: self._set_window())
        self.opacity.valueChanged.connect(lambda _v: self._set_opacity())
        self.fade.valueChanged.connect(lambda _v: self._set_opacity())
        self.mode.currentTextChanged.connect(lambda _t: self.apply_mode())
        self.tile.valueChanged.connect(lambda _v: self.apply_mode())
        self.planes.toggled.connect(lambda on: set_three_planes(self.viewer, on))
        self.mip.toggled.connect(self._set_mip)

    def _refresh(self, event: Any = None) -> None:
        names = [layer.name for layer in scan_layers(self.viewer)]
        set_items(self.base, names)
        set_items(self.overlay, [n for n in names if n != self.base.currentText()])
        self.shown = {k: v for k, v in self.shown.items() if v in self.viewer.layers}
        self._show_transform()
        self.jobs.refresh()

    def ready(self) -> bool:
        return bool(self.base.currentText()) and bool(self.overlay.currentText())

    # ----------------------------------------------------------------- fusing overlays
    def run(self) -> Job | None:
        """Show the chosen overlay over the base: as it is where napari can place it,
        else resampled onto the base grid in the background."""
        base = self.viewer.layers[self.base.currentText()]
        layer = self.viewer.layers[self.overlay.currentText()]
        overlay = layer.metadata[GEOMETRY_KEY]
        transform = self._show_transform()
        placed = display_affine(overlay, transform)
        if placed is not None and transform is None:
            self._fused(layer, layer)
            self.status.setText(f"{layer.name} is placed by its own geometry (no resampling).")
            return None
        if placed is not None:
            # The transform only scales and shifts along the patient axes: the overlay's
            # own voxels (the same array), placed where the transform puts them.
            moved = Volume(overlay.data, placed, overlay.modality,
                           {**overlay.meta, "name": f"{layer.name} (transformed)"})
            data, kwargs, kind = volume_layer_data(moved, "image")
            kwargs["metadata"][DERIVED_KEY] = "fuse"
            kwargs["metadata"][FUSE_KEY] = {"overlay": layer.name, "role": "placed"}
            self._resampled(layer, [(data, kwargs, kind)])
            self.status.setText(f"{layer.name} is placed where the transform puts it (no "
                                f"resampling).")
            return None
        scan, name = base.metadata[GEOMETRY_KEY], layer.name

        def work(progress, cancel):
            progress(0, 1)
            volume = overlay_on_grid(overlay, scan, transform)
            data, kwargs, kind = volume_layer_data(volume, "image")
            kwargs["metadata"][DERIVED_KEY] = "fuse"
            kwargs["metadata"][FUSE_KEY] = {"overlay": name, "role": "resampled"}
            progress(1, 1)
            return [(data, kwargs, kind)]

        reason = "oblique" if overlay.is_oblique else "seen through the transform"
        self.status.setText(f"{name} is {reason}: resampled onto {base.name}'s grid.")
        return self.jobs.start(work, "Fuse", lambda result: self._resampled(layer, result))

    def _resampled(self, source: Image, layer_data: list) -> None:
        for role in ("resampled", "placed"):
            self._remove_derived(source.name, role)
        (shown,) = add_layers(self.viewer, layer_data, widget=self)
        source.visible = False
        self._fused(source, shown)

    def _fused(self, source: Image, shown: Image) -> None:
        self.shown[source.name] = shown
        # PET opens in an SUV window; other overlays keep the window they opened with.
        if source.metadata[GEOMETRY_KEY].modality == "PT":
            name = self.preset.currentText()
            name = name if name in PET_PRESETS else next(iter(PET_PRESETS))
            limits = preset_window(name)
        else:
            name, limits = CUSTOM, tuple(shown.contrast_limits)
        self.preset.blockSignals(True)
        self.preset.setCurrentText(name)
        self.preset.blockSignals(False)
        self._set_limits(*limits)
        self._attach_status(shown)
        self._attach_status(self.viewer.layers[self.base.currentText()])
        self._restyle()
        self.apply_mode()

    def current(self) -> Image | None:
        """The layer that displays the overlay chosen in the Overlay box, once fused."""
        return self.shown.get(self.overlay.currentText())

    # ------------------------------------------------------------------- overlay style
    def _show_overlay_settings(self, name: str) -> None:
        layer = self.shown.get(name)
        if layer is None:
            return
        self._set_limits(*layer.contrast_limits)
        self.preset.setCurrentText(CUSTOM)

    def _restyle(self) -> None:
        layer = self.current()
        if layer is None:
            return
        layer.colormap = Colormap(overlay_lut_rgba(self.colormap.currentText()),
                                  name=f"fuse {self.colormap.currentText()}")
        layer.blending = "translucent"
        self._set_window()
        self._set_opacity()

    def _apply_preset(self, name: str) -> None:
        if name != CUSTOM:
            self._set_limits(*preset_window(name))

    def _set_limits(self, low: float, high: float) -> None:
        for box, value in ((self.low, low), (self.high, high)):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self._set_window()

    def _set_window(self) -> None:
        layer, low, high = self.current(), self.low.value(), self.high.value()
        if layer is not None and high > low:
            layer.contrast_limits = (low, high)
            for other in self._derived(self.overlay.currentText(), "checkerboard"):
                other.contrast_limits = (low, high)

    def _set_opacity(self) -> None:
        """Overlay opacity times the fade: fade 0 shows the base alone, 1 the overlay at
        its full opacity (over the base where the overlay is below its window)."""
        layer = self.current()
        if layer is not None and self.mode.currentText() == "blend":
            layer.opacity = self.opacity.value() / 100.0 * self.fade.value() / 100.0

    # -------------------------------------------------------------------------- modes
    def apply_mode(self) -> None:
        """Show the fused overlays in the chosen mode."""
        name, layer = self.overlay.currentText(), self.current()
        if layer is None:
            return
        mode = self.mode.currentText()
        _grid(self.viewer).enabled = mode == "side by side"
        for role in ("checkerboard", "difference"):
            if role != mode:
                self._remove_derived(name, role)
        layer.visible = mode in ("blend", "side by side")
        if mode == "side by side":
            layer.opacity = 1.0
        elif mode == "blend":
            self._set_opacity()
        elif mode == "checkerboard":
            self._show_checkerboard(name, layer)
        else:
            self._show_difference(name, layer)

    def _show_checkerboard(self, name: str, layer: Image) -> None:
        spacing = np.asarray(layer.scale[-3:], dtype=np.float64)
        mask = checkerboard_mask(layer.data.shape[-3:], spacing, self.tile.value())
        data = np.where(mask, _LOWEST, np.asarray(layer.data, dtype=np.float32))
        self._replace_derived(name, "checkerboard", data, layer, layer.colormap,
                              layer.contrast_limits)

    def _show_difference(self, name: str, layer: Image) -> None:
        base = self.viewer.layers[self.base.currentText()]
        if layer.data.shape != base.data.shape or not np.allclose(layer.scale, base.scale) \
                or not np.allclose(layer.translate, base.translate):
            self.status.setText(f"Difference needs {name} on {base.name}'s grid: set a "
                                f"transform or open it on that grid, then Fuse.")
            return
        diff = apply_window(base.data, *base.contrast_limits) - apply_window(
            layer.data, *layer.contrast_limits)
        self._replace_derived(name, "difference", diff, layer, "gray", (-1.0, 1.0))

    def _replace_derived(self, name: str, role: str, data: np.ndarray, like: Image,
                         colormap: Any, limits: tuple) -> None:
        self._remove_derived(name, role)
        metadata = {GEOMETRY_KEY: like.metadata[GEOMETRY_KEY], DERIVED_KEY: "fuse",
                    FUSE_KEY: {"overlay": name, "role": role}}
        add_layers(self.viewer, [(data, {
            "name": f"{name} {role}", "scale": like.scale, "translate": like.translate,
            "colormap": colormap, "contrast_limits": limits, "metadata": metadata,
            "blending": "translucent", "units": like.units, "axis_labels": like.axis_labels,
        }, "image")], widget=self)

    def _derived(self, name: str, role: str) -> list[Image]:
        return [layer for layer in self.viewer.layers
                if layer.metadata.get(FUSE_KEY) == {"overlay": name, "role": role}]

    def _remove_derived(self, name: str, role: str) -> None:
        for layer in self._derived(name, role):
            self.viewer.layers.remove(layer)

    # ------------------------------------------------------------ transform, 3D, cursor
    def chosen_transform(self) -> tuple[Any, str]:
        """The transform the overlay is seen through (fixed = base mm -> overlay mm), and
        what the Transform row says about it.

        A transform opened from a file comes first; else the Register widget's result
        stored on the overlay layer, when its fixed layer is the base; else none.
        """
        if self.transform is not None:
            return self.transform, self.transform_name
        base, overlay = self.base.currentText(), self.overlay.currentText()
        if base in self.viewer.layers and overlay in self.viewer.layers:
            record = self.viewer.layers[overlay].metadata.get(TRANSFORM_KEY)
            if record and record.get("fixed") == self.viewer.layers[base].unique_id:
                return record["transform"], f"from Register ({record.get('method', '?')})"
        return None, "none"

    def _show_transform(self) -> Any:
        # Register stores its record when a run ends, without an event: read it again
        # whenever the choice of layers changes and at each Fuse.
        transform, text = self.chosen_transform()
        self.transform_label.setText(text)
        return transform

    def _open_transform(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Registration transform (fixed -> moving)")
        if not path:
            return
        try:
            self.transform = read_transform(path)
        except MedAttnError as error:
            self.status.setText(str(error))
            return
        self.transform_name = path.rsplit("/", 1)[-1]
        self._show_transform()

    def _set_mip(self, on: bool) -> None:
        layer = self.current()
        if layer is None:
            if on:
                self.mip.setChecked(False)
            return
        self.viewer.dims.ndisplay = 3 if on else 2
        layer.rendering = "mip" if on else "attenuated_mip"
        # The projection alone, fully opaque; back to the fade's opacity afterwards.
        if on:
            layer.opacity = 1.0
        else:
            self._set_opacity()
        base = self.viewer.layers[self.base.currentText()]
        base.visible = not on
        if on:
            self._timer.start()
        else:
            self._timer.stop()

    def _rotate(self) -> None:
        camera = viewer_camera(self.viewer)
        angles = list(camera.angles)
        angles[1] = (angles[1] + MIP_STEP_DEG) % 360.0
        camera.angles = tuple(angles)

    def _attach_status(self, layer: Image) -> None:
        """Make the layer's cursor line list every fused layer's value with its unit."""
        if getattr(layer, "_medattn_fuse_status", False):
            return
        previous = layer.get_status

        def get_status(position=None, **kwargs: Any) -> dict:
            status = previous(position, **kwargs)
            if position is not None and kwargs.get("world", False):
                coords = status.get("coords", "")
                status["coordinates"] = f"{coords}: {self.cursor_text(position)}"
            return status

        layer.get_status = get_status
        layer._medattn_fuse_status = True

    def cursor_text(self, position: Any) -> str:
        """``"CT 45 HU · PET 6.2 SUV"`` at a world position (mm)."""
        entries = []
        base = self.base.currentText()
        layers = [self.viewer.layers[base]] if base in self.viewer.layers else []
        layers += [layer for layer in self.shown.values() if layer in self.viewer.layers]
        for layer in layers:
            scan = layer.metadata[GEOMETRY_KEY]
            value = layer.get_value(position, world=True)
            entries.append((MODALITY_NAMES.get(scan.modality, layer.name), value,
                            intensity_unit(scan.modality, scan.meta)))
        labels = [entry[0] for entry in entries]
        if len(set(labels)) < len(labels):  # two MRs, or CT before/after: say which
            entries = [(layer.name, *entry[1:]) for layer, entry in zip(layers, entries)]
        return fused_values_text(entries)


def _grid(viewer: Any) -> Any:
    """The viewer's grid settings: on ``viewer.canvas`` since napari 0.9."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _slider(value: int) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, 100)
    slider.setValue(value)
    return slider
