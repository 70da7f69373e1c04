"""Training and evaluation of the MedFormer lesion classifier on synthetic scans.

The task, written once here and quoted by the card: **does the scan hold a lesion whose
box is 10 mm or more along some axis** (:data:`LARGE_LESION_MM`)? Scans come from
:func:`~napari_medattn.training.lesion_synthesis.synthetic_lesion_case` with at most
:data:`MAX_LESIONS` lesions, so about half hold a large lesion (tumours are 15-30 mm,
metastasis-like lesions 6-20 mm, MS-like plaques 3-10 mm) and the others none or only small
ones: the classifier must tell a large lesion from a small one, not only lesion from none.

The input is the whole head at 3 mm in one window (:func:`~.classify.classifier_input`),
so each step sees whole scans. Loss: cross-entropy on batches drawn half positive, half
negative (the classes stay balanced whatever the data's ratio), plus, where the lesion
masks are given, a per-token cross-entropy saying which of the head's 48 mm cells hold a
large lesion (:func:`classification_loss`). Augmentation: left-right
flips (a lesion's presence does not depend on the side), shifts of up to
:data:`SHIFT_VOXELS` voxels, intensity scaling and offset. The loop runs under a
wall-clock budget, its learning rate following
:func:`~napari_medattn.training.loop.cosine_lr` over the budget's elapsed fraction, as the
detector's does (:mod:`napari_medattn.detection.training`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_medattn.classification.classify import (
    check_classifier,
    classifier_input,
    classify,
    mask_in_window,
)
from napari_medattn.detection.boxes import Detection
from napari_medattn.detection.training import record_figures
from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.io.volume import Volume
from napari_medattn.metrics.classification import auc_with_ci
from napari_medattn.models import create
from napari_medattn.models.card import NOT_CLINICAL, ModelCard
from napari_medattn.models.registry import load_model, save_model
from napari_medattn.training.cards import initialise_from
from napari_medattn.training.lesion_synthesis import LESION_NORMALIZATION
from napari_medattn.training.loop import cosine_lr

#: A lesion is large when its box is at least this long along some axis (mm).
LARGE_LESION_MM = 10.0
#: Lesions per synthetic scan: 0 to this many (uniform).
MAX_LESIONS = 2
#: Largest random shift of the input per axis (voxels of 3 mm).
SHIFT_VOXELS = 3
#: One window holds the head at 3 mm (192 x 240 x 192 mm; the MNI152 head is 182 x 218 x
#: 182 mm). The synthetic scans' field of view is 198 mm from left to right: classification
#: cuts it to the window centred on the body (air only is lost). Sizes divisible by 4x the
#: first stage's regions per axis keep DSSA from padding (72 voxels cost 1.7x 64 here).
PATCH = (64, 80, 64)
SPACING_MM = (3.0, 3.0, 3.0)
#: A CPU-sized MedFormer: DSSA stages on 16x20x16 .. 2x3x2 tokens routing among 4^3, 4^3
#: and 2^3 regions, then full attention. The head takes the third stage's 4x5x4 tokens
#: (48 mm cells) and max-pools their logits: a 10 mm lesion fills a small part of one
#: cell, and the average over the whole head (the default head, on the last stage) diluted
#: it below the anatomy's scan-to-scan variation (held-out AUC 0.55 after 976 steps).
CLASSIFIER_CONFIG = dict(spatial_dims=3, in_channels=1, out_channels=2,
                         task="classification", widths=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                         topk=[4, 16, 4, None], n_win=[4, 4, 2, 1], head_dim=16,
                         head_dropout=0.1, head_pool="max", head_stage=2)
#: Weight of the per-token loss (does each 48 mm cell hold a large lesion?) beside the
#: scan's cross-entropy: the lesion masks of the synthetic data say where the finding is,
#: which scan labels alone teach only after far more steps than a CPU run affords.
TOKEN_LOSS_WEIGHT = 1.0
#: A cell holds a lesion where one of its voxels is at least this fraction lesion (after
#: the linear resampling to 3 mm): a 3 mm plaque's voxels may not reach a half.
CELL_FRACTION = 0.25
CLASSES = [("no lesion of 10 mm or more", "#000000"), ("lesion of 10 mm or more", "#e6194b")]
TASK = (f"Binary scan classification: does the FLAIR-like brain scan hold a lesion whose box "
        f"is {LARGE_LESION_MM:g} mm or more along some axis (class 1), or none (class 0: no "
        f"lesion, or only smaller ones)?")
TRAINING_DATA = (
    "Synthetic FLAIR-like brain scans from napari_medattn.training.lesion_synthesis."
    "synthetic_lesion_case(seed, max_lesions) ({what}): the MNI ICBM152 2009a template's "
    "tissue labels as nilearn ships them (2 mm), deformed by a random smooth field (up to "
    "4 mm), with 0 to max_lesions non-overlapping lesions per scan of three kinds (tumour 15-30 mm, MS-like plaques 3-10 mm, ring-enhancing "
    "metastasis-like 6-20 mm), rendered with the FLAIR contrast of training.lesions plus "
    "blur, bias field, lower acquisition resolution and noise. " + TASK +
    " No scan of any person was used.")


def has_large_lesion(lesions: Sequence[Detection]) -> int:
    """1 if some lesion's box is :data:`LARGE_LESION_MM` or more along some axis, else 0."""
    return int(any(float(np.max(d.size_mm)) >= LARGE_LESION_MM for d in lesions))


def classifier_card(training_data: str, procedure: str) -> ModelCard:
    """The card of ``medformer-lesion-classifier`` before its figures are measured."""
    return ModelCard(
        name="medformer-lesion-classifier", architecture="medformer", task="classification",
        config=dict(CLASSIFIER_CONFIG), classes=CLASSES, patch_size=PATCH, modality="MR",
        spacing=SPACING_MM, orientation="RAS", normalization=dict(LESION_NORMALIZATION),
        training_data=training_data, training_procedure=procedure,
        evaluated_on="not measured yet", license="MIT",
        intended_use="Demonstration of scan classification and its heat maps in napari on "
                     "synthetic FLAIR-like brain scans. " + NOT_CLINICAL)


def _augment(x: np.ndarray, mask: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """The input and its lesion mask (both ``(1, *PATCH)``) moved alike; intensities of
    the input scaled and offset."""
    if rng.uniform() < 0.5:  # array axis 0 is left-right on the card's RAS grid
        x, mask = x[:, ::-1], mask[:, ::-1]
    shift = tuple(int(s) for s in rng.integers(-SHIFT_VOXELS, SHIFT_VOXELS + 1, size=3))
    # The head sits in the window's zero padding: a small roll moves it without cutting it.
    x, mask = np.roll(x, shift, axis=(1, 2, 3)), np.roll(mask, shift, axis=(1, 2, 3))
    return (np.ascontiguousarray(x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1),
                                 dtype=np.float32), np.ascontiguousarray(mask))


def classification_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the scan logits, plus (given ``masks``, ``(B, 1, *PATCH)`` large
    lesion fractions) :data:`TOKEN_LOSS_WEIGHT` times the cross-entropy of each head token
    against "holds part of a large lesion" (a cell with a voxel whose mask fraction reaches
    :data:`CELL_FRACTION`). Returns the loss and the scan logits.

    The scan logits are the head's own (the maximum of the token logits), so training
    optimises exactly what :func:`~.classify.classify` computes.
    """
    _, features = model.backbone.forward_features(x)
    stage = features[model.head_stage]
    tokens = model.head.token_logits(stage)
    logits = tokens.flatten(2).amax(dim=2) if model.head.pool == "max" else model.head(stage)
    loss = F.cross_entropy(logits, y)
    if masks is not None:
        cells = F.adaptive_max_pool3d(masks, tokens.shape[2:])[:, 0] >= CELL_FRACTION
        loss = loss + TOKEN_LOSS_WEIGHT * F.cross_entropy(tokens, cells.long())
    return loss, logits


def train_classifier(inputs: Sequence[np.ndarray], labels: Sequence[int],
                     out_dir: str | Path, *, seconds: float = 600.0, batch_size: int = 4,
                     lr: float = 1e-3, seed: int = 0, training_data: str = "",
                     command: str = "", backbone_from: str | Path | None = None,
                     masks: Sequence[np.ndarray] | None = None) -> Path:
    """Train the classifier for ``seconds`` of wall time and save it (weights and card).

    Parameters
    ----------
    inputs : sequence of ndarray
        Network inputs ``(1, *PATCH)`` from :func:`~.classify.classifier_input`.
    labels : sequence of int
        0/1 per input (:func:`has_large_lesion`); both classes must occur.
    out_dir : path
        Model folder to write (atomically).
    seconds : float
        Wall-clock budget of the optimisation.
    batch_size, lr, seed
        Scans per step (half of each class), peak AdamW learning rate, random seed.
    training_data, command : str
        For the card: what the inputs are, and the command line.
    backbone_from : str or Path, optional
        A model (name or folder) whose MedFormer backbone has this classifier's shape, e.g.
        the lesion detector: its backbone weights are the starting point; or a classifier
        of this configuration, whose run continues (see :func:`copy_backbone`); default a
        random initialisation.
    masks : sequence of ndarray, optional
        Per input, its large lesions' mask in the input's window
        (:func:`~.classify.mask_in_window`, ``(1, *PATCH)``): adds the per-token loss of
        :func:`classification_loss`. Without them, the scan labels alone.

    Returns
    -------
    Path
        ``out_dir``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    if not all(len(group) for group in by_class):
        raise DimensionError("Training needs scans of both classes.")
    if masks is not None and len(masks) != len(inputs):
        raise DimensionError(f"{len(masks)} lesion masks for {len(inputs)} inputs.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lesion_masks = masks if masks is not None else [np.zeros_like(x) for x in inputs]
    card = classifier_card("", "")
    model = create(card.architecture, **card.config)
    start = "random initialisation"
    if backbone_from is not None:
        start = copy_backbone(model, backbone_from)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    started = time.perf_counter()
    step, losses, correct = 0, [], []
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(int(1000 * elapsed / seconds), 1000, 50, lr)
        chosen = [int(rng.choice(by_class[i % 2])) for i in range(batch_size)]
        moved = [_augment(inputs[i], lesion_masks[i], rng) for i in chosen]
        x = torch.from_numpy(np.stack([m[0] for m in moved]))
        y = torch.from_numpy(labels[chosen])
        mask = torch.from_numpy(np.stack([m[1] for m in moved])) if masks is not None \
            else None
        loss, logits = classification_loss(model, x, y, mask)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        correct.append(float((logits.argmax(dim=1) == y).float().mean()))
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {np.mean(losses[-25:]):.3f} accuracy "
                  f"{np.mean(correct[-25:]):.2f} {time.perf_counter() - started:.0f} s",
                  flush=True)
    token_loss = "" if masks is None else (
        f" plus {TOKEN_LOSS_WEIGHT:g} x the cross-entropy of each head token (48 mm cell) "
        f"against whether it holds part of a large lesion (from the lesion masks)")
    procedure = (
        f"{command or 'napari_medattn.classification.training.train_classifier'}: {step} "
        f"AdamW steps (lr {lr:g}, cosine over a {seconds:.0f} s wall-clock budget, weight "
        f"decay 0.05), batch {batch_size} whole scans at {SPACING_MM[0]:g} mm in a "
        f"{'x'.join(map(str, PATCH))} window (half of each class), starting from {start}, "
        f"left-right flips, shifts "
        f"of up to {SHIFT_VOXELS} voxels, intensity scaling, cross-entropy of the scans"
        f"{token_loss}, float32, "
        f"{torch.get_num_threads()} CPU thread(s) on a shared 2-core machine; final mean "
        f"loss {np.mean(losses[-25:]):.3f} (first steps {np.mean(losses[:25]):.3f}), "
        f"training accuracy of the last 25 steps {np.mean(correct[-25:]):.2f}, seed {seed}.")
    card = classifier_card(training_data or f"{len(inputs)} training scans", procedure)
    model.eval()
    return save_model(model, card, Path(out_dir))


def copy_backbone(model: torch.nn.Module, source: str | Path) -> str:
    """Copy the ``backbone.*`` weights of model ``source`` into ``model`` (all its weights
    when ``source`` is a classifier of this configuration: a run continued); says what was
    copied (for the card).

    Why: on this shared CPU a few hundred steps are all a training run gets, and the lesion
    detector's DSSA pyramid (the same shape) has already been trained on lesions of this
    synthetic data; its features are a better start than random ones.
    """
    trained, card = load_model(source)
    if card.task == "classification":  # a classifier run to continue: all of its weights
        start = initialise_from(model, card.architecture, model.config, source)
        return f"the weights of {start['name']} (sha256 {start['sha256'][:12]}...)"
    theirs = {k: v for k, v in trained.state_dict().items() if k.startswith("backbone.")}
    mine = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    if set(theirs) != set(mine) or any(theirs[k].shape != mine[k].shape for k in mine):
        raise ModelError(f"The backbone of {card.name!r} does not have the classifier's shape.")
    model.load_state_dict(theirs, strict=False)
    return f"the backbone of {card.name} (weights sha256 {card.weights_sha256[:12]}...)"


def evaluate_classifier(model_dir: str | Path, cases: Sequence[tuple[Volume, int]], *,
                        write_card: bool = True, description: str = "",
                        seed: int = 0) -> dict[str, float]:
    """AUC (with a bootstrap 95 % CI), accuracy, sensitivity and specificity at 0.5 of the
    classifier in ``model_dir`` on held-out ``cases`` (scan, 0/1 label); optionally into
    its card.

    Each scan goes through :func:`~.classify.classify` as a user's would.
    """
    model, card = load_model(model_dir)
    check_classifier(card)
    labels, scores, seconds = [], [], []
    for image, label in cases:
        result = classify(image, model, card, device="cpu")
        labels.append(int(label))
        scores.append(result.probability)
        seconds.append(result.provenance["runtime_s"])
    labels_array, scores_array = np.asarray(labels), np.asarray(scores)
    auc = auc_with_ci(labels_array, scores_array, seed=seed)
    predicted = scores_array >= 0.5
    positive = labels_array == 1
    summary = {
        "auc": auc.auc, "auc_ci95_low": auc.low, "auc_ci95_high": auc.high,
        "accuracy": float(np.mean(predicted == positive)),
        "sensitivity": float(np.mean(predicted[positive])),
        "specificity": float(np.mean(~predicted[~positive])),
        "n_positive": auc.n_positive, "n_negative": auc.n_negative,
        "seconds_per_scan": float(np.mean(seconds)),
    }
    if write_card:
        record_figures(model_dir, card, summary, description or (
            f"{len(cases)} held-out synthetic scans ({auc.n_positive} with a lesion of "
            f"{LARGE_LESION_MM:g} mm or more, {auc.n_negative} without) made like the "
            f"training data with seeds never used in training; AUC with a stratified "
            f"percentile bootstrap 95 % CI ({auc.n_resamples} resamples); accuracy, "
            f"sensitivity and specificity at probability 0.5."))
    return summary


def prepared_inputs(images: Sequence[Volume]) -> list[np.ndarray]:
    """:func:`~.classify.classifier_input` of each scan for the shipped card."""
    card = classifier_card("", "")
    return [classifier_input(image, card) for image in images]


def large_lesion_mask(instances: np.ndarray, lesions: Sequence[Detection]) -> np.ndarray:
    """The voxels of the large lesions (:data:`LARGE_LESION_MM`) of an instance map whose
    instance ``i`` (1-based) is ``lesions[i - 1]``, as the synthetic cases number them."""
    large = [i + 1 for i, d in enumerate(lesions) if has_large_lesion([d])]
    return np.isin(instances, large)


def prepared_masks(images: Sequence[Volume], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each scan's large-lesion mask in its input window (:func:`~.classify.mask_in_window`)."""
    card = classifier_card("", "")
    return [mask_in_window(mask, image, card) for image, mask in zip(images, masks)]
