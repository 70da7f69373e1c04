"""The Register widget in a real viewer: a rigid run whose live preview moves the moving
layer and recovers nibabel's known motion, Cancel (nothing kept), landmarks with live
residuals, apply to labels, save/load, comparison, and a screenshot. Defaults per pair,
the mask choices and Stop and keep: test_register_options.py."""

from pathlib import Path

import numpy as np
import pytest

import napari_medattn
from napari_medattn.display.layers import volume_layer_data
from napari_medattn.io import Volume, read_volume
from napari_medattn.registration.transforms import grid_points
from napari_medattn.widgets.parts.layers import TRANSFORM_KEY
from napari_medattn.widgets.register import LPS_TO_WORLD, RegisterWidget

SAMPLES = Path(napari_medattn.__file__).parent / "sample_data"
FIXED = SAMPLES / "nibabel_anatomical.nii.gz"
MOVED = SAMPLES / "nibabel_anatomical_moved.nii.gz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def open_pair(viewer):
    fixed, moved = read_volume(FIXED), read_volume(MOVED)
    fixed.meta["name"], moved.meta["name"] = "fixed", "moving"
    for volume in (fixed, moved):
        data, kwargs, kind = volume_layer_data(volume)
        viewer.add_image(data, **kwargs)
    labels = (np.asarray(moved.data) > 150).astype(np.uint8)
    label_volume = Volume(labels, moved.affine, "SEG",
                          {**moved.meta, "name": "moving brain",
                           "classes": [("background", "#000000"), ("brain", "#ff0000")]})
    data, kwargs, kind = volume_layer_data(label_volume)
    viewer.add_labels(data, **kwargs)
    return fixed


def make_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    fixed = open_pair(viewer)
    widget = RegisterWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Register")
    widget.fixed.setCurrentText("fixed")
    widget.moving.setCurrentText("moving")
    return viewer, widget, fixed


def tre(transform, truth, fixed):
    points = grid_points(fixed.affine, fixed.spatial_shape).reshape(-1, 3)
    return np.linalg.norm(transform(points) - truth(points), axis=1).mean()


def test_masked_rigid_run_previews_live_and_recovers_the_motion(
        make_napari_viewer, qtbot, tmp_path, nibabel_truth):
    viewer, widget, fixed = make_widget(make_napari_viewer)
    moving_layer = viewer.layers["moving"]
    placements = []
    moving_layer.events.affine.connect(lambda event: placements.append(
        np.array(moving_layer.affine.affine_matrix)))
    widget.method.setCurrentText("rigid")
    widget.metric.setCurrentText("mse")
    # A fixed mask (the brighter 40 % of the fixed scan) reaches the engine.
    data = np.asarray(fixed.data)
    mask = Volume((data > np.percentile(data, 60)).astype(np.uint8), fixed.affine, "SEG",
                  {**fixed.meta, "name": "fixed mask"})
    mask_data, kwargs, _ = volume_layer_data(mask)
    viewer.add_labels(mask_data, **kwargs)
    widget.mask.setCurrentText("fixed mask")
    assert widget._mask_volume().spatial_shape == widget.volume("fixed").spatial_shape
    layers_before = len(viewer.layers)
    job = widget.run()
    qtbot.waitUntil(lambda: job.finished, timeout=120_000)
    assert job.outcome == "done"
    assert len(placements) >= 2  # live previews, then the result
    assert not np.allclose(placements[0], placements[-1])
    assert tre(widget.transform, nibabel_truth, fixed) < 0.5
    # A linear result is the moving layer's napari affine: no resampled layer.
    assert len(viewer.layers) == layers_before
    expected = LPS_TO_WORLD @ np.linalg.inv(widget.transform.matrix) @ \
        moving_layer.metadata["medattn_geometry"].affine
    assert np.allclose(moving_layer.affine.affine_matrix, expected)
    assert widget.results.quality.rowCount() >= 3
    # The result is recorded on the moving layer for the Fuse widget.
    record = moving_layer.metadata[TRANSFORM_KEY]
    assert record["fixed"] == viewer.layers["fixed"].unique_id
    assert record["transform"] is widget.transform and record["method"] == "rigid"
    # apply to labels: nearest, class names kept, on the fixed grid
    widget.results.labels.setCurrentText("moving brain")
    widget.results.apply_to_labels()
    warped = viewer.layers[-1]
    assert warped.data.shape == viewer.layers["fixed"].data.shape
    assert set(np.unique(warped.data)) == {0, 1}
    # save, then load again: same transform
    widget.results.save_transform(str(tmp_path / "t.tfm"))
    saved = widget.transform.matrix
    widget.results.load_transform(str(tmp_path / "t.tfm"))
    assert np.allclose(widget.transform.matrix, saved)
    assert moving_layer.metadata[TRANSFORM_KEY]["method"] == "file"
    widget.views.comparison.setCurrentText("checkerboard")
    widget.views.compare()
    assert viewer.layers[-1].name.startswith("checkerboard")
    viewer.layers.remove(viewer.layers[-1])
    screenshot(viewer, qtbot)


def screenshot(viewer, qtbot):
    for layer in list(viewer.layers):
        if layer.name not in ("fixed", "moving"):
            layer.visible = False
    viewer.layers["moving"].colormap = "magenta"
    viewer.layers["moving"].blending = "additive"
    viewer.layers["fixed"].colormap = "green"
    viewer.window._qt_window.resize(1400, 800)
    viewer.reset_view()
    low, high = viewer.layers["fixed"].extent.world[:, 0]
    viewer.dims.set_point(0, (low + high) / 2)
    qtbot.wait(300)
    # The docs' screenshot is made by scripts/make_screenshots.py (shot "register").
    image = viewer.screenshot(canvas_only=False, flash=False)
    assert image.shape[0] > 200 and image[..., :3].std() > 5


def test_cancel_keeps_nothing(make_napari_viewer, qtbot):
    viewer, widget, _ = make_widget(make_napari_viewer)
    moving_layer = viewer.layers["moving"]
    before = np.array(moving_layer.affine.affine_matrix), np.array(moving_layer.scale)
    names = [layer.name for layer in viewer.layers]
    widget.method.setCurrentText("deformable")
    job = widget.run()
    qtbot.waitUntil(lambda: "metric" in widget.status.text() or job.finished, timeout=60_000)
    widget.cancel()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "cancelled"
    assert [layer.name for layer in viewer.layers] == names
    assert np.allclose(moving_layer.affine.affine_matrix, before[0])
    assert np.allclose(moving_layer.scale, before[1])
    assert "nothing was kept" in widget.status.text()
    assert TRANSFORM_KEY not in moving_layer.metadata and widget.transform is None


def test_deformable_run_adds_the_warped_scan_and_det_j(make_napari_viewer, qtbot):
    viewer, widget, _ = make_widget(make_napari_viewer)
    moving_layer = viewer.layers["moving"]
    before = np.array(moving_layer.affine.affine_matrix), np.array(moving_layer.scale)
    names = {layer.name for layer in viewer.layers}
    widget.method.setCurrentText("deformable")
    widget.levels.setText("2")  # one half-resolution level: a quick run
    job = widget.run()
    qtbot.waitUntil(lambda: job.finished, timeout=120_000)
    assert job.outcome == "done"
    added = [layer for layer in viewer.layers if layer.name not in names]
    assert [layer.name for layer in added][:2] == ["moving on fixed", "moving det J - 1"]
    assert added[0].data.shape == viewer.layers["fixed"].data.shape
    assert np.allclose(moving_layer.affine.affine_matrix, before[0])
    assert np.allclose(moving_layer.scale, before[1])
    assert widget.results.quality.rowCount() >= 4  # folding, SDlogJ, det J range, metric
    assert moving_layer.metadata[TRANSFORM_KEY]["transform"] is widget.transform
    widget.results.deformation_grid()
    grid = viewer.layers[-1]
    assert grid.name.startswith("deformation grid") and len(grid.data) > 5


def test_landmarks_show_live_residuals_and_fit(make_napari_viewer, qtbot, nibabel_truth):
    viewer, widget, fixed = make_widget(make_napari_viewer)
    widget.landmarks.add_layers()
    fixed_points = viewer.layers["fixed landmarks"]
    moving_points = viewer.layers["moving landmarks"]
    assert fixed_points.mode == "add"
    rng = np.random.default_rng(1)
    lps = rng.uniform(-20, 20, (5, 3))
    world = lambda p: p @ LPS_TO_WORLD[:3, :3].T  # noqa: E731
    for point, partner in zip(lps, nibabel_truth(lps)):
        fixed_points.add(world(point))  # what a click in add mode does
        moving_points.add(world(partner))
    residuals = widget.landmarks.residuals
    assert residuals.rowCount() == 5
    assert max(float(residuals.item(r, 1).text()) for r in range(5)) < 0.01
    widget.method.setCurrentText("landmarks")
    job = widget.run()
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    assert tre(widget.transform, nibabel_truth, fixed) < 1e-6
