"""The Detect widget in a real viewer: a run draws boxes on the slices and fills the table,
a row click moves the dims there, the threshold slider filters live, lesions from a Labels
layer, CSV export, and a screenshot.

The detector's network is a pointwise oracle (centre logit rising with intensity, 12 mm
boxes) run through the real pipeline, so the boxes must land on the phantom's two
lesions at known patient positions."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_medattn.detection import detector as detector_module
from napari_medattn.display.layers import volume_layer_data
from napari_medattn.io import Volume
from napari_medattn.models import create, registry
from napari_medattn.models.card import ModelCard
from napari_medattn.widgets import detect as detect_module
from napari_medattn.detection.detector import DEFAULT_DETECTOR
from napari_medattn.widgets.detect import DetectWidget
from napari_medattn.widgets.parts.jobs import JobControls
from napari_medattn.widgets.parts.pickers import ModelPicker

#: Lesions in LPS mm and their peak intensity (the second is fainter: a lower score).
LESIONS_MM = [np.array([10.0, -12.0, 20.0]), np.array([-25.0, 15.0, -8.0])]
PEAKS = [4.0, 3.0]
SIZE_MM = 12.0
MODEL = "tiny-detector"


class Oracle(nn.Module):
    def forward(self, x):
        size = torch.full_like(x, float(np.log(SIZE_MM / 10.0)))
        return torch.cat([2.5 * (x - 2.2), size, size, size], dim=1)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    config = dict(spatial_dims=3, in_channels=1, out_channels=4, task="segmentation",
                  widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], topk=[4, 16, 4, None],
                  n_win=[4, 4, 2, 1], head_dim=8)
    card = ModelCard(name=MODEL, architecture="medformer", task="detection", config=config,
                     classes=[("background", "#000000"), ("lesion", "#ff3030")],
                     patch_size=(32, 32, 32), modality="MR")
    folder = tmp_path_factory.mktemp("models")
    registry.save_model(create("medformer", **config), card, folder / MODEL)
    return folder


def phantom() -> Volume:
    """A 2 mm LPS head-like ball (intensity 1) with two Gaussian lesions."""
    shape = (40, 44, 40)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40.0, -44.0, -40.0]
    index = np.indices(shape).reshape(3, -1).T
    mm = index @ affine[:3, :3].T + affine[:3, 3]
    data = (np.linalg.norm(mm / [38, 42, 38], axis=1) < 1).astype(np.float32)
    for centre, peak in zip(LESIONS_MM, PEAKS):
        data += (peak - 1) * np.exp(-((mm - centre) ** 2).sum(1) / (2 * 4.0 ** 2))
    return Volume(data.reshape(shape), affine, "MR", {"name": "phantom"})


@pytest.fixture
def setup(make_napari_viewer, qtbot, model_folder, monkeypatch, add_layer):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "no-user-models")
    real_detect = detector_module.detect
    monkeypatch.setattr(detect_module, "detect", lambda volume, module, card, **kw:
                        real_detect(volume, Oracle(), card, use_autocast=False, **kw))
    viewer = make_napari_viewer(show=True)
    scan = add_layer(viewer, volume_layer_data(phantom()))
    widget = DetectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect")
    widget.model.select(MODEL)
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=30_000)
    return viewer, scan, widget


def run_and_wait(qtbot, widget, button=None):
    (button or widget.run_button).click()
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.finished, timeout=60_000)


def test_run_draws_boxes_fills_the_table_and_jumps_to_a_lesion(setup, qtbot, tmp_path):
    viewer, scan, widget = setup
    run_and_wait(qtbot, widget)
    assert widget.table.rowCount() == 2
    found = [d.centre_mm for d in widget.shown]
    for centre, expected in zip(found, LESIONS_MM):  # by score: the brighter one first
        assert np.linalg.norm(centre - expected) < 1.0
    boxes = viewer.layers["phantom lesion boxes"]
    # One rectangle on every axial slice whose centre lies inside a 12 mm box (6 or 7
    # slices of 2 mm, depending on where the refined centre falls).
    slices = [int(round(r[0, 0])) for r in boxes.data]
    near = set()
    for centre in found:
        z = (np.arange(scan.data.shape[0]) * scan.scale[0] + scan.translate[0]) - centre[2]
        assert set(np.nonzero(np.abs(z) < SIZE_MM / 2 - 0.1)[0]) <= set(slices)
        near |= set(np.nonzero(np.abs(z) <= SIZE_MM / 2 + 0.1)[0])
    assert set(slices) <= near and 10 <= len(slices) <= 14
    assert float(widget.table.item(0, 0).text()) >= float(widget.table.item(1, 0).text())
    # Clicking the second row moves the dims (world z, y, x mm) to that lesion.
    widget.table.cellClicked.emit(1, 0)
    target = LESIONS_MM[1][::-1]
    step = np.asarray(scan.scale)
    assert np.all(np.abs(np.asarray(viewer.dims.point)[-3:] - target) <= step)
    # The threshold slider filters the boxes, points and table live.
    scores = [d.score for d in widget.shown]
    widget.threshold.setValue(int(100 * (min(scores) + max(scores)) / 2))
    assert widget.table.rowCount() == 1 and 0 < len(boxes.data) < len(slices)
    assert len(viewer.layers["phantom lesion centres"].data) == 1
    widget.threshold.setValue(99)
    assert widget.table.rowCount() == 0 and len(boxes.data) == 0
    widget.threshold.setValue(30)
    assert widget.table.rowCount() == 2
    rows = list(csv.DictReader(open(widget.export_csv(tmp_path / "lesions.csv"))))
    assert [r["class"] for r in rows] == ["lesion", "lesion"]
    assert np.isclose(float(rows[0]["centre_x_mm"]), LESIONS_MM[0][0], atol=1.0)


def test_lesions_from_a_labels_layer(setup, qtbot, add_layer):
    viewer, scan, widget = setup
    assert not widget.from_labels_button.isEnabled()  # no Labels layer yet
    assert not widget.model.select("dssa-unet-brain-tissue")  # segmenters are not listed
    widget.model.add(registry.find_model("dssa-unet-brain-tissue").path)  # opened: Run is off
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=30_000)
    assert not widget.run_button.isEnabled()
    volume = phantom()
    labels = Volume((volume.data > 2.0).astype(np.uint8), volume.affine, "SEG",
                    {"name": "painted"})
    add_layer(viewer, volume_layer_data(labels))
    widget.image.setCurrentText("phantom")
    widget.labels.setCurrentText("painted")
    assert widget.from_labels_button.isEnabled()     # ... but listing lesions needs no model
    run_and_wait(qtbot, widget, widget.from_labels_button)
    assert widget.table.rowCount() == 2
    assert all(d.measurements["volume_ml"] > 0 for d in widget.shown)
    assert {d.class_name for d in widget.shown} == {"label 1"}


def test_screenshot(setup, qtbot, tmp_path):
    viewer, scan, widget = setup
    viewer.window.resize(1400, 900)
    run_and_wait(qtbot, widget)
    widget.table.cellClicked.emit(0, 0)
    folder = Path(os.environ.get("MEDATTN_SCREENSHOT_DIR", tmp_path))
    shot = viewer.screenshot(str(folder / "detect_widget.png"), canvas_only=False, flash=False)
    assert shot.shape[0] > 400


def test_model_pickers_list_only_the_models_of_their_task(qtbot, model_folder, monkeypatch):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "no-user-models")
    jobs = JobControls(lambda: None, lambda: True)
    qtbot.addWidget(jobs)
    pickers = {"segmentation": ModelPicker(jobs, tooltip="", load=False),
               "detection": ModelPicker(jobs, tooltip="", load=False, task="detection",
                                        default=DEFAULT_DETECTOR)}
    for task, picker in pickers.items():
        qtbot.addWidget(picker)
        picker.refresh()
        listed = {picker.itemText(row) for row in range(picker.count())}
        assert listed == {e.name for e in registry.list_models() if e.card.task == task}
    assert MODEL in {pickers["detection"].itemText(r) for r in range(pickers["detection"].count())}
    assert pickers["detection"].currentText() == DEFAULT_DETECTOR
    assert pickers["segmentation"].currentText() == registry.DEFAULT_MODEL
