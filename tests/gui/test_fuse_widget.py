"""The Fuse widget in a real viewer: placement without resampling, oblique resampling, the
fade slider, the modes (screenshots), the cursor values with units, and the linked three
planes (a click in the axial view moves the coronal and sagittal slices to that mm).

Set MEDATTN_SCREENSHOT_DIR=docs/screenshots to keep the mode screenshots for the docs."""

import os
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image
from PIL import Image as PILImage

from napari_orthogonal_views.ortho_view_manager import _get_manager

from napari_medattn._napari_hooks import (
    SAMPLE_DIR,
    sample_nibabel_anatomical,
    sample_nibabel_anatomical_moved,
    sample_synthetic_pet_ct,
)
from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.fusion.align import overlay_on_grid
from napari_medattn.io import read_volume
from napari_medattn.registration.transforms import LinearTransform
from napari_medattn.widgets.fuse import FUSE_KEY, FuseWidget, _grid
from napari_medattn.widgets.radiology_view import viewer_camera
from napari_medattn.widgets.three_planes import plane_models, set_three_planes


def _shot(viewer, qtbot, name=None, tmp_path=None):
    qtbot.wait(50)
    image = viewer.screenshot(canvas_only=True, flash=False)
    folder = os.environ.get("MEDATTN_SCREENSHOT_DIR")
    if name and (folder or tmp_path):
        path = Path(folder or tmp_path) / f"fuse_{name}.png"
        PILImage.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(path)
    return image.astype(np.int16)


@pytest.fixture
def pet_ct(make_napari_viewer, qtbot, add_layer):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1300, 900)
    for layer_data in sample_synthetic_pet_ct():
        add_layer(viewer, layer_data)
    widget = FuseWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.base.setCurrentText("synthetic_ct_head")
    widget.overlay.setCurrentText("synthetic_fdg_pet")
    viewer.layers["synthetic_ct_head"].contrast_limits = (0.0, 100.0)  # brain window
    # Through the lesion (LPS z = 30 mm): a slice with high uptake.
    viewer.dims.point = (30.0, *viewer.dims.point[1:])
    return viewer, widget


def test_pet_placed_without_resampling_fade_and_cursor_values(pet_ct, qtbot, tmp_path):
    viewer, widget = pet_ct
    viewer.layers["synthetic_fdg_pet"].visible = False
    ct_only = _shot(viewer, qtbot)
    viewer.layers["synthetic_fdg_pet"].visible = True
    assert widget.run() is None  # axis-aligned PET: no job
    pet = viewer.layers["synthetic_fdg_pet"]
    assert widget.current() is pet and len(viewer.layers) == 2
    assert "placed by its own geometry" in widget.status.text()
    assert tuple(pet.contrast_limits) == (0.0, 5.0)  # the first SUV preset
    widget.fade.setValue(0)
    faded_out = _shot(viewer, qtbot)
    assert pet.opacity == 0.0
    np.testing.assert_array_equal(faded_out, ct_only)
    widget.fade.setValue(100)
    full = _shot(viewer, qtbot)
    assert pet.opacity == 1.0
    assert np.abs(full - ct_only).mean() > 5.0
    widget.fade.setValue(50)
    half = _shot(viewer, qtbot, "blend", tmp_path)
    assert 0 < np.abs(half - ct_only).mean() < np.abs(full - ct_only).mean()
    widget.preset.setCurrentText("SUV 0-10")
    assert tuple(pet.contrast_limits) == (0.0, 10.0)
    widget.colormap.setCurrentText("pet_rainbow")
    assert not np.array_equal(_shot(viewer, qtbot), half)

    # The cursor line lists every fused layer's value with its unit.
    ct = read_volume(SAMPLE_DIR / "synthetic_ct_head.nii.gz")
    pet = read_volume(SAMPLE_DIR / "synthetic_fdg_pet.nii.gz")
    lps = np.array([-28.0, -20.0, 30.0])  # the hot sphere's centre
    world = lps[::-1]

    def value_at(volume):
        index = np.linalg.solve(volume.affine, [*lps, 1.0])[:3]
        return float(np.asarray(volume.data)[tuple(np.round(index).astype(int))])

    text = widget.cursor_text(world)
    assert text == f"CT {value_at(ct):.0f} HU · PET {value_at(pet):.3g} SUV"
    assert value_at(pet) > 10  # inside the sphere (SUV 16 before the 5 mm blur)
    status = viewer.layers["synthetic_fdg_pet"].get_status(world, world=True)
    assert status["coordinates"].endswith(text) and "R 28.0" in status["coordinates"]

    # Three linked planes: a click in the axial view moves the other planes to that mm.
    widget.planes.setChecked(True)
    qtbot.wait(100)
    axial, coronal, sagittal = plane_models(viewer)
    assert axial is viewer and coronal is not viewer
    canvas = viewer.window._qt_viewer.canvas
    target = np.array([30.0, -20.0, -28.0])  # world (z, y, x): the hot sphere
    pos = _world_to_canvas(canvas, viewer, target)
    scene = canvas._scene_canvas
    scene.events.mouse_press(pos=pos, button=1, modifiers=())
    scene.events.mouse_release(pos=pos, button=1, modifiers=())
    qtbot.wait(50)
    for model in (coronal, sagittal):
        np.testing.assert_allclose(model.dims.point[-2:], target[-2:], atol=1.5)
    # Coronal slices at y = -20 mm, sagittal at x = -28 mm (nearest 1 mm slice).
    assert abs(coronal.dims.point[1] - target[1]) <= 0.5
    assert abs(sagittal.dims.point[2] - target[2]) <= 0.5
    # The crosshair of every plane is drawn at that point (world mm, not steps).
    manager = _get_manager(viewer)
    for qt_viewer in (manager._original_qt_viewer, manager.bottom_widget.qt_viewer,
                      manager.right_widget.qt_viewer):
        (visual,) = [v for vs in qt_viewer.canvas._viewer_overlay_to_visual.values()
                     for v in vs if type(v).__name__ == "VispyCrosshairOverlay"]
        offset = visual.node.pos[0] - visual.node._base_segments[0]
        assert sorted(np.round(offset, 3).tolist()) == sorted(np.round(
            np.asarray(visual.viewer.dims.point), 3).tolist())
    _shot(viewer, qtbot, "three_planes", tmp_path)
    set_three_planes(viewer, False)
    assert plane_models(viewer) == [viewer]

    # A transform that only shifts is applied by placing the PET's own voxels, no copy.
    shift = np.eye(4)
    shift[:3, 3] = [4.0, -2.0, 6.0]  # fixed (CT) mm -> moving (PET) mm, LPS
    widget.transform = LinearTransform(shift, "rigid")
    assert widget.run() is None and "no resampling" in widget.status.text()
    placed, source = widget.current(), viewer.layers["synthetic_fdg_pet"]
    assert placed.name == "synthetic_fdg_pet (transformed)"
    assert np.shares_memory(placed.data, source.data)
    np.testing.assert_allclose(np.asarray(placed.translate) - np.asarray(source.translate),
                               -shift[:3, 3][::-1])


def test_modes_and_oblique_overlay_resampled(make_napari_viewer, qtbot, tmp_path, add_layer):
    viewer = make_napari_viewer(show=True)
    for layer_data in (*sample_nibabel_anatomical(), *sample_nibabel_anatomical_moved()):
        add_layer(viewer, layer_data)
    widget = FuseWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.base.setCurrentText("nibabel_anatomical")
    widget.overlay.setCurrentText("nibabel_anatomical_moved")
    job = widget.run()
    assert job is not None and "oblique" in widget.status.text()
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    shown = widget.current()
    assert shown.metadata[FUSE_KEY] == {"overlay": "nibabel_anatomical_moved",
                                        "role": "resampled"}
    base = viewer.layers["nibabel_anatomical"]
    assert shown.data.shape == base.data.shape and np.allclose(shown.scale, base.scale)
    expected = overlay_on_grid(viewer.layers["nibabel_anatomical_moved"].metadata[GEOMETRY_KEY],
                               base.metadata[GEOMETRY_KEY])
    np.testing.assert_allclose(shown.metadata[GEOMETRY_KEY].affine,
                               base.metadata[GEOMETRY_KEY].affine)
    assert np.isclose(np.asarray(shown.data, np.float64).sum(),
                      np.asarray(expected.canonical().data, np.float64).sum(), rtol=1e-6)
    blend = _shot(viewer, qtbot)

    widget.mode.setCurrentText("checkerboard")
    board = viewer.layers["nibabel_anatomical_moved checkerboard"]
    assert not shown.visible and board.visible
    # Tiles of 20 mm on a 2 mm grid: runs of 10 voxels of the overlay and of "nothing".
    line = np.asarray(board.data)[0, 0, :] > np.finfo(np.float32).min
    assert np.allclose(board.scale[-1], 2.0)
    assert not line[:10].any() and line[10:20].all()
    widget.tile.setValue(10.0)
    board = viewer.layers["nibabel_anatomical_moved checkerboard"]
    line = np.asarray(board.data)[0, 0, :] > np.finfo(np.float32).min
    assert not line[:5].any() and line[5:10].all()
    checker = _shot(viewer, qtbot, "checkerboard", tmp_path)

    widget.mode.setCurrentText("difference")
    assert "nibabel_anatomical_moved checkerboard" not in viewer.layers
    diff = viewer.layers["nibabel_anatomical_moved difference"]
    assert float(np.abs(diff.data).max()) <= 1.0 and tuple(diff.contrast_limits) == (-1.0, 1.0)
    difference = _shot(viewer, qtbot, "difference", tmp_path)

    widget.mode.setCurrentText("side by side")
    assert _grid(viewer).enabled and "nibabel_anatomical_moved difference" not in viewer.layers
    side = _shot(viewer, qtbot, "side_by_side", tmp_path)
    for a, b in ((blend, checker), (checker, difference), (difference, side)):
        assert not np.array_equal(a, b)
    widget.mode.setCurrentText("blend")
    assert not _grid(viewer).enabled

    # Rotating MIP: 3D, maximum intensity rendering, the camera turning, and back.
    widget.mip.setChecked(True)
    assert viewer.dims.ndisplay == 3 and shown.rendering == "mip"
    assert not viewer.layers["nibabel_anatomical"].visible
    before = viewer_camera(viewer).angles[1]
    qtbot.waitUntil(lambda: viewer_camera(viewer).angles[1] != before, timeout=5000)
    widget.mip.setChecked(False)
    assert viewer.dims.ndisplay == 2 and viewer.layers["nibabel_anatomical"].visible


def _world_to_canvas(canvas, viewer, world):
    """Canvas pixel of a world point in the displayed plane (inverse of napari's map)."""
    transform = canvas.view.scene.transform
    displayed = list(viewer.dims.displayed)
    scene_point = [world[displayed[1]], world[displayed[0]], 0, 1]
    pixel = transform.map(scene_point)
    return pixel[:2] / pixel[3]


def _click(qt_viewer, model, world):
    """Press and release the left button over ``world`` (mm) in one plane's canvas."""
    pos = _world_to_canvas(qt_viewer.canvas, model, world)
    scene = qt_viewer.canvas._scene_canvas
    assert np.all(pos >= 0) and np.all(pos < scene.size)  # on screen
    scene.events.mouse_press(pos=pos, button=1, modifiers=())
    scene.events.mouse_release(pos=pos, button=1, modifiers=())


def test_click_moves_point_once_onto_the_grid_and_keeps_cameras_on_the_scan(pet_ct, qtbot):
    viewer, _widget = pet_ct
    models = set_three_planes(viewer, True)
    qtbot.wait(100)
    manager = _get_manager(viewer)
    qt_viewers = (manager._original_qt_viewer, manager.bottom_widget.qt_viewer,
                  manager.right_widget.qt_viewer)
    ranges = viewer.dims.range
    # Patient mm: every range starts far from 0, which napari-orthogonal-views 0.5.0 left out
    # when it judged whether the new point was on screen.
    assert all(abs(r.start) > 50 for r in ranges)
    cameras = [tuple(viewer_camera(model).center) for model in models]
    points = []
    viewer.dims.events.point.connect(lambda event: points.append(tuple(event.value)))
    targets = ([12.3, -31.7, 22.9], [-20.6, 8.2, -35.3], [40.4, 17.1, 9.6])
    for view, target in enumerate(targets):
        before = np.asarray(viewer.dims.point)
        points.clear()
        _click(qt_viewers[view], models[view], target)
        # One new point per click (napari's sliders used to snap it axis by axis, each
        # snap slicing the views again), on the voxel grid, nearest the click on the two
        # axes the clicked view shows; its own slice axis unchanged.
        assert len(points) == 1
        point = np.asarray(viewer.dims.point)
        steps = [(p - r.start) / r.step for p, r in zip(point, ranges)]
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
        shown = list(models[view].dims.displayed)
        assert np.all(np.abs(point[shown] - np.asarray(target)[shown])
                      <= np.asarray([ranges[a].step for a in shown]) / 2 + 1e-9)
        hidden = models[view].dims.not_displayed[0]
        assert point[hidden] == before[hidden]
        for model in models:
            np.testing.assert_allclose(model.dims.point, point)
        # Every point clicked lies on screen in every view: no camera moved.
        assert [tuple(viewer_camera(model).center) for model in models] == cameras

    # A point off screen in a zoomed view: that view's camera centres on it, along the
    # axis where it is off screen only.
    coronal = models[1]
    camera = viewer_camera(coronal)
    camera.zoom *= 8
    z = coronal.dims.point[0]
    camera.center = (camera.center[0], z, 60.0)  # rows: z, columns: x (mm)
    _click(qt_viewers[0], viewer, [z, -20.0, -45.0])
    assert abs(coronal.dims.point[2] - (-45.0)) <= ranges[2].step / 2
    assert camera.center[-2] == z
    np.testing.assert_allclose(camera.center[-1], coronal.dims.point[2])
    set_three_planes(viewer, False)  # hiding disconnects the linking swapped in
    assert plane_models(viewer) == [viewer]


def test_a_click_slices_only_the_views_whose_plane_changes(pet_ct, qtbot, monkeypatch):
    viewer, _widget = pet_ct
    models = set_three_planes(viewer, True)
    qtbot.wait(100)
    manager = _get_manager(viewer)
    # napari's axes (array axes) are off: the orientation letters say where each view faces.
    assert not any(model.canvas.overlays["axes"].visible for model in models)
    qt_viewers = (manager._original_qt_viewer, manager.bottom_widget.qt_viewer,
                  manager.right_widget.qt_viewer)
    refreshed = []
    original = Image._refresh_sync

    def counting(self, **kwargs):
        refreshed.append(id(self))
        return original(self, **kwargs)

    monkeypatch.setattr(Image, "_refresh_sync", counting)
    for view, target in enumerate(([12.3, -31.7, 22.9], [-20.6, 8.2, -35.3],
                                   [40.4, 17.1, 9.6])):
        refreshed.clear()
        _click(qt_viewers[view], models[view], target)
        point = np.asarray(viewer.dims.point)
        for n, model in enumerate(models):
            hidden = model.dims.not_displayed[0]
            # The clicked view's plane is unchanged: none of its layers is sliced again;
            # each layer of the other two views is sliced once, at the new point.
            assert [refreshed.count(id(layer)) for layer in model.layers] == \
                [0 if n == view else 1] * len(model.layers)
            for layer in model.layers:
                index = int(np.round(layer.world_to_data(point)[hidden]))
                expected = np.take(np.asarray(layer.data), index, axis=hidden)
                np.testing.assert_array_equal(layer._slice.image.raw, expected)
        # Every view's crosshair is at the new point, the clicked one's included.
        for qt_viewer, model in zip(qt_viewers, models):
            crosshair = next(visual for visuals in
                             qt_viewer.canvas._viewer_overlay_to_visual.values()
                             for visual in visuals
                             if type(visual).__name__ == "VispyCrosshairOverlay")
            offsets = np.asarray(crosshair.node.pos) - crosshair.node._base_segments
            axes = [*model.dims.displayed[::-1], model.dims.not_displayed[0]]
            np.testing.assert_allclose(offsets, np.broadcast_to(point[axes], offsets.shape))
    set_three_planes(viewer, False)
