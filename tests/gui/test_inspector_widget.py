"""The Attention inspector in a real viewer: click-to-query updates the query layers on the
scan's geometry, a Grad-CAM run adds its named map with its faithfulness line, Cancel adds
nothing, and the uncertainty slice list moves the viewer."""

import numpy as np
import pytest
import torch

from napari_medattn.display.layers import volume_layer_data
from napari_medattn.explain.query import QueryExplorer
from napari_medattn.io import Volume
from napari_medattn.models import create, registry
from napari_medattn.models.card import ClassInfo, ModelCard
from napari_medattn.widgets import inspector as inspector_module
from napari_medattn.widgets import inspector_maps
from napari_medattn.widgets import worker as worker_module
from napari_medattn.widgets.inspector import (
    INSPECT_KEY,
    QUERY,
    QUERY_OUTPUTS,
    InspectorWidget,
)
from napari_medattn.widgets.parts import pickers as pickers_module

MODEL = "tiny-dssa"
SE_MODEL = "tiny-se"
CLASSES = [ClassInfo("background", "#000000"), ClassInfo("blob", "#ff3333"),
           ClassInfo("rim", "#33ff33")]


@pytest.fixture(scope="module")
def scan():
    """A 3 mm scan stored RAS (array axes towards Right, Anterior, Superior) with a bright
    ball, 20 x 22 x 18 voxels."""
    grid = np.indices((20, 22, 18)).astype(np.float32)
    centre = np.array([10, 11, 9], np.float32).reshape(3, 1, 1, 1)
    ball = (np.sqrt(((grid - centre) ** 2).sum(0)) < 5).astype(np.float32)
    rng = np.random.default_rng(0)
    data = (100 + 400 * ball + rng.normal(0, 5, ball.shape)).astype(np.float32)
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    affine[:3, 3] = (30.0, 33.0, -27.0)
    return Volume(data, affine, "MR", {"name": "ball"})


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """An untrained U-Net with a DSSA block (token attention and routing) at 1/4."""
    torch.manual_seed(0)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32],
              "attention": "dssa", "attention_options": {"n_win": 2, "topk": 2, "head_dim": 8}}
    card = ModelCard(name=MODEL, architecture="unet", config=config, classes=CLASSES,
                     modality="MR", patch_size=(16, 16, 16), orientation="RAS",
                     normalization={"scheme": "zscore"},
                     training_data="none (random weights, for tests)")
    folder = tmp_path_factory.mktemp("models")
    registry.save_model(create("unet", **config).eval(), card, folder / MODEL)
    se_config = {**config, "attention": "se", "attention_options": {}}
    se_card = ModelCard.from_dict({**card.to_dict(), "name": SE_MODEL, "config": se_config})
    registry.save_model(create("unet", **se_config).eval(), se_card, folder / SE_MODEL)
    return folder


@pytest.fixture
def notes(monkeypatch):
    shown = []
    for module, kinds in ((inspector_module, ("error",)), (pickers_module, ("info",)),
                          (worker_module, ("error", "info"))):
        for kind in kinds:
            monkeypatch.setattr(module, f"show_{kind}",
                                lambda text, kind=kind: shown.append((kind, text)))
    return shown


@pytest.fixture
def setup(make_napari_viewer, qtbot, scan, model_folder, monkeypatch, notes, add_layer):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "no-user-models")
    # The widget pre-selects (and so loads) the default model: make it the tiny one.
    monkeypatch.setattr(pickers_module, "DEFAULT_MODEL", MODEL)
    viewer = make_napari_viewer(show=True)
    image = add_layer(viewer, volume_layer_data(scan))
    widget = InspectorWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Attention inspector")
    assert widget.model.currentText() == MODEL
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=30_000)  # model loaded
    return viewer, image, widget


def wait(qtbot, job):
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    return job


def same_geometry(layer, image):
    np.testing.assert_array_equal(layer.data.shape, image.data.shape)
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)


def click(viewer, world):
    """A left press and release on the canvas pixel showing a world point (z, y, x), through
    vispy's event and napari's own mapping from pixels to world (the radiological camera
    included): the slice is set to the point's z, its (y, x) mapped to a canvas pixel."""
    viewer.dims.set_point(0, float(world[0]))
    # napari has no public way to reach its canvas or press the mouse on a pixel (the
    # mapping through the radiological camera is part of what is tested here).
    canvas = viewer.window._qt_viewer.canvas
    transform = canvas.view.transform * canvas.view.scene.transform
    pixel = transform.map([float(world[2]), float(world[1])])[:2]  # vispy order: x, y
    canvas._scene_canvas.events.mouse_press(pos=pixel, button=1, modifiers=())
    canvas._scene_canvas.events.mouse_release(pos=pixel, button=1, modifiers=())


def query_layers(viewer):
    """The click-to-query layers: attention, routed regions, kept tokens."""
    return [next(layer for layer in viewer.layers
                 if layer.metadata.get(INSPECT_KEY, {}).get("output") == output)
            for output in QUERY_OUTPUTS]


def test_click_updates_the_query_layers_on_the_scan_geometry(setup, qtbot, scan):
    viewer, image, widget = setup
    widget.method.setCurrentText(QUERY)
    assert widget.layer.currentText() == "encoder.2.attention.attn"
    wait(qtbot, widget.run())
    assert isinstance(widget.queries.explorer, QueryExplorer)
    assert widget.queries.isChecked()
    attention, regions, kept = query_layers(viewer)
    block = widget.layer.currentText()
    assert attention.name == f"ball {MODEL} query {block} (mean of heads) attention"
    assert regions.name == f"ball {MODEL} query {block} (mean of heads) routed regions"
    for layer in (attention, regions, kept):
        same_geometry(layer, image)
        assert layer.metadata[INSPECT_KEY]["image"] == image.unique_id
    assert attention.colormap.name == "inferno" and regions.contour == 2

    # Click two voxels far apart (world = z, y, x mm): the map changes in place.
    before = np.array(attention.data)
    first = image.data_to_world((4, 5, 6))
    click(viewer, first)
    after_first = np.array(attention.data)
    marker = next(layer for layer in viewer.layers if layer.name == "query point")
    np.testing.assert_allclose(marker.data, [first], atol=1e-6)
    click(viewer, image.data_to_world((14, 17, 12)))
    assert query_layers(viewer) == [attention, regions, kept]  # updated, not replaced
    assert not np.array_equal(after_first, np.array(attention.data))
    assert not np.array_equal(before, after_first)
    # The layer shows exactly what the explorer answers for that patient point.
    view = image.metadata["medattn_geometry"]
    point = (view.affine @ np.append(image.world_to_data(first), 1.0))[:3]
    expected = widget.queries.explorer.query(point, widget.layer.currentText())
    click(viewer, first)
    np.testing.assert_allclose(attention.data,
                               volume_layer_data(expected.attention)[0], rtol=1e-6)
    np.testing.assert_array_equal(regions.data, volume_layer_data(expected.regions)[0])

    # With query mode off a click changes nothing; a click outside the scan says why.
    widget.queries.setChecked(False)
    shown = np.array(attention.data)
    click(viewer, image.data_to_world((14, 17, 12)))
    np.testing.assert_array_equal(attention.data, shown)
    widget.queries.setChecked(True)
    click(viewer, image.data_to_world((10, 5, -8)))
    assert "outside the image" in widget.status.text()
    np.testing.assert_array_equal(attention.data, shown)


def test_gradcam_run_adds_a_named_map_with_its_faithfulness(setup, qtbot):
    viewer, image, widget = setup
    widget.method.setCurrentText("gradcam")
    assert not widget.queries.isEnabled() and not widget.queries.isChecked()
    widget.explanations.target.setCurrentText("blob")
    widget.explanations.faithfulness.setChecked(True)
    job = wait(qtbot, widget.run())
    assert job.outcome == "done"
    (explanation,) = widget.explanations.maps
    name = f"ball {MODEL} gradcam {explanation.layer} blob"
    layer = viewer.layers[name]
    assert explanation.volume.name == name
    same_geometry(layer, image)
    assert layer.blending == "additive" and layer.colormap.name == "inferno"
    line = widget.explanations.results.item(0).text()
    scores = explanation.faithfulness
    assert line.startswith(f"{name}: deletion AUC {scores.deletion_auc:.3f}")
    assert scores.reason in line
    assert ("NOT TELLING" in line) == (not scores.telling)

    # Display controls act on the inspector's maps.
    widget.explanations.blending.setCurrentText("translucent")
    widget.explanations.opacity.setValue(30)
    widget.explanations.threshold.setValue(50)
    top = layer.metadata[INSPECT_KEY]["top"]
    assert layer.blending == "translucent" and layer.opacity == pytest.approx(0.3)
    assert tuple(layer.contrast_limits) == pytest.approx((top / 2, top))


def test_channel_attention_draws_the_strongest_channels(setup, qtbot):
    viewer, image, widget = setup
    widget.model.setCurrentText(SE_MODEL)
    qtbot.waitUntil(lambda: widget.method.findText("channels") >= 0, timeout=30_000)
    widget.method.setCurrentText("channels")
    assert wait(qtbot, widget.run()).outcome == "done"
    assert len(widget.explanations.maps) > 1  # every SE level, one map each
    widget.explanations.results.setCurrentRow(1)
    assert widget.explanations.chart.isVisible()
    weights = widget.explanations.maps[1].channel_weights
    bars = widget.explanations.chart.figure.axes[0].patches
    expected = np.sort(weights)[::-1][:len(bars)]
    np.testing.assert_allclose([bar.get_width() for bar in bars], expected, rtol=1e-6)
    for explanation in widget.explanations.maps:
        same_geometry(viewer.layers[explanation.volume.name], image)


def test_cancel_adds_no_layer(setup, qtbot, notes):
    viewer, _image, widget = setup
    layers = list(viewer.layers)
    widget.method.setCurrentText("gradcam")
    job = widget.run()
    widget.cancel()
    wait(qtbot, job)
    assert job.outcome == "cancelled"
    assert notes == [("info", f"{job.description}: cancelled.")]
    assert list(viewer.layers) == layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_uncertainty_slices_jump_the_viewer(setup, qtbot):
    viewer, image, widget = setup
    widget.uncertainty.kind.setCurrentText("entropy")
    job = wait(qtbot, widget.uncertainty.compute())
    assert job.outcome == "done"
    layer = viewer.layers[widget.uncertainty.source.currentText()]
    same_geometry(layer, image)
    assert widget.uncertainty.slices and widget.uncertainty.slice_list.count() == len(widget.uncertainty.slices)
    # The listed slices are the best axial slices of the layer's data (axis 0 = z).
    means = np.asarray(layer.data, dtype=np.float64).mean(axis=(1, 2))
    assert widget.uncertainty.slices[0].index == int(np.argmax(means))
    target = widget.uncertainty.slices[-1]
    item = widget.uncertainty.slice_list.item(len(widget.uncertainty.slices) - 1)
    assert item.text().startswith(f"z = {target.z_mm:.1f} mm (slice {target.index})")
    widget.uncertainty.slice_list.itemClicked.emit(item)
    assert viewer.dims.current_step[0] == target.index
    assert viewer.dims.point[0] == pytest.approx(target.z_mm)


def test_a_labels_layer_restricts_the_explained_region(setup, qtbot, scan):
    viewer, image, widget = setup
    painted = np.zeros(image.data.shape, np.uint8)
    painted[4:9, 6:12, 5:10] = 3  # a box the user painted, in the displayed (z, y, x) order
    viewer.add_labels(painted, name="my region", scale=image.scale, translate=image.translate,
                      affine=image.affine)
    widget.method.setCurrentText("gradcam")
    assert widget.explanations.region.isEnabled()
    assert [widget.explanations.region.itemText(i) for i in range(widget.explanations.region.count())] == [
        inspector_maps.WHOLE_SCAN, "my region"]
    widget.explanations.region.setCurrentText("my region")
    widget.explanations.target.setCurrentText("blob")
    job = wait(qtbot, widget.run())
    assert job.outcome == "done"
    (explanation,) = widget.explanations.maps
    # The same map as the library computes for that region given on the scan's own grid.
    module, card = registry.load_model(MODEL)
    region = np.zeros(scan.spatial_shape, bool)
    # Map the painted (displayed) voxels back to the stored array: the canonical view of
    # each stored index grid says which stored voxel every displayed voxel is.
    stored = np.indices(scan.spatial_shape)
    painted_voxels = tuple(np.argwhere(painted != 0).T)
    region[tuple(Volume(stored[a], scan.affine, "OT").canonical().data[painted_voxels]
                 for a in range(3))] = True
    assert region.sum() == (painted != 0).sum()
    [expected] = inspector_maps.explain(scan, module, card, "gradcam", target_class=1,
                                          region=region, device="cpu")
    np.testing.assert_allclose(viewer.layers[explanation.volume.name].data,
                               expected.volume.canonical().data, atol=1e-6)
    # Native maps explain no class and take no region.
    offered = [widget.method.itemText(i) for i in range(widget.method.count())]
    assert "dssa" in offered
    widget.method.setCurrentText("dssa")
    assert not widget.explanations.region.isEnabled()


def test_segment_and_inspector_on_one_model_hold_it_once(setup, qtbot):
    viewer, _image, widget = setup
    from napari_medattn.widgets.segment import SegmentWidget

    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    segment.model.setCurrentText(MODEL)
    qtbot.waitUntil(lambda: segment.model.loaded is not None, timeout=30_000)
    assert segment.model.loaded.module is widget.model.loaded.module
