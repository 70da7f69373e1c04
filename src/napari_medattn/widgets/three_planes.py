"""Axial, coronal and sagittal views side by side with a linked crosshair, for any scan.

Built on napari-orthogonal-views (maintained, napari 0.6-0.9), which adds two canvases of
the same layers beside napari's own, keeps their layer properties (contrast limits,
colormap, opacity: the window/level) in step and links their slice positions in world
coordinates (patient mm here), with a crosshair overlay. This module adds what a
radiologist expects on top: each canvas in radiological orientation with its letters (the
main canvas axial, the others coronal and sagittal, through
:func:`~napari_medattn.widgets.radiology_view.install_radiology_view`), and a click (press
and release without moving) in any canvas moves the other two to that point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_warning
from napari_orthogonal_views.attribute_helpers import get_camera, get_viewbox_size
from napari_orthogonal_views.ortho_view_manager import _get_manager
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from napari_medattn.widgets.radiology_view import install_radiology_view

TOOLTIP = ("Show the scan in axial, coronal and sagittal views at once; a click in one "
           "view moves the other two to that point (patient mm).")
_CLICK_KEY = "_medattn_click_moves_point"


def _click_moves_point(model: Any) -> None:
    """A click (press and release without dragging) sets the model's world point there;
    napari-orthogonal-views passes it to the other views. A drag still pans."""
    if getattr(model, _CLICK_KEY, False):
        return

    def on_press(source: Any, event: Any):
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged and event.button == 1:
            move_to(model, event.position)

    model.mouse_drag_callbacks.append(on_press)
    setattr(model, _CLICK_KEY, True)


def move_to(model: Any, world_point: Any) -> None:
    """Put ``model``'s slices through ``world_point`` (all dims, world mm), snapped to the
    nearest slice on every axis.

    napari's dims sliders (one per axis, hidden ones for the displayed axes too) snap an
    off-grid point to their step, one axis at a time, each snap a new point and so a new
    slicing of every layer in the view; a click in the axial view sliced it three times.
    Setting the point the sliders settle on, computed as they do, slices it once.
    """
    dims = model.dims
    point = list(dims.point)
    position = list(world_point)[-len(point):]
    point[-len(position):] = position
    snapped = []
    for value, rng in zip(point, dims.range):
        step = rng.step or 1
        index = round((float(np.clip(value, rng.start, rng.stop)) - rng.start) / step)
        # Dims.set_current_step's own expression, so the sliders find nothing to change.
        snapped.append(rng.start + index * rng.step if rng.step else float(value))
    snapped = tuple(snapped)
    if dims.ndisplay == 2 and all(snapped[a] == dims.point[a] for a in dims.not_displayed):
        # A click keeps the clicked view's slice: only the displayed axes' coordinates
        # change, which no 2D slice depends on, but napari compares the whole point and
        # would slice (and upload) every layer of this view again, a third of a click's
        # slicing. The other views and the crosshair still get the new point.
        update = getattr(model, "_update_layers", None)
        if update is not None:
            with dims.events.point.blocker(update), dims.events.current_step.blocker(update):
                dims.point = snapped
            return
    dims.point = snapped


def _crosshairs_in_world(canvas: Any) -> None:
    """Draw the crosshair at the world point on ``canvas`` (a napari VispyCanvas).

    napari-orthogonal-views 0.5.0 places its crosshair at ``current_step * step``, which
    leaves out where the world range starts: with patient mm (ranges that start at, say,
    -98 mm) the lines sit that far from the slices actually shown. ``dims.point`` is the
    world position itself. Patched on the overlay instances of this canvas only; napari's
    events look the handler up by name, so the instance method is the one called.
    """
    for visuals in list(canvas._viewer_overlay_to_visual.values()):
        for visual in visuals:
            if type(visual).__name__ != "VispyCrosshairOverlay":
                continue

            def move(event: Any = None, visual: Any = visual) -> None:
                dims = visual.viewer.dims
                displayed = list(dims.displayed[::-1])
                if len(displayed) == 2:
                    hidden = list(dims.not_displayed[::-1]) or [0]
                    displayed.append(hidden[0])
                visual.node.set_position(np.asarray(dims.point)[displayed])

            visual._move_crosshairs = move
            move()


def _keep_point_in_view(model: Any, point: tuple) -> None:
    """Centre ``model``'s camera on ``point`` (world mm) along each displayed axis where the
    point lies outside the part of the world the canvas shows; leave it where it is inside."""
    camera = get_camera(model)
    center = list(camera.center)
    # The camera's last two centre coordinates are the displayed axes, rows then columns.
    for index, axis, pixels in zip((-2, -1), model.dims.displayed[-2:],
                                   get_viewbox_size(model)):
        if abs(point[axis] - center[index]) >= pixels / camera.zoom / 2:
            center[index] = point[axis]
    if center != list(camera.center):
        camera.center = tuple(center)


def _link_points_in_world(widget: Any) -> None:
    """Pass a new point between the viewer and one orthogonal view (``widget``), and keep
    it on screen, in world coordinates.

    napari-orthogonal-views 0.5.0 checks whether the new point is on screen at
    ``current_step * step``, which leaves out where the world range starts (the crosshair's
    error too): with patient mm (ranges that start at, say, -250 mm) it judged most points
    off screen and moved the camera there, off the scan, on a click. This swaps its
    handler for this one on this widget's two connections (and in its list of
    connections, so that hiding the views disconnects this one); the linking is otherwise
    its own: the point read from the view that changed, each other view set once, the
    camera sync of its Controls tab held off meanwhile.
    """
    original = widget._update_current_step

    def update_current_step(event: Any) -> None:
        source = event.source
        point = tuple(source.point)
        for model in (widget.viewer, widget.vm_container.viewer_model):
            if model.dims is source or tuple(model.dims.point) == point:
                continue
            with widget._center_sync_blocked():
                model.dims.point = point
                _keep_point_in_view(model, point)

    for n, (emitter, handler) in enumerate(widget._connections):
        if handler == original:
            emitter.disconnect(original)
            emitter.connect(update_current_step)
            widget._connections[n] = (emitter, update_current_step)


def plane_models(viewer: Any) -> list:
    """The viewer and the coronal and sagittal view models (only the viewer when the
    three planes are hidden)."""
    manager = _get_manager(viewer)
    if not manager.is_shown():
        return [viewer]
    return [viewer, manager.bottom_widget.vm_container.viewer_model,
            manager.right_widget.vm_container.viewer_model]


def set_three_planes(viewer: Any, shown: bool) -> list:
    """Show or hide the linked three-plane layout.

    Parameters
    ----------
    viewer : napari.Viewer
    shown : bool

    Returns
    -------
    list
        The axial (the viewer itself), coronal and sagittal models when shown.
    """
    manager = _get_manager(viewer)
    if not shown:
        if manager.is_shown():
            manager.hide()
        return [viewer]
    viewer.dims.ndisplay = 2
    if viewer.dims.ndim >= 3:
        # The main canvas shows the axial plane: the last two spatial axes (y, x).
        order = list(range(viewer.dims.ndim))
        viewer.dims.order = tuple(order)
    install_radiology_view(viewer)
    manager.show()
    manager.set_cross_hairs(True)
    # The orientation letters say which way each view faces in patient terms; napari's axes
    # (array axes 0, 1, 2) add nothing to them and cost a tenth of a click's time to draw in
    # three canvases. The Controls tab's "Show axes" brings them back.
    manager.set_axes(False)
    models = plane_models(viewer)
    for widget in (manager._original_qt_viewer, manager.bottom_widget.qt_viewer,
                   manager.right_widget.qt_viewer):
        _crosshairs_in_world(widget.canvas)
    for widget in (manager.bottom_widget, manager.right_widget):
        _link_points_in_world(widget)
    for model in models:
        install_radiology_view(model).update()
        _click_moves_point(model)
        model.reset_view()
    # The new canvases get their size on the next event-loop pass; frame them again then.
    QTimer.singleShot(0, lambda: [model.reset_view() for model in plane_models(viewer)])
    return models


class ThreePlanesWidget(QWidget):
    """A toggle for the linked three-plane layout (works for any scan)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.toggle = QCheckBox("Axial, coronal and sagittal, linked")
        self.toggle.setToolTip(TOOLTIP)
        self.toggle.toggled.connect(self._set)
        layout = QVBoxLayout(self)
        layout.addWidget(self.toggle)
        layout.addStretch(1)

    def _set(self, shown: bool) -> None:
        try:
            set_three_planes(self.viewer, shown)
        except RuntimeError as error:  # the window has no canvas layout to attach to
            show_warning(f"The three-plane layout could not be shown: {error}")
            self.toggle.setChecked(False)
