"""The Detect widget's Classify row in a real viewer: the probability shown is the library's,
the heat-map layer is the library's map on the scan's display grid styled as every heat
map, "none" adds no layer, a rerun replaces the map, and a screenshot.

The classifier is a tiny, randomly initialised MedFormer (the widget's plumbing, not the
model's quality, is under test; the shipped model's figures are in its card)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medattn.classification import classify, heat_map
from napari_medattn.display.layers import volume_layer_data
from napari_medattn.io import Volume
from napari_medattn.models import create, registry
from napari_medattn.models.card import ModelCard
from napari_medattn.widgets.detect import CLASSIFY_KEY, NO_HEATMAP, DetectWidget
from napari_medattn.widgets.parts.layers import DERIVED_KEY, HEAT_COLORMAP

MODEL = "tiny-classifier"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = dict(spatial_dims=3, in_channels=1, out_channels=2, task="classification",
                  widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], topk=[4, 16, 4, None],
                  n_win=[4, 4, 2, 1], head_dim=8)
    card = ModelCard(name=MODEL, architecture="medformer", task="classification",
                     config=config, classes=[("none", "#000000"), ("finding", "#ff3030")],
                     patch_size=(32, 32, 32), modality="MR", orientation="RAS",
                     spacing=(3.0, 3.0, 3.0), normalization={"scheme": "zscore"})
    folder = tmp_path_factory.mktemp("models")
    registry.save_model(create("medformer", **config).eval(), card, folder / MODEL)
    return folder


def phantom() -> Volume:
    """A 2 mm LPS head-like ball with one bright spot."""
    shape = (36, 40, 34)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-36.0, -40.0, -34.0]
    mm = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    data = (np.linalg.norm(mm / [34, 38, 32], axis=1) < 1).astype(np.float32)
    data += 3.0 * np.exp(-((mm - [10.0, -12.0, 8.0]) ** 2).sum(1) / (2 * 4.0 ** 2))
    return Volume(data.reshape(shape), affine, "MR", {"name": "phantom"})


@pytest.fixture
def setup(make_napari_viewer, qtbot, model_folder, monkeypatch, add_layer):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "no-user-models")
    viewer = make_napari_viewer(show=True)
    scan = add_layer(viewer, volume_layer_data(phantom()))
    widget = DetectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect")
    widget.classifier.select(MODEL)
    qtbot.waitUntil(lambda: widget.classify_button.isEnabled() and
                    widget.classifier.loaded.card.name == MODEL, timeout=30_000)
    return viewer, scan, widget


def classify_and_wait(qtbot, widget):
    widget.classify_button.click()
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.finished, timeout=60_000)


def test_classify_shows_the_library_probability_and_its_heat_map(setup, qtbot):
    viewer, scan, widget = setup
    # Detectors and segmenters are not offered as classifiers.
    assert not widget.classifier.select("medformer-lesion-detector")
    assert not widget.classifier.select(registry.DEFAULT_MODEL)
    widget.heatmap.setCurrentText("gradcam")
    classify_and_wait(qtbot, widget)
    module, card = registry.load_model(model_folder_of(widget))
    expected = classify(phantom(), module, card, device="cpu")
    assert widget.classification.probability == pytest.approx(expected.probability, abs=1e-5)
    assert widget.probability.text() == f"p(finding) = {expected.probability:.2f}"
    (layer,) = [lay for lay in viewer.layers if CLASSIFY_KEY in lay.metadata]
    assert layer.metadata[DERIVED_KEY] == "detect" and layer.colormap.name == HEAT_COLORMAP
    assert layer.metadata[CLASSIFY_KEY]["kind"] == "gradcam"
    # On the scan's display grid, holding the library's map.
    assert np.allclose(layer.scale, scan.scale) and np.allclose(layer.translate, scan.translate)
    reference = heat_map(phantom(), module, card, "gradcam", device="cpu").volume
    assert np.allclose(np.asarray(layer.data), volume_layer_data(reference)[0], atol=1e-5)
    assert tuple(layer.contrast_limits) == (0.0, 1.0)
    # A second run replaces the map; "none" adds no layer.
    classify_and_wait(qtbot, widget)
    assert len([lay for lay in viewer.layers if CLASSIFY_KEY in lay.metadata]) == 1
    widget.heatmap.setCurrentText(NO_HEATMAP)
    classify_and_wait(qtbot, widget)
    assert len([lay for lay in viewer.layers if CLASSIFY_KEY in lay.metadata]) == 1
    # The routing map is another layer.
    widget.heatmap.setCurrentText("routing")
    classify_and_wait(qtbot, widget)
    kinds = {lay.metadata[CLASSIFY_KEY]["kind"] for lay in viewer.layers
             if CLASSIFY_KEY in lay.metadata}
    assert kinds == {"gradcam", "routing"}


def model_folder_of(widget) -> Path:
    return registry.find_model(widget.classifier.currentText()).path


def test_classify_screenshot(setup, qtbot, tmp_path):
    viewer, _, widget = setup
    viewer.window.resize(1400, 900)
    widget.heatmap.setCurrentText("gradcam")
    classify_and_wait(qtbot, widget)
    folder = Path(os.environ.get("MEDATTN_SCREENSHOT_DIR", tmp_path))
    shot = viewer.screenshot(str(folder / "detect_classify.png"), canvas_only=False,
                             flash=False)
    assert shot.shape[0] > 400
