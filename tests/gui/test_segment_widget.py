"""The Segment widget in a real viewer: end to end on the MNI152 sample (4 mm, with a
tiny U-Net trained on it in a few seconds), Cancel, replacing runs, painted labels,
errors, and a screenshot of the labels over the scan."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMainWindow

import napari_medattn
from napari_medattn.display.layers import GEOMETRY_KEY, volume_layer_data
from napari_medattn.inference.devices import cpu_has_native_bf16
from napari_medattn.inference.preprocess import normalize_intensity
from napari_medattn.io import Volume, read_volume
from napari_medattn.models import create
from napari_medattn.models import registry
from napari_medattn.models.card import ClassInfo, ModelCard
from napari_medattn.widgets import segment as segment_module
from napari_medattn.widgets import worker as worker_module
from napari_medattn.widgets.parts import pickers as pickers_module
from napari_medattn.widgets.parts.layers import DIGEST_KEY, RUN_KEY
from napari_medattn.widgets.segment import SegmentWidget

SAMPLES = Path(napari_medattn.__file__).parent / "sample_data"
STEP = 4  # mm: the 1 mm MNI152 at 4 mm is 50 x 59 x 48 voxels
PATCH = 16
CLASSES = [ClassInfo("background", "#000000"), ClassInfo("CSF", "#3399ff"),
           ClassInfo("grey matter", "#ff3333"), ClassInfo("white matter", "#ffee00")]
MODEL = "tiny-brain"


def downsampled(path: Path, step: int) -> Volume:
    """Every ``step``-th voxel, with the affine that places it exactly."""
    volume = read_volume(path)
    affine = volume.affine.copy()
    affine[:3, :3] *= step
    data = np.ascontiguousarray(volume.data[::step, ::step, ::step])
    return Volume(data, affine, volume.modality, {**volume.meta, "name": path.name.split(".")[0]})


@pytest.fixture(scope="module")
def brain():
    return (downsampled(SAMPLES / "mni152_t1.nii.gz", STEP),
            downsampled(SAMPLES / "mni152_tissue_labels.nii.gz", STEP))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, brain):
    """A tiny attention-gated U-Net trained for 80 steps on the scan it will segment."""
    image, labels = brain
    normalization = {"scheme": "zscore"}
    x = torch.from_numpy(normalize_intensity(image.data.astype(np.float32), normalization))
    y = torch.from_numpy(labels.data.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on every machine
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [8, 16],
              "attention": "gate"}
    net = create("unet", **config)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(80):
        starts = [[rng.integers(0, n - PATCH + 1) for n in x.shape] for _ in range(4)]
        windows = [tuple(slice(s, s + PATCH) for s in start) for start in starts]
        loss = torch.nn.functional.cross_entropy(
            net(torch.stack([x[w] for w in windows])[:, None]),
            torch.stack([y[w] for w in windows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    card = ModelCard(name=MODEL, architecture="unet", config=config, classes=CLASSES,
                     modality="MR", patch_size=(PATCH,) * 3, normalization=normalization,
                     training_data="the MNI152 T1 sample at 4 mm and its tissue labels",
                     metrics={"dice_brain": 0.9}, evaluated_on="its training scan")
    folder = tmp_path_factory.mktemp("models")
    registry.save_model(net.eval(), card, folder / MODEL)
    return folder


@pytest.fixture
def notes(monkeypatch):
    """Notifications of the widget, its parts and its worker, as (kind, text)."""
    shown = []
    for module, kinds in ((segment_module, ("error",)), (pickers_module, ("info",)),
                          (worker_module, ("error", "info"))):
        for kind in kinds:
            monkeypatch.setattr(module, f"show_{kind}",
                                lambda text, kind=kind: shown.append((kind, text)))
    return shown


def segment_viewer(make_napari_viewer, qtbot, brain, model_folder, monkeypatch, add_layer,
                   show=False):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "no-user-models")
    viewer = make_napari_viewer(show=show)
    image = add_layer(viewer, volume_layer_data(brain[0]))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.model.setCurrentText(MODEL)
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=20_000)  # model loaded
    return viewer, image, widget


@pytest.fixture
def setup(make_napari_viewer, qtbot, brain, model_folder, monkeypatch, add_layer):
    return segment_viewer(make_napari_viewer, qtbot, brain, model_folder, monkeypatch,
                          add_layer)


def run_and_wait(qtbot, widget):
    job = widget.run()
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    return job


def result_layers(viewer):
    return [layer for layer in viewer.layers if RUN_KEY in layer.metadata]


def check(box, *rows):
    for row in rows:
        box.item(row).setCheckState(Qt.CheckState.Checked)


def test_end_to_end_labels_heat_maps_and_statistics(setup, qtbot, brain, tmp_path):
    viewer, image, widget = setup
    assert widget.model.toolTip().startswith(f"{MODEL} (unet): segmentation")
    assert "not for clinical use" in widget.model.toolTip()
    assert [widget.probabilities.item(r).text() for r in range(4)] == [c.name for c in CLASSES]
    attention = [widget.attention.item(r).text() for r in range(widget.attention.count())]
    assert attention and all("gate" in name for name in attention)
    check(widget.probabilities, 3)
    check(widget.attention, 0)
    job = run_and_wait(qtbot, widget)
    assert job.outcome == "done"

    labels, probability, attention_layer = result_layers(viewer)
    assert labels.name == "mni152_t1 tiny-brain"
    assert probability.name == "mni152_t1 white matter probability"
    assert attention_layer.name == f"mni152_t1 tiny-brain attention {attention[0]}"
    # The scan's grid, extent and exact geometry.
    for layer in (labels, probability, attention_layer):
        assert layer.data.shape == image.data.shape
        assert np.array_equal(layer.extent.world, image.extent.world)
        assert np.array_equal(layer.metadata[GEOMETRY_KEY].affine,
                              image.metadata[GEOMETRY_KEY].affine)
    # Class colours and names from the card (status bar shows the class name).
    for index, info in enumerate(CLASSES[1:], start=1):
        assert np.allclose(labels.colormap.map(np.array([index]))[0][:3],
                           np.array([int(info.color[i:i + 2], 16) for i in (1, 3, 5)]) / 255)
    assert list(labels.features["class"]) == [c.name for c in CLASSES]
    white = labels.data_to_world(np.argwhere(labels.data == 3)[0])
    viewer.dims.set_point(range(3), white)
    assert labels.get_status(white, world=True)["value"] == "3; class: white matter"
    # A real segmentation of the brain (the model saw this scan while training).
    predicted, reference = labels.data > 0, brain[1].canonical().data > 0
    dice = 2 * np.sum(predicted & reference) / (predicted.sum() + reference.sum())
    assert dice > 0.8
    assert probability.colormap.name == "inferno" and probability.blending == "additive"
    assert 0.0 <= probability.data.min() and probability.data.max() <= 1.0
    # Probability agrees with the labels: white matter voxels have the highest.
    assert probability.data[labels.data == 3].mean() > probability.data[labels.data != 3].mean()

    rows = widget.statistics
    assert [r["name"] for r in rows] == ["CSF", "grey matter", "white matter"]
    voxel_ml = STEP ** 3 / 1000.0
    for row in rows:
        count = int(np.sum(labels.data == row["label"]))
        assert row["voxels"] == count and row["volume_ml"] == pytest.approx(count * voxel_ml)
        if count:  # the tiny net may miss CSF: its row says 0 voxels
            inside = image.data[labels.data == row["label"]]
            assert row["mean"] == pytest.approx(float(inside.mean()))
    assert widget.table.rowCount() == 3
    assert widget.table.item(2, 0).text() == "white matter"
    path = widget.export_statistics(tmp_path / "stats.csv")
    with open(path, newline="") as f:
        written = list(csv.DictReader(f))
    assert [int(r["voxels"]) for r in written] == [r["voxels"] for r in rows]
    assert not widget.cancel_button.isEnabled() and widget.run_button.isEnabled()


def test_cancel_after_the_first_batch_leaves_no_layer(setup, qtbot, monkeypatch, notes):
    viewer, _image, widget = setup
    real_segment = segment_module.segment
    calls = []

    def cancelling_segment(*args, progress, cancel, **kwargs):
        def progress_then_cancel(done, total):
            calls.append((done, total))
            progress(done, total)
            widget.job.cancel()  # thread-safe: sets the job's event
        return real_segment(*args, progress=progress_then_cancel, cancel=cancel, **kwargs)

    monkeypatch.setattr(segment_module, "segment", cancelling_segment)
    layers_before = list(viewer.layers)
    job = run_and_wait(qtbot, widget)
    assert job.outcome == "cancelled"
    assert notes == [("info", f"Segment mni152_t1 ({MODEL}): cancelled.")]
    assert len(calls) == 1 and calls[0][0] < calls[0][1]  # stopped after one batch of many
    assert list(viewer.layers) == layers_before
    assert widget.statistics == [] and widget.table.rowCount() == 0
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_second_run_replaces_first_and_painted_labels_are_kept(setup, qtbot, brain):
    viewer, image, widget = setup
    check(widget.probabilities, 2)
    run_and_wait(qtbot, widget)
    first_labels, first_probability = result_layers(viewer)
    first_data = first_labels.data
    # Same scan and model, other options: the labels are replaced in place by the new
    # result, and the probability no longer asked for goes.
    widget.probabilities.item(2).setCheckState(Qt.CheckState.Unchecked)
    widget.crop.setChecked(True)
    widget.min_component.setValue(2000.0)
    run_and_wait(qtbot, widget)
    second = result_layers(viewer)
    assert second == [first_labels] and first_probability not in viewer.layers
    assert second[0].name == "mni152_t1 tiny-brain"
    module, card = widget.model.loaded.module, widget.model.loaded.card
    expected = segment_module.segment(brain[0].canonical(), module, card, device="cpu",
                                      crop_to_body=True, min_component_mm3=2000.0)
    assert second[0].data is not first_data
    assert np.array_equal(second[0].data, expected.labels.data)
    assert second[0].metadata[DIGEST_KEY] == segment_module.labels_digest(second[0].data)

    # The user paints into the result: the next run must not remove it.
    painted = second[0]
    painted.paint((20, 30, 24), 2, refresh=True)
    edited = painted.data.copy()
    run_and_wait(qtbot, widget)
    assert painted in viewer.layers and np.array_equal(painted.data, edited)
    assert RUN_KEY not in painted.metadata and DIGEST_KEY not in painted.metadata
    third = result_layers(viewer)
    assert len(third) == 1 and third[0] is not painted
    assert "Kept your edited labels" in widget.status.text()
    # The edited layer is the user's now: a fourth run replaces only the third.
    third_data = third[0].data
    run_and_wait(qtbot, widget)
    assert np.array_equal(painted.data, edited) and RUN_KEY not in painted.metadata
    assert result_layers(viewer) == third and third[0].data is not third_data
    assert len([l for l in viewer.layers if l is not image]) == 2


def test_errors_are_one_notification(setup, qtbot, notes, tmp_path):
    viewer, image, widget = setup
    # An image without patient geometry, a result heat map: not scans, never offered.
    viewer.add_image(np.zeros((8, 9, 10), np.float32), name="no geometry")
    check(widget.probabilities, 1)
    run_and_wait(qtbot, widget)
    assert [widget.image.itemText(i) for i in range(widget.image.count())] == [image.name]
    for layer in result_layers(viewer):
        viewer.layers.remove(layer)
    widget.probabilities.item(1).setCheckState(Qt.CheckState.Unchecked)
    assert notes == []
    # Bad options reach the library, whose typed error becomes one notification.
    widget.uncertainty.setCurrentText("variance")  # variance across TTA needs TTA
    job = run_and_wait(qtbot, widget)
    assert job.outcome == "failed"
    assert notes == [("error", "Variance uncertainty needs test-time augmentation "
                                "(tta=True).")]
    assert result_layers(viewer) == [] and widget.run_button.isEnabled()
    # A model folder that cannot load: one sentence, Run off, no retry loop.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "card.json").write_text(widget.model.loaded.card.to_json())
    widget.add_model(broken)
    qtbot.waitUntil(lambda: widget.job.finished, timeout=10_000)
    qtbot.wait(100)
    assert notes[-1] == ("error", "The model folder broken has a card but no "
                                  "weights.safetensors.")
    assert len(notes) == 2 and widget.job.finished and not widget.run_button.isEnabled()


def test_screenshot_shows_labels_over_the_scan(make_napari_viewer, qtbot, brain, model_folder,
                                                monkeypatch, tmp_path, add_layer):
    viewer, image, widget = segment_viewer(make_napari_viewer, qtbot, brain, model_folder,
                                           monkeypatch, add_layer, show=True)
    viewer.window.resize(1400, 900)
    run_and_wait(qtbot, widget)
    labels = result_layers(viewer)[0]
    viewer.dims.set_point(0, labels.data_to_world((24, 0, 0))[0])  # mid-brain axial slice
    labels.visible = False
    scan_only = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    labels.visible = True
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    # Translucent blending: shown = opacity * colour + (1 - opacity) * scan, so the colour
    # under each changed pixel can be recovered and must be a class colour.
    alpha = labels.opacity
    changed = np.abs(shot - scan_only).max(axis=-1) > 8
    recovered = (shot[changed] - (1 - alpha) * scan_only[changed]) / alpha
    shown_slice = labels.data[24]
    checked = []
    for index, info in enumerate(CLASSES):
        if index == 0 or np.sum(shown_slice == index) < 50:
            continue
        colour = np.array([int(info.color[i:i + 2], 16) for i in (1, 3, 5)], float)
        near = np.abs(recovered - colour).max(axis=-1) < 20
        assert near.sum() > 500, info.name
        checked.append(info.name)
    assert {"grey matter", "white matter"} <= set(checked)
    assert changed.mean() > 0.05
    folder = Path(os.environ.get("MEDATTN_SCREENSHOT_DIR", tmp_path))
    window = viewer.screenshot(str(folder / "segment_widget.png"), canvas_only=False,
                               flash=False)
    assert window.shape[0] > shot.shape[0]


def test_precision_choice_reaches_the_segmentation_and_the_status(setup, qtbot, monkeypatch):
    _viewer, _image, widget = setup
    asked = []
    real_segment = segment_module.segment

    def recording_segment(*args, **kwargs):
        asked.append(kwargs["use_autocast"])
        return real_segment(*args, **kwargs)

    monkeypatch.setattr(segment_module, "segment", recording_segment)
    assert widget.precision.currentText() == "auto"
    run_and_wait(qtbot, widget)
    auto = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert f"on cpu ({auto})" in widget.status.text()
    widget.precision.setCurrentText("float32")
    run_and_wait(qtbot, widget)
    assert asked == [True, False]
    assert "on cpu (float32)" in widget.status.text()


def test_a_run_from_the_plugin_dock_leaves_the_window_painting(make_napari_viewer, qtbot,
                                                               brain, model_folder,
                                                               monkeypatch, add_layer):
    # Docked as napari docks plugins, the widget's viewer is a proxy that hides napari's
    # private attributes; the window must still get its repaint back after the result.
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "no-user-models")
    viewer = make_napari_viewer()
    add_layer(viewer, volume_layer_data(brain[0]))
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-medattn", "Segment")
    assert widget.viewer is not viewer  # napari's proxy
    widget.model.setCurrentText(MODEL)
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=20_000)
    run_and_wait(qtbot, widget)
    assert len(result_layers(viewer)) == 1
    qtbot.waitUntil(widget.window().updatesEnabled, timeout=2000)
    # The window found through Qt is napari's main window, the one holding the dock
    # (napari keeps its own reference to that window private).
    assert widget in viewer.window.dock_widgets.values()
    assert isinstance(widget.window(), QMainWindow)
