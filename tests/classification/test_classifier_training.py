"""The classifier's training pieces: the task's label rule, the backbone copied from the
detector, and a (tiny, seconds-long) training run whose held-out figures reach the card."""

import json

import numpy as np
import pytest
import torch

from napari_medattn.classification import classify, training
from napari_medattn.detection.boxes import Detection
from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.io.volume import Volume
from napari_medattn.metrics.classification import auc_with_ci
from napari_medattn.models import create
from napari_medattn.models.registry import load_model

TINY = dict(spatial_dims=3, in_channels=1, out_channels=2, task="classification",
            widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], topk=[4, 16, 4, None],
            n_win=[4, 4, 2, 1], head_dim=8, head_dropout=0.0)


def box(size_mm):
    return Detection(np.zeros(3), np.asarray(size_mm, float), np.eye(3), score=1.0, label=1,
                     class_name="tumour")


def test_a_lesion_is_large_from_10_mm_along_any_axis():
    assert training.has_large_lesion([]) == 0
    assert training.has_large_lesion([box([9.9, 9.9, 9.9]), box([3, 4, 5])]) == 0
    assert training.has_large_lesion([box([3, 4, 5]), box([4, 10.0, 4])]) == 1


def test_the_backbone_comes_from_the_detector_and_the_head_stays_new():
    card = training.classifier_card("", "")
    model = create(card.architecture, **card.config)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    said = training.copy_backbone(model, "medformer-lesion-detector")
    detector, _ = load_model("medformer-lesion-detector")
    theirs = detector.state_dict()
    for name, value in model.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(value, theirs[name])
        else:
            assert torch.equal(value, head_before[name])
    assert "medformer-lesion-detector" in said
    with pytest.raises(ModelError, match="shape"):
        training.copy_backbone(create("medformer", **TINY), "medformer-lesion-detector")


def test_a_short_run_saves_a_classifier_whose_held_out_figures_reach_its_card(
        tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(training, "CLASSIFIER_CONFIG", TINY)
    monkeypatch.setattr(training, "PATCH", (32, 32, 32))
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    scans = [Volume((rng.random((20, 24, 20)) + 2 * (i % 2)).astype(np.float32), affine, "MR",
                    {"name": f"scan {i}"}) for i in range(6)]
    labels = [i % 2 for i in range(6)]
    inputs = training.prepared_inputs(scans)
    assert all(x.shape == (1, 32, 32, 32) for x in inputs)
    with pytest.raises(DimensionError, match="both classes"):
        training.train_classifier(inputs, [0] * 6, tmp_path / "none", seconds=0.1)
    folder = training.train_classifier(inputs, labels, tmp_path / "model", seconds=0.5,
                                       batch_size=2, training_data="six noise scans")
    scores = training.evaluate_classifier(folder, list(zip(scans, labels)))
    module, card = load_model(folder)
    assert card.task == "classification" and card.training_data == "six noise scans"
    assert "AdamW steps" in card.training_procedure and "random initialisation" in \
        card.training_procedure
    probabilities = [classify(s, module, card, device="cpu").probability for s in scans]
    expected = auc_with_ci(labels, probabilities)
    stored = json.loads((folder / "card.json").read_text())["metrics"]
    assert stored["auc"] == pytest.approx(expected.auc, abs=1e-4) == scores["auc"]
    assert stored["auc_ci95_low"] == pytest.approx(expected.low, abs=1e-4)
    assert (stored["n_positive"], stored["n_negative"]) == (3, 3)
    assert "held-out" in card.evaluated_on
