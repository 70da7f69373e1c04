"""The Register widget's defaults per modality pair, fixed mask, Stop and keep and the
learned methods, in a real viewer on nibabel's anatomical pair (known rigid motion)."""

import time

import numpy as np
import pytest
import torch
from napari.utils.notifications import notification_manager

from napari_medattn.display.layers import volume_layer_data
from napari_medattn.io import Volume
from napari_medattn.models import create
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import save_model
from napari_medattn.registration import defaults_for
from napari_medattn.registration.learned import register_learned
from napari_medattn.registration.optimise import Run
from napari_medattn.registration.transforms import grid_points
from napari_medattn.widgets.parts.layers import TRANSFORM_KEY
from napari_medattn.widgets.register import LPS_TO_WORLD, NO_MASK

from test_register_widget import make_widget

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def add_volume(viewer, volume):
    data, kwargs, kind = volume_layer_data(volume)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def test_defaults_follow_the_modality_pair(make_napari_viewer):
    viewer, widget, fixed = make_widget(make_napari_viewer)
    # Two MR scans of unnamed weighting: the same contrast.
    assert widget.pair_note.text() == "MR / MR: same contrast"
    assert widget.metric.currentText() == "mse"
    widget.method.setCurrentText("deformable")
    assert widget.metric.currentText() == "ncc"
    widget.method.setCurrentText("rigid")
    widget.metric.setCurrentText("mi")  # the user's choice stands ...
    widget.method.setCurrentText("affine")
    assert widget.metric.currentText() == "mi"
    # ... until the pair changes: the same anatomy as a CT is another contrast.
    add_volume(viewer, Volume(np.asarray(fixed.data), fixed.affine, "CT",
                              {**fixed.meta, "name": "ct"}))
    widget.moving.setCurrentText("ct")
    expected = defaults_for("MR", "CT", "affine")
    assert widget.pair_note.text() == "MR / CT: different contrasts"
    assert widget.metric.currentText() == expected.metric == "mi"
    assert widget.levels.text() == ",".join(map(str, expected.levels))
    widget.method.setCurrentText("deformable")
    assert widget.metric.currentText() == "mi"
    pet = defaults_for("MR", "PT", "deformable")
    add_volume(viewer, Volume(np.asarray(fixed.data), fixed.affine, "PT",
                              {**fixed.meta, "name": "pet"}))
    widget.moving.setCurrentText("pet")
    assert widget.levels.text() == "4,2"
    assert widget.smoothing.value() == pet.smoothing_mm
    settings = widget.settings()
    assert (settings.metric, settings.levels, settings.smoothing_mm) == \
        (pet.metric, pet.levels, pet.smoothing_mm)
    assert settings.deformable_iterations == pet.deformable_iterations


def add_fixed_mask(viewer, fixed, mask, name):
    return add_volume(viewer, Volume(mask.astype(np.uint8), fixed.affine, "SEG",
                                     {**fixed.meta, "name": name}))


def test_fixed_mask_choices_and_an_empty_mask(make_napari_viewer, qtbot):
    viewer, widget, fixed = make_widget(make_napari_viewer)
    add_fixed_mask(viewer, fixed, np.zeros(fixed.spatial_shape), "empty")
    choices = [widget.mask.itemText(i) for i in range(widget.mask.count())]
    # "moving brain" has the fixed scan's shape but lies on the moving scan's grid.
    assert choices == [NO_MASK, "empty"]
    moving_layer = viewer.layers["moving"]
    before = np.array(moving_layer.affine.affine_matrix)
    names = [layer.name for layer in viewer.layers]
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    widget.mask.setCurrentText("empty")
    job = widget.run()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "failed"
    assert any("mask is empty" in message for message in messages)
    assert [layer.name for layer in viewer.layers] == names
    assert np.allclose(moving_layer.affine.affine_matrix, before)


def wait_for_stage(widget, qtbot, job, stage):
    qtbot.waitUntil(lambda: stage in widget.status.text() or job.finished, timeout=60_000)
    assert not job.finished, "the run ended before it could be stopped"


def test_stop_and_keep_a_linear_run(make_napari_viewer, qtbot, monkeypatch):
    # The compiled linear stage finishes this small pair in well under a second, before a
    # click could land: each evaluation is slowed down so the run is still going.
    evaluate = Run._linear_loss

    def slow_evaluation(self, *args, **kwargs):
        time.sleep(0.02)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Run, "_linear_loss", slow_evaluation)
    viewer, widget, fixed = make_widget(make_napari_viewer)
    moving_layer = viewer.layers["moving"]
    widget.method.setCurrentText("affine")
    job = widget.run()
    assert widget.keep_button.isEnabled()
    wait_for_stage(widget, qtbot, job, "metric")
    widget.keep_button.click()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "cancelled"
    assert not widget.keep_button.isEnabled()
    assert widget.status.text().startswith("Stopped; kept the last state")
    kept = widget.transform
    assert kept is not None and not np.allclose(kept.matrix, np.eye(4))
    # The moving layer stays where the kept transform puts it, as after a finished run.
    expected = LPS_TO_WORLD @ np.linalg.inv(kept.matrix) @ \
        moving_layer.metadata["medattn_geometry"].affine
    assert np.allclose(moving_layer.affine.affine_matrix, expected)
    assert moving_layer.metadata[TRANSFORM_KEY]["transform"] is kept
    assert widget.results.quality.rowCount() >= 3


def test_stop_and_keep_in_the_deformable_stage(make_napari_viewer, qtbot):
    viewer, widget, _ = make_widget(make_napari_viewer)
    moving_layer = viewer.layers["moving"]
    before = np.array(moving_layer.affine.affine_matrix)
    names = {layer.name for layer in viewer.layers}
    widget.method.setCurrentText("deformable")
    job = widget.run()
    wait_for_stage(widget, qtbot, job, "deformable")
    widget.stop_and_keep()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "cancelled"
    added = [layer.name for layer in viewer.layers if layer.name not in names]
    # The partial field is kept like a finished deformable result; no preview is left.
    assert added[:2] == ["moving on fixed", "moving det J - 1"]
    assert "moving (preview)" not in viewer.layers
    assert np.allclose(moving_layer.affine.affine_matrix, before)
    field = widget.transform
    assert field.displacement.shape[1:] == viewer.layers["fixed"].data.shape
    assert moving_layer.metadata[TRANSFORM_KEY]["transform"] is field


def tiny_registration_model(folder):
    """An untrained VoxelMorph-style network with a registration card (the shipped models'
    grid: RAS, 2 mm), saved as a model folder the widget can open."""
    torch.manual_seed(0)
    net = create("voxelmorph", channels=[8, 8, 8]).eval()
    card = ModelCard(name="tiny-voxelmorph", task="registration", architecture="voxelmorph",
                     config=net.config, classes=[("background", "#000000"),
                                                 ("brain", "#ffffff")],
                     patch_size=(32, 32, 32), modality="MR", spacing=(2.0, 2.0, 2.0),
                     orientation="RAS", in_channels=2,
                     normalization={"scheme": "percentile", "percentiles": [0.5, 99.5]})
    return save_model(net, card, folder)


def test_learned_method_runs_the_chosen_network(make_napari_viewer, qtbot, tmp_path):
    folder = tiny_registration_model(tmp_path / "tiny-voxelmorph")
    viewer, widget, _ = make_widget(make_napari_viewer)
    moving_layer = viewer.layers["moving"]
    names = {layer.name for layer in viewer.layers}
    widget.method.setCurrentText("learned")
    # The network reads no metric, pyramid, penalty or mask: only the model is offered.
    assert widget.model.isEnabled() and not widget.metric.isEnabled()
    assert not widget.iterations.isEnabled() and not widget.mask.isEnabled()
    widget.model.add(folder)
    job = widget.run()
    qtbot.waitUntil(lambda: job.finished, timeout=120_000)
    assert job.outcome == "done"
    added = [layer.name for layer in viewer.layers if layer.name not in names]
    assert added[:2] == ["moving on fixed", "moving det J - 1"]
    assert moving_layer.metadata[TRANSFORM_KEY]["method"] == "learned"
    # The widget hands the library's own result through (deterministic on the CPU).
    fixed, moving = widget.volume("fixed"), widget.volume("moving")
    direct = register_learned(fixed, moving, model=str(folder))
    points = grid_points(fixed.affine, fixed.spatial_shape).reshape(-1, 3)
    assert np.abs(widget.transform(points) - direct.transform(points)).max() < 1e-3
    # A mask chosen for a classical run is refused before anything runs.
    add_fixed_mask(viewer, fixed, np.ones(fixed.spatial_shape), "fixed everything")
    widget.method.setCurrentText("deformable")
    assert widget.metric.isEnabled() and not widget.model.isEnabled()
    widget.mask.setCurrentText("fixed everything")
    widget.method.setCurrentText("learned-refine")
    assert widget.iterations.isEnabled()
    assert widget.run() is None and "take no mask" in widget.status.text()
