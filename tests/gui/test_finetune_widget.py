"""The Fine-tune widget in a real viewer: a tiny model fine-tuned on a phantom scan and its
labels layer, the loss plot fed live, the new model's labels on the scan's geometry, the
model listed everywhere; Cancel leaves no model and no layer."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from napari.layers import Labels

from napari_medattn.display.layers import GEOMETRY_KEY, volume_layer_data
from napari_medattn.io import Volume
from napari_medattn.models import create, registry
from napari_medattn.models.card import ModelCard, default_classes
from napari_medattn.widgets import worker as worker_module
from napari_medattn.widgets.finetune import FinetuneWidget
from napari_medattn.widgets.parts.layers import RUN_KEY
from napari_medattn.widgets.segment import SegmentWidget

BASE = "tiny-rods"


def rods() -> tuple[Volume, Volume]:
    """A 24 x 20 x 16 scan (0.8 x 1 x 1.25 mm, oblique-free, origin off zero) with two rods
    of their own brightness, and their label map, in canonical order."""
    labels = np.zeros((24, 20, 16), np.uint8)
    labels[4:20, 3:7, 3:7] = 1
    labels[4:20, 12:16, 9:13] = 2
    image = labels * 120.0 + np.random.default_rng(2).normal(40, 6, labels.shape)
    affine = np.diag([0.8, 1.0, 1.25, 1.0])
    affine[:3, 3] = [12.0, -7.0, 3.0]
    scan = Volume(image.astype(np.float32), affine, "MR", {"name": "rods"}).canonical()
    return scan, Volume(labels, affine, "SEG", {"name": "rods corrected"}).canonical()


@pytest.fixture
def setup(make_napari_viewer, qtbot, tmp_path, monkeypatch, add_layer):
    # Only the tiny model is listed: no built-in model loads in the background.
    monkeypatch.setattr(registry, "BUILTIN_DIR", tmp_path / "no-builtins")
    monkeypatch.setattr(registry, "user_model_dir", lambda: tmp_path / "user")
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(tmp_path / "base"))
    for kind in ("error", "info"):
        monkeypatch.setattr(worker_module, f"show_{kind}", lambda text: None)
    torch.manual_seed(2)
    net = create("unet", channels=[4, 8], in_channels=1, out_channels=3)
    registry.save_model(net, ModelCard(
        name=BASE, architecture="unet", config=dict(net.config),
        classes=default_classes(["background", "rod A", "rod B"]), patch_size=(16, 16, 16),
        modality="MR", normalization={"scheme": "zscore"}), tmp_path / "base" / BASE)
    viewer = make_napari_viewer(show=True)
    scan, labels = rods()
    image = add_layer(viewer, volume_layer_data(scan))
    painted = add_layer(viewer, volume_layer_data(labels, "labels"))
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    assert widget.model.currentText() == BASE
    widget.device.setCurrentText("cpu")
    widget.lr.setValue(0.02)
    return viewer, image, painted, widget, tmp_path / "user"


def test_finetune_plots_saves_and_adds_the_result(setup, qtbot):
    viewer, image, painted, widget, user = setup
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    assert segment.model.currentText() == BASE
    qtbot.waitUntil(segment.run_button.isEnabled, timeout=60_000)  # its model loaded
    assert widget.image.currentText() == "rods"
    assert widget.labels.currentText() == "rods corrected"
    assert widget.name.text() == f"{BASE}-finetuned"  # suggested from the base model
    widget.steps.setValue(12)
    # Points are emitted in the worker thread and must be delivered on the GUI thread.
    delivered_on_gui_thread = []
    widget.plot.point.connect(lambda step, loss: delivered_on_gui_thread.append(
        threading.current_thread() is threading.main_thread()))
    job = widget.start()
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=120_000)
    assert job.outcome == "done"

    # Every step's loss reached the plot (through the queued signal), in order.
    assert widget.plot.steps == list(range(1, 13))
    assert delivered_on_gui_thread == [True] * 12
    assert widget.plot.losses == pytest.approx(widget.result.losses)
    line = widget.plot.axes.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), widget.plot.steps)

    # The model is installed, listed here and in the docked Segment widget.
    folder = user / f"{BASE}-finetuned"
    assert widget.result.entry.path == folder and (folder / "card.json").is_file()
    for box in (widget.model, segment.model):
        assert f"{BASE}-finetuned" in [box.itemText(i) for i in range(box.count())]
    assert str(folder) in widget.status.text()
    assert widget.name.text() == f"{BASE}-finetuned-2"  # the next free suggestion

    # Its labels are on the scan's geometry, tagged as the Segment widget tags its runs.
    result = viewer.layers[-1]
    assert isinstance(result, Labels) and result is not painted
    assert result.name == f"rods {BASE}-finetuned"
    assert result.data.shape == image.data.shape
    np.testing.assert_allclose(result.scale, image.scale)
    np.testing.assert_allclose(result.translate, image.translate)
    np.testing.assert_array_equal(result.metadata[GEOMETRY_KEY].affine,
                                  image.metadata[GEOMETRY_KEY].affine)
    assert result.metadata[RUN_KEY] == {"image": image.unique_id,
                                        "model": f"{BASE}-finetuned", "output": "labels"}
    np.testing.assert_array_equal(result.data, widget.result.segmentation.labels.data)
    assert np.mean(result.data[painted.data > 0] > 0) > 0.5  # it learnt the rods


def test_cancel_leaves_no_model_and_no_layer(setup, qtbot):
    viewer, _image, _painted, widget, user = setup
    widget.steps.setValue(500)
    layers = list(viewer.layers)
    job = widget.start()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 2, timeout=60_000)
    assert widget.cancel_button.isEnabled() and not widget.start_button.isEnabled()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "cancelled"
    assert len(widget.plot.steps) < 500
    assert list(viewer.layers) == layers
    assert not user.exists() or list(user.iterdir()) == []
    assert widget.status.text() == "Cancelled: no model was saved."
    assert widget.start_button.isEnabled()


def test_a_cancel_after_saving_removes_the_model(setup, qtbot, monkeypatch):
    """Cancel pressed after the model was installed but before the result reached the GUI."""
    viewer, _image, _painted, widget, user = setup
    from napari_medattn.widgets import finetune as finetune_module

    def finetune_then_cancel(*args, **kwargs):
        result = real(*args, **kwargs)
        assert result.entry.path.is_dir()
        kwargs["cancel"].__self__.cancel()  # the Job whose cancel check this is
        return result

    real = finetune_module.finetune
    monkeypatch.setattr(finetune_module, "finetune", finetune_then_cancel)
    widget.steps.setValue(2)
    layers = list(viewer.layers)
    job = widget.start()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "cancelled"
    assert list(viewer.layers) == layers
    assert list(user.iterdir()) == []
    assert widget.result is None


def test_bad_input_is_one_notification(setup, qtbot, monkeypatch):
    viewer, _image, painted, widget, user = setup
    from napari_medattn.widgets import finetune as finetune_module

    shown = []
    for module in (finetune_module, worker_module):
        monkeypatch.setattr(module, "show_error", shown.append)
    layers = list(viewer.layers)
    painted.data[0, 0, 0] = 9
    job = widget.start()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "failed"
    sentence = (f"The labels have value 9 but model '{BASE}' has classes 0-2 "
                f"(background, rod A, rod B).")
    assert shown == [sentence]
    widget.name.setText(BASE)
    assert widget.start() is None
    assert shown[-1].startswith(f"A model called '{BASE}' already exists")
    assert list(viewer.layers) == layers
    assert not user.exists() or list(user.iterdir()) == []
