"""The classifier's training pieces: the task's label rule, the backbone copied from the
detector, and a (tiny, seconds-long) training run whose held-out figures reach the card."""

import json

import numpy as np
import pytest
import torch

from napari_medattn.classification import classifier_input, classify, mask_in_window, training
from napari_medattn.detection.boxes import Detection
from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.io.volume import Volume
from napari_medattn.metrics.classification import auc_with_ci
from napari_medattn.models import create
from napari_medattn.models.registry import load_model, save_model

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


def phantom(affine, shape=(40, 48, 40), seed=0):
    """A textured head (1 +- 0.1 a.u., brighter towards one side as a bias field would make
    it) holding a 2x2x2-voxel FLAIR-bright lesion (2.0), and the lesion's mask."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    inner = tuple(slice(4, n - 4) for n in shape)
    bias = np.linspace(0.8, 1.3, shape[0], dtype=np.float32)[:, None, None]
    data[inner] = (bias * (1.0 + 0.1 * rng.standard_normal(shape)))[inner]
    mask = np.zeros(shape, bool)
    mask[12:14, 20:22, 18:20] = True
    data[mask] = 2.0
    return Volume(data, affine, "MR", {"name": "phantom"}), mask


def test_the_input_keeps_a_bright_lesion_brighter_than_any_normal_tissue():
    # The shipped card's normalisation clipped at the 99.5th percentile of the head, which
    # put the lesion level with the brightest normal tissue: nothing left to find.
    card = training.classifier_card("", "")
    scan, mask = phantom(np.diag([3.0, 3.0, 3.0, 1.0]))
    x = classifier_input(scan, card)[0]
    inside = mask_in_window(mask, scan, card)[0]
    assert x.shape == inside.shape == training.PATCH
    assert inside.max() == 1.0 and int((inside > 0.5).sum()) == int(mask.sum())
    lesion, tissue = x[inside > 0.5], x[inside == 0]
    # 1.3 * (1 + 3 sigma) of the texture is about 1.7: the lesion (2.0) stays above it.
    assert lesion.min() > tissue.max() + 0.5


@pytest.mark.parametrize("permute", [(0, 1, 2), (2, 0, 1)])
@pytest.mark.parametrize("spacing", [3.0, 2.0], ids=["native", "resampled"])
def test_the_lesion_mask_lies_where_the_inputs_lesion_voxels_do(permute, spacing):
    # Scans stored in another axis order, flipped, or at another spacing: the training
    # target must follow the input voxel for voxel.
    scan, mask = phantom(np.diag([3.0, 3.0, 3.0, 1.0]))
    linear = np.diag([-spacing, spacing, spacing])[:, list(permute)]
    affine = np.eye(4)
    affine[:3, :3] = linear
    data, mask = (np.transpose(a, np.argsort(permute)) for a in (np.asarray(scan.data), mask))
    scan = Volume(np.ascontiguousarray(data), affine, "MR", {"name": "turned"})
    card = training.classifier_card("", "")
    x = classifier_input(scan, card)[0]
    inside = mask_in_window(mask, scan, card)[0]
    assert inside[np.unravel_index(int(np.argmax(x)), x.shape)] > 0.25
    # The lesion's voxels: above halfway from the tissue's 99th percentile to the peak.
    weights = np.clip(x - (np.percentile(x[x != 0], 99) + x.max()) / 2, 0, None)
    bright = (np.argwhere(weights > 0) * weights[weights > 0][:, None]).sum(0) / weights.sum()
    target = (np.argwhere(inside > 0) * inside[inside > 0][:, None]).sum(0) / inside.sum()
    np.testing.assert_allclose(bright, target, atol=1.0)


def test_training_optimises_the_logits_classify_computes_and_the_cells_hold_the_lesion():
    torch.manual_seed(0)
    card = training.classifier_card("", "")
    model = create(card.architecture, **card.config).eval()
    x = torch.randn(2, 1, *training.PATCH)
    masks = torch.zeros_like(x)
    masks[0, 0, 40:44, 10:14, 20:24] = 1.0  # cell (2, 0, 1) of the 16-voxel cells
    y = torch.tensor([1, 0])
    with torch.no_grad():
        scan_only, logits = training.classification_loss(model, x, y, None)
        both, _ = training.classification_loss(model, x, y, masks)
        torch.testing.assert_close(logits, model(x))
        tokens = model.head.token_logits(model.backbone.forward_features(x)[1][2])
    assert tokens.shape == (2, 2, 4, 5, 4)
    cells = torch.zeros(2, 4, 5, 4, dtype=torch.long)
    cells[0, 2, 0, 1] = 1
    token_term = torch.nn.functional.cross_entropy(tokens, cells)
    torch.testing.assert_close(both - scan_only, training.TOKEN_LOSS_WEIGHT * token_term)


def test_a_run_continues_from_a_classifier_of_the_same_configuration(tmp_path):
    torch.manual_seed(0)
    card = training.classifier_card("", "")
    first = create(card.architecture, **card.config)
    save_model(first, card, tmp_path / "first")
    second = create(card.architecture, **card.config)
    said = training.copy_backbone(second, tmp_path / "first")
    assert "medformer-lesion-classifier" in said
    for name, value in second.state_dict().items():
        assert torch.equal(value, first.state_dict()[name]), name
