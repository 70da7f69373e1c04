"""Training loop: loss, schedule, checkpoints with cards, exact resume, seeds, curves."""

from __future__ import annotations

import dataclasses
import functools
import json
import threading

import numpy as np
import pytest
import torch

from napari_medattn.errors import Cancelled, DimensionError, ModelError
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import NOT_CLINICAL, ModelCard
from napari_medattn.models.registry import load_model, read_state_dict
from napari_medattn.training.checkpoint import STATE_FILE
from napari_medattn.training.config import TrainingConfig
from napari_medattn.training.datasets import Case
from napari_medattn.training.loop import cosine_lr, train
from napari_medattn.training.losses import dice_ce_loss, soft_dice

CLASSES = ["background", "cube", "slab"]
TINY = {"channels": [4, 8]}


def _case(seed: int, shape=(20, 20, 20)) -> Case:
    """A trivially learnable case: each class has its own intensity, plus mild noise."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    o = seed % 3
    label[3 + o:11 + o, 4:12, 4:12] = 1
    label[13:18, 8 + o:18, 5:15] = 2
    image = (label * 100.0 + 50.0 + rng.normal(0, 8, shape)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 2.5]
    return Case(f"case{seed}", Volume(image[None], affine, "MR", {"name": f"case{seed}"}),
                Volume(label, affine.copy(), "SEG", {}))


def _run(tmp_path, name="run", **kwargs):
    """A tiny run; keyword arguments naming TrainingConfig fields go there, others to
    train()."""
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    config = dict(patch_size=(16, 16, 16), epochs=2, steps_per_epoch=3, batch_size=2,
                  lr=1e-2, seed=3,
                  augment={"transforms": [{"name": "flip", "p": 0.5, "axes": [2]},
                                          {"name": "gamma", "p": 0.5}]})
    args = dict(classes=CLASSES, out_dir=tmp_path / name, device="cpu",
                val_cases=[_case(9)], progress_bar=False)
    for key, value in kwargs.items():
        (config if key in fields else args)[key] = value
    return train(TrainingConfig("unet", TINY, **config), [_case(0), _case(1)], **args)


def test_dice_ce_matches_monai():
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 7, 5, generator=generator)
    target = torch.randint(0, 3, (2, 1, 6, 7, 5), generator=generator)
    reference = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True,
                                        include_background=False, batch=True,
                                        smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert torch.allclose(dice_ce_loss(logits, target), reference, atol=1e-6)
    perfect = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 50
    assert torch.allclose(soft_dice(perfect, target), torch.ones(2), atol=1e-6)


def test_cosine_schedule():
    assert cosine_lr(0, 100, 4, 1.0) == pytest.approx(1 / 5)
    assert cosine_lr(3, 100, 4, 1.0) == pytest.approx(4 / 5)
    assert cosine_lr(4, 100, 4, 1.0) == pytest.approx(1.0)
    assert cosine_lr(52, 100, 4, 1.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 4, 1.0) == pytest.approx(0.0)


def test_loss_decreases_and_outputs_load(tmp_path):
    steps: list[float] = []
    result = _run(tmp_path, epochs=4, steps_per_epoch=4,
                  progress=lambda p: steps.append(p["loss"]) if p["phase"] == "train" else None)
    assert len(steps) == 16
    assert np.mean(steps[-4:]) < 0.8 * np.mean(steps[:2])
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["val_dice"] > 0.7  # learnt, not only a lower loss

    # Both checkpoints are model folders the registry loads, with a filled card.
    for folder in (result.best, result.last):
        module, card = load_model(folder)
        assert card.class_names == CLASSES
        assert card.architecture == "unet" and card.config["channels"] == [4, 8]
        assert card.config["out_channels"] == 3 and card.in_channels == 1
        assert card.patch_size == (16, 16, 16) and card.normalization == {"scheme": "zscore"}
        assert card.intended_use.endswith(NOT_CLINICAL)
        assert "AdamW" in card.training_procedure and "float32 on cpu" in card.training_procedure
        assert "case9" in card.evaluated_on
        assert 0 <= card.metrics["dice_mean"] <= 1
        assert set(card.metrics) >= {"dice_cube", "dice_slab", "epoch", "train_loss"}
        state = read_state_dict(folder / "weights.safetensors")
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[key])
    best = ModelCard.read(result.best / "card.json")
    best_epoch = max(result.history, key=lambda h: h["val_dice"])
    assert best.metrics["epoch"] == best_epoch["epoch"]
    assert best.metrics["dice_mean"] == pytest.approx(best_epoch["val_dice"])
    assert json.loads((result.out_dir / "history.json").read_text()) == result.history

    # The curves are a real PNG of the figure's size.
    from PIL import Image

    with Image.open(result.curves) as image:
        assert image.format == "PNG" and image.size == (1000, 400)


def test_resume_continues_exactly(tmp_path):
    whole = _run(tmp_path, "whole", epochs=3)
    stop = threading.Event()

    def stop_after_first_epoch(p):
        if p["phase"] == "validation":
            stop.set()

    with pytest.raises(Cancelled, match="resumed"):
        _run(tmp_path, "split", epochs=3, progress=stop_after_first_epoch, cancel=stop)
    assert len(json.loads((tmp_path / "split" / "history.json").read_text())) == 1
    resumed = _run(tmp_path, "split", epochs=3, resume=True)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    a = read_state_dict(whole.last / "weights.safetensors")
    b = read_state_dict(resumed.last / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "split" / STATE_FILE, weights_only=True)
    assert state["epochs_done"] == 3


def test_seed_determinism(tmp_path):
    first = _run(tmp_path, "a", epochs=1, val_cases=())
    again = _run(tmp_path, "b", epochs=1, val_cases=())
    other = _run(tmp_path, "c", epochs=1, val_cases=(), seed=4)
    assert first.history[0]["loss"] == again.history[0]["loss"]
    assert first.history[0]["loss"] != other.history[0]["loss"]
    # Without validation cases "best" is the epoch of lowest training loss.
    assert ModelCard.read(first.best / "card.json").evaluated_on == "not evaluated"


def test_fine_tuning_starts_from_the_given_weights(tmp_path):
    first = _run(tmp_path, "first", epochs=1, val_cases=())
    # With a zero learning rate AdamW leaves the weights as they started.
    tuned = _run(tmp_path, "tuned", epochs=1, val_cases=(), lr=0.0,
                 initial_weights=first.last)
    a = read_state_dict(first.last / "weights.safetensors")
    b = read_state_dict(tuned.last / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    source = ModelCard.read(first.last / "card.json")
    assert tuned.card.training_procedure.startswith(
        f"Fine-tuned from first (weights SHA-256 {source.weights_sha256}).")
    with pytest.raises(ModelError, match="another configuration"):
        train(TrainingConfig("unet", {"channels": [4, 8, 16]}, patch_size=(16, 16, 16),
                             initial_weights=first.last),
              [_case(0)], classes=CLASSES, out_dir=tmp_path / "z", progress_bar=False)


def test_bad_requests(tmp_path):
    with pytest.raises(ModelError, match="no run to resume"):
        _run(tmp_path, "nothing", resume=True)
    _run(tmp_path, "short", epochs=1, val_cases=())
    with pytest.raises(ModelError, match="other settings .*lr"):
        _run(tmp_path, "short", epochs=1, val_cases=(), lr=0.5, resume=True)
    with pytest.raises(ModelError, match="out_channels=2"):
        train(TrainingConfig("unet", {**TINY, "out_channels": 2}, patch_size=(16, 16, 16)),
              [_case(0)], classes=CLASSES, out_dir=tmp_path / "x", progress_bar=False)
    with pytest.raises(ModelError, match="Unknown architecture"):
        train(TrainingConfig("resnet", patch_size=(16, 16, 16)), [_case(0)], classes=CLASSES,
              out_dir=tmp_path / "y", progress_bar=False)
    with pytest.raises(DimensionError, match="patch size"):
        TrainingConfig("unet", patch_size=(16, 16))
    with pytest.raises(DimensionError, match="epochs must be at least 1"):
        TrainingConfig("unet", epochs=0)


# ----------------------------------------------------------------------------- shipped models

BUILTIN = ["attention-unet-brain-tissue", "dssa-unet-brain-tissue"]
TISSUES = ["background", "CSF", "grey matter", "white matter"]


@pytest.mark.parametrize("name", BUILTIN)
def test_shipped_model_loads_with_full_card(name):
    from napari_medattn.models.registry import builtin_models

    entry = {e.name: e for e in builtin_models()}[name]
    assert (entry.path / "weights.safetensors").stat().st_size <= 15_000_000
    module, card = load_model(name)
    assert card.class_names == TISSUES and len({c.color for c in card.classes}) == 4
    assert card.modality == "MR" and card.spacing == (2.0, 2.0, 2.0)
    assert card.orientation == "RAS" and card.normalization == {"scheme": "zscore"}
    assert card.patch_size == (64, 64, 64) and card.license == "BSD-3-Clause"
    assert "MNI ICBM152 2009a" in card.training_data and "seed 2026" in card.training_data
    assert "SAME MNI152 template" in card.evaluated_on
    assert NOT_CLINICAL in card.intended_use
    assert "H100" in card.training_procedure
    assert {"dice_mean", "dice_CSF", "dice_grey matter", "dice_white matter",
            "hd95_mm_mean", "epoch"} <= set(card.metrics)
    assert sum(p.numel() for p in module.parameters()) * 4 <= 15_000_000


@functools.lru_cache(maxsize=None)
def _tissue_fractions(name):
    """Class fractions predicted and true on a central 2 mm crop of the MNI152 template."""
    from napari_medattn.inference import segment
    from napari_medattn.training.synthesis import mni152_tissue_labels

    t1, tissue = mni152_tissue_labels(resolution=2)
    box = (slice(18, 82), slice(24, 96), slice(30, 78))  # the brain's centre, 128x144x96 mm
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ [b.start for b in box] + t1.affine[:3, 3]
    image = Volume(np.ascontiguousarray(t1.data[box]), affine, "MR")
    truth = np.asarray(tissue.data[box])
    module, card = load_model(name)
    predicted = segment(image, module, card, device="cpu").labels.data
    return (np.bincount(predicted.ravel(), minlength=4) / predicted.size,
            np.bincount(truth.ravel(), minlength=4) / truth.size)


@pytest.mark.parametrize("name", ["attention-unet-brain-tissue", "dssa-unet-brain-tissue"])
def test_shipped_model_predicts_every_tissue(name):
    predicted, _truth = _tissue_fractions(name)
    assert (predicted > 0.005).all()


@pytest.mark.parametrize("name", [
    "attention-unet-brain-tissue",
    pytest.param("dssa-unet-brain-tissue", marks=pytest.mark.xfail(
        strict=True, reason="the shipped DSSA-UNet finds CSF since its CPU continuation but "
                            "labels half the white matter grey (15 % of the crop against "
                            "30 %); see docs/models.md")),
])
def test_shipped_model_tissue_fractions_match_the_template(name):
    predicted, truth = _tissue_fractions(name)
    # Within 4 percentage points of the template's own labels, class by class.
    np.testing.assert_allclose(predicted, truth, atol=0.04)
