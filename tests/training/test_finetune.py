"""Fine-tuning on one image and its labels: the loss falls, the installed model is listed with
an honest card and fits the labels better than before, bad input is refused up front, and
a cancel leaves nothing behind."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_medattn.errors import (
    Cancelled,
    DimensionError,
    GeometryError,
    ModelError,
    ReadError,
)
from napari_medattn.inference import segment
from napari_medattn.io.volume import Volume
from napari_medattn.metrics import evaluate_pair
from napari_medattn.models import create, registry
from napari_medattn.models.card import ModelCard
from napari_medattn.training.finetune import (
    METRIC_PREFIX,
    check_model_name,
    finetune,
    suggest_name,
    training_case,
)

BASE = "tiny-base"
CLASSES = [{"name": "background", "color": "#000000"}, {"name": "cube", "color": "#e6194b"},
           {"name": "slab", "color": "#3cb44b"}]


def phantom() -> tuple[Volume, np.ndarray]:
    """A 20^3 MR-like image (1.5 mm voxels) where each class has its own
    intensity, and its label map."""
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[3:11, 4:12, 4:12] = 1
    labels[13:18, 8:18, 5:15] = 2
    image = (labels * 100.0 + 50.0 + rng.normal(0, 8, labels.shape)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 2.5]
    return Volume(image, affine, "MR", {"name": "phantom"}), labels


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A randomly initialised tiny U-Net listed as a user model (it gets the phantom's
    labels wrong), an empty per-user model folder, and one fine-tuning run of it."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "user_model_dir", lambda: root / "user")
        patch.setenv(registry.ENV_MODEL_PATH, str(root / "base"))
        torch.manual_seed(0)
        net = create("unet", channels=[4, 8], in_channels=1, out_channels=3)
        card = ModelCard(name=BASE, architecture="unet", config=dict(net.config),
                         classes=CLASSES, patch_size=(16, 16, 16), modality="MR",
                         normalization={"scheme": "zscore"}, training_data="nothing",
                         license="CC0-1.0")
        registry.save_model(net, card, root / "base" / BASE)
        image, labels = phantom()
        before = segment(image, net.eval(), card, device="cpu").labels
        steps: list[dict] = []
        result = finetune(image, labels, BASE, name="tiny-finetuned", steps=20, lr=2e-2,
                          device="cpu", progress=steps.append)
        yield {"root": root, "before": before, "result": result, "progress": steps}


def dice(prediction, labels) -> float:
    return float(np.mean([s.dice for s in evaluate_pair(prediction, labels, classes=[1, 2])]))


def test_loss_falls_and_predictions_fit_the_labels_better(folders):
    result, labels = folders["result"], phantom()[1]
    losses = result.losses
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    training = [p for p in folders["progress"] if p["phase"] == "train"]
    assert [p["step"] for p in training] == list(range(1, 21))
    assert [p["loss"] for p in training] == losses
    windows = [p for p in folders["progress"] if p["phase"] == "segment"]
    assert windows and windows[-1]["done"] == windows[-1]["total"]

    before, after = dice(folders["before"], labels), dice(result.segmentation.labels, labels)
    assert before < 0.2 and after > 0.6
    # The returned segmentation is the installed model's own, on the image's grid.
    image = phantom()[0]
    module, card = registry.load_model(result.entry.path)
    rerun = segment(image, module, card, device="cpu", use_autocast=False).labels
    np.testing.assert_array_equal(rerun.data, result.segmentation.labels.data)
    np.testing.assert_array_equal(result.segmentation.labels.affine, image.affine)


def test_installed_model_is_listed_with_an_honest_card(folders):
    root, result = folders["root"], folders["result"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "user_model_dir", lambda: root / "user")
        patch.setenv(registry.ENV_MODEL_PATH, str(root / "base"))
        entries = {e.name: e for e in registry.list_models()}
        assert entries["tiny-finetuned"].path == root / "user" / "tiny-finetuned"
        assert entries["tiny-finetuned"].source == "user"
        # Only the model folder: the hidden working folder is gone.
        assert [p.name for p in (root / "user").iterdir()] == ["tiny-finetuned"]
        base = registry.find_model(BASE).card
    card = result.entry.card
    assert card == entries["tiny-finetuned"].card
    # The base card's input contract carries over unchanged.
    for field in ("architecture", "config", "classes", "patch_size", "modality", "spacing",
                  "orientation", "normalization", "in_channels", "license"):
        assert getattr(card, field) == getattr(base, field), field
    base_hash = registry.weights_sha256(root / "base" / BASE / registry.WEIGHTS_FILE)
    assert card.training_procedure.startswith(
        f"Fine-tuned from {BASE} (weights SHA-256 {base_hash})")
    assert "1 epochs x 20 steps" in card.training_procedure
    assert "phantom" in card.training_data and "512 cube, 500 slab" in card.training_data
    assert "not how it does on other scans" in card.evaluated_on
    # Metrics are the scores of the returned segmentation, named as on the training image.
    scores = {s.name: s.dice for s in result.scores}
    assert card.metrics[f"{METRIC_PREFIX}dice_cube"] == pytest.approx(scores["cube"])
    assert card.metrics[f"{METRIC_PREFIX}dice_mean"] == pytest.approx(
        dice(result.segmentation.labels, phantom()[1]))
    assert card.metrics["steps"] == 20
    assert card.metrics["final_train_loss"] == pytest.approx(np.mean(result.losses[-5:]))
    assert not any(k.startswith("dice") for k in card.metrics)


@pytest.fixture
def base_only(tmp_path, monkeypatch, folders):
    """The module's base model, and a fresh empty user folder."""
    monkeypatch.setattr(registry, "user_model_dir", lambda: tmp_path / "user")
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(folders["root"] / "base"))
    return tmp_path / "user"


def test_bad_labels_and_names_are_refused_before_training(base_only):
    image, labels = phantom()
    wrong = labels.copy()
    wrong[0, 0, 0] = 7
    with pytest.raises(DimensionError, match=r"^The labels have value 7 but model "
                                             r"'tiny-base' has classes 0-2 \(background, "
                                             r"cube, slab\)\.$"):
        finetune(image, wrong, BASE, name="x")
    with pytest.raises(DimensionError, match="only background"):
        finetune(image, np.zeros_like(labels), BASE, name="x")
    with pytest.raises(GeometryError, match=r"shape \(20, 20, 19\) but the image"):
        finetune(image, labels[..., :19], BASE, name="x")
    moved = image.affine.copy()
    moved[0, 3] += 3.0
    with pytest.raises(GeometryError, match="^The label map .* is not on the image grid"):
        finetune(image, Volume(labels, moved, "SEG"), BASE, name="x")
    negative = labels.astype(np.int16)
    negative[5, 5, 5] = -1
    with pytest.raises(ReadError, match="^The label map holds negative values.$"):
        finetune(image, negative, BASE, name="x")
    with pytest.raises(DimensionError, match="needs 1 input channel"):
        finetune(Volume(np.stack([image.data] * 2), image.affine, "MR"), labels, BASE,
                 name="x")
    for name in ("a/b", "", ".hidden", "x" * 81):
        with pytest.raises(ModelError, match="must be 1-80 letters"):
            finetune(image, labels, BASE, name=name)
    with pytest.raises(ModelError, match=f"A model called '{BASE}' already exists"):
        finetune(image, labels, BASE, name=BASE)
    with pytest.raises(ModelError, match="no model called 'missing'"):
        finetune(image, labels, "missing", name="x")
    with pytest.raises(DimensionError, match="number of steps must be at least 1"):
        finetune(image, labels, BASE, name="x", steps=0)
    assert not base_only.exists() or not any(base_only.iterdir())


def test_labels_in_another_storage_order_are_the_same_case(folders):
    image, labels = phantom()
    card = folders["result"].entry.card
    from_array = training_case(image, labels, card)
    # The labels stored in canonical (z, y, x) order, as napari holds them.
    from_view = training_case(image, Volume(labels, image.affine, "SEG").canonical(), card)
    np.testing.assert_array_equal(from_array.label.data, from_view.label.data)
    np.testing.assert_array_equal(from_array.label.affine, from_view.label.affine)
    np.testing.assert_array_equal(from_array.image.data[0],
                                  np.asarray(image.canonical().data))


def test_names_are_never_reused(base_only):
    assert suggest_name(BASE) == f"{BASE}-finetuned"
    (base_only / f"{BASE}-finetuned").mkdir(parents=True)  # a folder, even without a model
    with pytest.raises(ModelError, match="already exists; choose another name"):
        check_model_name(f"{BASE}-finetuned")
    assert suggest_name(BASE) == f"{BASE}-finetuned-2"
    assert suggest_name("my model/v2") == "my-model-v2-finetuned"


def test_cancel_leaves_nothing(base_only):
    image, labels = phantom()
    stop = threading.Event()
    seen = []

    def progress(info):
        seen.append(info)
        if info["phase"] == "train" and info["step"] == 2:
            stop.set()

    with pytest.raises(Cancelled, match="no model was saved"):
        finetune(image, labels, BASE, name="cancelled", steps=10, device="cpu",
                 progress=progress, cancel=stop)
    assert [p["step"] for p in seen] == [1, 2]  # stopped at the next step's check
    assert list(base_only.iterdir()) == []
    assert "cancelled" not in {e.name for e in registry.list_models()}
