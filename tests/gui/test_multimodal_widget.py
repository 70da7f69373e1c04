"""The Multimodal segment widget in a real viewer: modalities guessed from layer names and
kept when the user chose, Run with a subset, labels in WT/TC/ET colours equal to the
library's, region volumes, a weight bar per modality, weight maps on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medattn.display.layers import layer_volume, volume_layer_data
from napari_medattn.inference.multimodal import MULTIMODAL_TASK, segment_multimodal
from napari_medattn.io import Volume
from napari_medattn.models import create, registry
from napari_medattn.models.brats import LABEL_COLOURS
from napari_medattn.models.card import ModelCard
from napari_medattn.widgets.multimodal import MultimodalSegmentWidget

MODEL = "dmaf-tiny"
SHAPE = (16, 20, 16)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    net = create("dmaf_net", out_channels=4, channels=[4, 8]).eval()
    with torch.no_grad():  # tumour classes likely somewhere, so every output shows
        net.head.bias.copy_(torch.tensor([0.0, 0.2, 0.3, 0.25]))
    card = ModelCard(name=MODEL, task=MULTIMODAL_TASK, architecture="dmaf_net",
                     config=net.config, modality="MR", patch_size=(16, 16, 16), in_channels=4,
                     classes=[{"name": n, "color": "#ff0000"} for n in
                              ("background", "necrotic core", "oedema", "enhancing tumour")],
                     normalization={"scheme": "zscore"})
    folder = tmp_path_factory.mktemp("models")
    registry.save_model(net, card, folder / MODEL)
    return folder


def _scan(name: str, seed: int) -> Volume:
    rng = np.random.default_rng(seed)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    data = rng.normal(100 + 10 * seed, 20, SHAPE).astype(np.float32)
    return Volume(data, affine, "MR", {"name": name})


def test_guess_run_and_results(make_napari_viewer, qtbot, model_folder, monkeypatch,
                               add_layer):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(model_folder))
    monkeypatch.setattr(registry, "user_model_dir", lambda: model_folder / "none")
    viewer = make_napari_viewer()
    scans = {n: _scan(n, s) for s, n in enumerate(("case_t1", "case_FLAIR", "other scan"))}
    for volume in scans.values():
        add_layer(viewer, volume_layer_data(volume))
    widget = MultimodalSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Multimodal segment")
    boxes = widget.modality_boxes
    assert {k: b.currentText() for k, b in boxes.items()} == {
        "t1": "case_t1", "t1ce": "", "t2": "", "flair": "case_FLAIR"}
    # The user assigns the unnamed scan to T2; a new layer's guess does not undo it.
    boxes["t2"].setCurrentText("other scan")
    boxes["t2"].activated.emit(boxes["t2"].currentIndex())
    add_layer(viewer, volume_layer_data(_scan("new_t2", 9)))
    assert boxes["t2"].currentText() == "other scan"
    boxes["t1"].setCurrentText("")  # any box may stay empty
    boxes["t1"].activated.emit(0)
    widget.model.setCurrentText(MODEL)
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=30_000)
    widget.device.setCurrentText("cpu")
    widget.precision.setCurrentText("float32")
    widget.attention.setChecked(True)
    job = widget.run()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.outcome == "done", widget.status.text()

    labels = viewer.layers[-3]
    assert labels.name.endswith("tumour") and labels.data.shape == SHAPE
    # The library on the same scans as the widget reads them from their layers.
    given = {k: layer_volume(viewer.layers[n].data, viewer.layers[n].metadata, name=n)
             for k, n in (("t2", "other scan"), ("flair", "case_FLAIR"))}
    expected = segment_multimodal(given,
        *registry.load_model(model_folder / MODEL), device="cpu", use_autocast=False)
    shown, _, _ = volume_layer_data(expected.labels, "labels")  # display (z, y, x) order
    np.testing.assert_array_equal(np.asarray(labels.data), shown)
    colours = labels.colormap.color_dict
    for value, colour in LABEL_COLOURS.items():
        assert np.allclose(colours[value][:3], [int(colour[i:i + 2], 16) / 255
                                                for i in (1, 3, 5)])
    assert [layer.name.split()[-1] for layer in viewer.layers[-2:]] == ["t2", "flair"]
    bars = {k: b.value() for k, b in widget.weight_bars.items()}
    assert bars["t1"] == 0 and bars["t1ce"] == 0 and bars["t2"] > 0 and bars["flair"] > 0
    assert abs(bars["t2"] + bars["flair"] - 100) <= 1
    assert f"WT {expected.volumes_ml['WT']:.1f} mL" in widget.volumes_label.text()
    assert "t2 grid" in widget.status.text()
