"""Keep a napari viewer in radiological orientation, with edge letters and patient status.

:func:`install_radiology_view` attaches one :class:`RadiologyView` per viewer. It acts only
while the viewer holds a layer opened by this plugin (``GEOMETRY_KEY`` in its metadata),
so other data keep napari's defaults. The data are never flipped: the camera orientation
does it (see :mod:`napari_medattn.display.orientation` for the table of conventions).
"""

from __future__ import annotations

import weakref
from typing import Any

import napari
from napari.layers import Image, Labels

from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.widgets.letters_overlay import OrientationLettersOverlay
from napari_medattn.io.units import intensity_unit
from napari_medattn.display.orientation import (
    VIEW_NAMES,
    canonical_pair,
    depth_direction_3d,
    edge_letters,
    patient_position_text,
    radiological_orientation_2d,
)

#: Canvas overlay key of the orientation letters.
LETTERS_KEY = "medattn_orientation_letters"
_SIDES = ("top", "bottom", "left", "right")
_LETTER_COLOR = "#ffd700"  # gold: legible on both black background and bright tissue
_LETTER_SIZE = 16

_installed: dict[int, RadiologyView] = {}


def viewer_camera(viewer: napari.Viewer):
    """The viewer's camera: on ``viewer.scene`` since napari 0.9 (``viewer.camera`` is
    deprecated there), on the viewer itself in 0.6-0.8."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def install_radiology_view(viewer: napari.Viewer) -> RadiologyView:
    """Attach (once) the radiological orientation controller to ``viewer`` and return it."""
    key = id(viewer)
    if key not in _installed:
        _installed[key] = RadiologyView(viewer)
        weakref.finalize(viewer, _installed.pop, key, None)
    return _installed[key]


def has_patient_layers(viewer: napari.Viewer) -> bool:
    """Whether the viewer shows at least one layer with patient geometry from this plugin."""
    return any(GEOMETRY_KEY in layer.metadata for layer in viewer.layers)


class RadiologyView:
    """Camera orientation, orientation letters, patient-mm status and labels geometry.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer to keep in radiological convention. Use
        :func:`install_radiology_view` rather than constructing this directly.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer_ref = weakref.ref(viewer)
        self._updating = False
        viewer.canvas.overlays[LETTERS_KEY] = OrientationLettersOverlay(
            color=_LETTER_COLOR, font_size=_LETTER_SIZE, visible=False)
        viewer.dims.events.order.connect(self.update)
        viewer.dims.events.ndisplay.connect(self.update)
        viewer.dims.events.ndim.connect(self.update)
        viewer_camera(viewer).events.orientation.connect(self._update_letters)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.update)
        for layer in viewer.layers:
            self._prepare_layer(layer)
        self.update()

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer_ref()

    def _on_inserted(self, event: Any) -> None:
        self._prepare_layer(event.value)
        self.update()

    def _prepare_layer(self, layer: Any) -> None:
        viewer = self.viewer
        if isinstance(layer, Labels) and GEOMETRY_KEY not in layer.metadata:
            # napari's "new labels" button copies scale/translate but not metadata: give the
            # labels the exact geometry of the scan whose grid they share.
            source = _matching_image(viewer, layer)
            if source is not None:
                layer.metadata[GEOMETRY_KEY] = source.metadata[GEOMETRY_KEY]
        if GEOMETRY_KEY in layer.metadata:
            _attach_patient_status(layer)

    def update(self, event: Any = None) -> None:
        """Re-apply canonical axis order and radiological camera orientation."""
        viewer = self.viewer
        if viewer is None or self._updating:
            # Re-entered through the dims.order change made below: the outer call finishes.
            return
        if not has_patient_layers(viewer):
            self._set_letters_visible(False)
            return
        self._updating = True
        try:
            dims = viewer.dims
            frames = dims.ndim - 3
            spatial = [axis - frames for axis in dims.displayed]
            if frames < 0 or min(spatial) < 0:
                # A frame (time/channel) axis is displayed: no patient orientation applies.
                self._set_letters_visible(False)
                return
            if dims.ndisplay == 2:
                pair = canonical_pair(tuple(spatial))
                if tuple(spatial) != pair:
                    order = list(dims.order)
                    order[-2:] = [pair[0] + frames, pair[1] + frames]
                    dims.order = tuple(order)
                vertical_dir, horizontal_dir = radiological_orientation_2d(*pair)
                depth = viewer_camera(viewer).orientation[0]
            else:
                # 3D starts from the radiological view of its vertical/horizontal pair, seen
                # from the side that makes the rendering a rotation, not a mirror image.
                _depth_axis, vertical, horizontal = spatial
                vertical_dir, horizontal_dir = (
                    radiological_orientation_2d(vertical, horizontal)
                    if vertical < horizontal else ("down", "right"))
                depth = depth_direction_3d(tuple(spatial), vertical_dir, horizontal_dir)
            viewer_camera(viewer).orientation = (depth, vertical_dir, horizontal_dir)
        finally:
            self._updating = False
        self._update_letters()

    def current_view(self) -> str | None:
        """``'axial'``, ``'coronal'``, ``'sagittal'``, or None (3D or a frame axis shown)."""
        viewer = self.viewer
        if viewer is None or viewer.dims.ndisplay != 2:
            return None
        frames = viewer.dims.ndim - 3
        pair = tuple(axis - frames for axis in viewer.dims.displayed)
        return VIEW_NAMES.get(pair)

    def _update_letters(self, event: Any = None) -> None:
        viewer = self.viewer
        if viewer is None or self.current_view() is None or not has_patient_layers(viewer):
            self._set_letters_visible(False)
            return
        frames = viewer.dims.ndim - 3
        vertical, horizontal = (axis - frames for axis in viewer.dims.displayed)
        _depth, vertical_dir, horizontal_dir = viewer_camera(viewer).orientation
        letters = edge_letters(vertical, horizontal, str(vertical_dir), str(horizontal_dir))
        overlay = viewer.canvas.overlays[LETTERS_KEY]
        overlay.update({side: letters[side] for side in _SIDES})
        overlay.visible = True

    def _set_letters_visible(self, visible: bool) -> None:
        viewer = self.viewer
        if viewer is None:
            return
        viewer.canvas.overlays[LETTERS_KEY].visible = visible

    def letters(self) -> dict[str, str]:
        """The letters now shown at the canvas edges (empty when hidden)."""
        viewer = self.viewer
        overlay = viewer.canvas.overlays[LETTERS_KEY]
        return {side: getattr(overlay, side) for side in _SIDES} if overlay.visible else {}


def _matching_image(viewer: napari.Viewer, labels: Labels) -> Image | None:
    for layer in viewer.layers:
        if (isinstance(layer, Image) and GEOMETRY_KEY in layer.metadata
                and layer.data.shape[-3:] == labels.data.shape[-3:]
                and tuple(layer.scale[-3:]) == tuple(labels.scale[-3:])
                and tuple(layer.translate[-3:]) == tuple(labels.translate[-3:])):
            return layer
    return None


def _attach_patient_status(layer: Any) -> None:
    """Show the cursor as patient mm with side letters and the value with its unit.

    napari builds the status text in ``layer.get_status`` (called from its status thread);
    wrapping it on this layer instance keeps napari's value lookup and only rewrites the
    coordinate text, so no napari internals are touched.
    """
    if getattr(layer, "_medattn_status", False):
        return
    napari_get_status = layer.get_status
    scan = layer.metadata[GEOMETRY_KEY]
    unit = intensity_unit(scan.modality, scan.meta) if isinstance(layer, Image) else ""

    def get_status(position=None, **kwargs: Any) -> dict:
        status = napari_get_status(position, **kwargs)
        if position is not None and kwargs.get("world", False) and len(position) >= 3:
            coords = patient_position_text(list(position)[-3:])
            value = status.get("value", "")
            status["coords"] = coords
            status["coordinates"] = f"{coords}: {value} {unit}".rstrip()
        return status

    layer.get_status = get_status
    layer._medattn_status = True
