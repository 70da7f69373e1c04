"""Training and evaluation of the MedFormer lesion detector on cases with true boxes.

Targets (CenterNet, Zhou et al. 2019, in 3D): per lesion class a heatmap holding, for
each true lesion, a Gaussian around its centre with a standard deviation of a fifth of
its size per axis (at least :data:`MIN_SIGMA_VOXELS`), 1 at the voxel nearest the centre;
and ``log(size_mm / SIZE_SCALE_MM)`` along each array axis wherever a lesion's Gaussian
exceeds :data:`SIZE_REGION`. Loss: CenterNet's penalty-reduced focal loss on the
heatmaps plus the L1 loss of the log-sizes. The package's segmentation loop
(:mod:`napari_medattn.training.loop`) is built around Dice and cross-entropy on label
patches, so this small loop lives here instead of twisting that one.

The loop runs under a wall-clock budget (the shared CPU decides how many steps fit);
the learning rate follows :func:`~napari_medattn.training.loop.cosine_lr` over the
budget's elapsed fraction.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_medattn.detection.boxes import Detection, boxes_in_frame
from napari_medattn.detection.detector import SIZE_SCALE_MM, check_detector, detect
from napari_medattn.inference.preprocess import CardGrid, normalize_intensity
from napari_medattn.io.atomic import write_text_atomically
from napari_medattn.io.volume import Volume
from napari_medattn.metrics.detection import evaluate_detections
from napari_medattn.models import create
from napari_medattn.models.card import NOT_CLINICAL, ModelCard
from napari_medattn.models.registry import CARD_FILE, load_model, save_model
from napari_medattn.training.cards import initialise_from
from napari_medattn.training.lesion_synthesis import (
    KIND_COLOURS,
    LESION_KINDS,
    LESION_NORMALIZATION,
)
from napari_medattn.training.loop import cosine_lr

MIN_SIGMA_VOXELS = 0.75
#: Gaussian standard deviation = box size / SIGMA_FRACTION (broad targets learn faster).
SIGMA_FRACTION = 5.0
#: Initial centre logit: probability 0.1 everywhere (CenterNet's prior).
PRIOR_LOGIT = -2.2
SIZE_REGION = 0.3
#: Fraction of patches centred (with jitter) on a true lesion.
LESION_PATCH_FRACTION = 0.75

#: The shipped detector's network: a CPU-sized MedFormer for one 64^3 window, whose DSSA
#: stages (16^3 .. 2^3 tokens) route among 4^3, 4^3, 2^3 regions, then attend fully.
DETECTOR_CONFIG = dict(spatial_dims=3, in_channels=1, out_channels=len(LESION_KINDS) + 3,
                       task="segmentation", widths=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                       topk=[4, 16, 4, None], n_win=[4, 4, 2, 1], head_dim=16)
#: At 4 mm a 64^3 window (256 mm) holds a whole head: one window per scan, and every
#: training step sees every lesion of its case. The price: lesions under about 6 mm
#: (MS-like plaques) are one or two voxels on this grid.
PATCH = (64, 64, 64)
SPACING_MM = (4.0, 4.0, 4.0)
TRAINING_DATA = (
    "Synthetic FLAIR-like brain scans from napari_medattn.training.lesion_synthesis."
    "synthetic_lesion_case ({seeds}, seeds 0-39 of scripts/train_detector.py): the MNI "
    "ICBM152 2009a template's tissue labels as nilearn ships them (2 mm), deformed by a random smooth field (up to 4 mm), with 0-4 "
    "non-overlapping lesions per scan of three kinds (tumour 15-30 mm with core, rim and "
    "oedema; MS-like FLAIR-bright plaques 3-10 mm; ring-enhancing metastasis-like 6-20 mm), "
    "rendered with the FLAIR contrast of training.lesions plus blur, bias field, lower "
    "acquisition resolution and noise. No scan of any person was used.")


def lesion_targets(shape: Sequence[int], affine: np.ndarray, lesions: Sequence[Detection],
                   n_classes: int, start: Sequence[int] = (0, 0, 0)
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps, log-sizes and the size mask of a patch (see the module docstring).

    Parameters
    ----------
    shape : (3,) sequence of int
        Patch shape.
    affine : (4, 4) ndarray
        Index -> LPS mm of the whole grid the patch is cut from.
    lesions : sequence of Detection
        True boxes (``label`` 1..``n_classes``).
    n_classes : int
    start : (3,) sequence of int
        Index of the patch's first voxel on the whole grid.

    Returns
    -------
    heat : (n_classes, *shape) float32
    log_size : (3, *shape) float32
    size_mask : (*shape) bool
    """
    shape = tuple(int(s) for s in shape)
    heat = np.zeros((n_classes, *shape), np.float32)
    log_size = np.zeros((3, *shape), np.float32)
    best = np.zeros(shape, np.float32)
    if not lesions:
        return heat, log_size, best > 0
    inverse = np.linalg.inv(affine)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    frame = linear / spacing
    extents = boxes_in_frame(lesions, frame)
    sizes_mm = extents[:, 3:] - extents[:, :3]
    axes = [np.arange(n, dtype=np.float32) + s for n, s in zip(shape, start)]
    for lesion, size_mm in zip(lesions, sizes_mm):
        centre = (inverse @ np.append(lesion.centre_mm, 1.0))[:3]
        sigma = np.maximum(size_mm / spacing / SIGMA_FRACTION, MIN_SIGMA_VOXELS)
        g = [np.exp(-((a - c) ** 2) / (2 * s ** 2)) for a, c, s in zip(axes, centre, sigma)]
        gauss = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        peak = np.rint(centre).astype(int) - np.asarray(start)
        if all(0 <= p < n for p, n in zip(peak, shape)):
            gauss[tuple(peak)] = 1.0
        k = lesion.label - 1
        np.maximum(heat[k], gauss, out=heat[k])
        closer = (gauss > SIZE_REGION) & (gauss > best)
        log_size[:, closer] = np.log(size_mm / SIZE_SCALE_MM)[:, None]
        best = np.where(closer, gauss, best)
    return heat, log_size, best > 0


def detection_loss(output: torch.Tensor, heat: torch.Tensor, log_size: torch.Tensor,
                   size_mask: torch.Tensor, positive_weight: float = 1.0) -> torch.Tensor:
    """CenterNet focal loss on the heatmaps plus L1 on the log-sizes inside ``size_mask``;
    ``positive_weight`` scales the focal loss's term of the true centres (1: CenterNet's)."""
    k = heat.shape[1]
    logits = output[:, :k].float()
    p = torch.sigmoid(logits)
    positive = heat >= 1.0
    # log(p) and log(1 - p) from the logits, stable where sigmoid saturates.
    pos = -(F.logsigmoid(logits) * (1 - p) ** 2)[positive].sum()
    neg = -(F.logsigmoid(-logits) * p ** 2 * (1 - heat) ** 4)[~positive].sum()
    focal = (positive_weight * pos + neg) / positive.sum().clamp(min=1)
    mask = size_mask[:, None].expand_as(log_size)
    size = F.l1_loss(output[:, k:k + 3].float()[mask], log_size[mask]) if mask.any() else \
        output.sum() * 0.0
    return focal + size


@dataclasses.dataclass
class _Case:
    image: np.ndarray
    affine: np.ndarray
    lesions: list[Detection]


def _sample(case: _Case, rng: np.random.Generator, n_classes: int):
    shape = np.array(case.image.shape)
    patch = np.array(PATCH)
    if case.lesions and rng.uniform() < LESION_PATCH_FRACTION:
        lesion = case.lesions[int(rng.integers(len(case.lesions)))]
        centre = (np.linalg.inv(case.affine) @ np.append(lesion.centre_mm, 1.0))[:3]
        centre = centre + rng.uniform(-patch / 2 + 6, patch / 2 - 6)
        start = np.rint(centre - patch / 2).astype(int)
    else:
        start = rng.integers(0, np.maximum(shape - patch, 0) + 1)
    start = np.clip(start, 0, np.maximum(shape - patch, 0))
    box = tuple(slice(s, s + p) for s, p in zip(start, patch))
    image = case.image[box]
    heat, log_size, mask = lesion_targets(image.shape, case.affine, case.lesions, n_classes,
                                          start)
    for axis in range(3):  # flips: the heatmaps flip with the image, sizes do not change
        if rng.uniform() < 0.5:
            image, heat, log_size, mask = (np.flip(image, axis), np.flip(heat, axis + 1),
                                           np.flip(log_size, axis + 1), np.flip(mask, axis))
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return [np.ascontiguousarray(a) for a in (image[None], heat, log_size, mask)]


def _prepared(cases: Sequence[tuple[Volume, list[Detection]]], card: ModelCard) -> list[_Case]:
    """Each case on the card's grid, normalised, padded like the sliding window pads."""
    out = []
    for image, lesions in cases:
        grid = CardGrid.for_volume(image, card)
        data = normalize_intensity(grid.intensities(), card.normalization).astype(np.float32)
        # The engine pads a volume smaller than its window symmetrically with zeros.
        before = [max(p - n, 0) // 2 for p, n in zip(PATCH, data.shape)]
        after = [max(p - n, 0) - b for p, n, b in zip(PATCH, data.shape, before)]
        data = np.pad(data, list(zip(before, after)))
        affine = grid.affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.asarray(before, dtype=np.float64)
        out.append(_Case(data, affine, list(lesions)))
    return out


def detector_card(seeds: str, procedure: str) -> ModelCard:
    """The card of ``medformer-lesion-detector`` before its figures are measured."""
    classes = [("background", "#000000")] + [(LESION_KINDS[k], KIND_COLOURS[k])
                                             for k in sorted(LESION_KINDS)]
    return ModelCard(
        name="medformer-lesion-detector", architecture="medformer", task="detection",
        config=dict(DETECTOR_CONFIG), classes=classes, patch_size=PATCH, modality="MR",
        spacing=SPACING_MM, orientation="RAS", normalization=dict(LESION_NORMALIZATION),
        training_data=TRAINING_DATA.format(seeds=seeds), training_procedure=procedure,
        evaluated_on="not measured yet", license="MIT",
        intended_use="Demonstration of lesion detection layers in napari on synthetic "
                     "FLAIR-like brain scans. " + NOT_CLINICAL)


def train_detector(cases: Sequence[tuple[Volume, list[Detection]]], out_dir: str | Path, *,
                   seconds: float = 600.0, batch_size: int = 2, lr: float = 3e-3,
                   seed: int = 0, command: str = "", positive_weight: float = 1.0,
                   start_from: str | Path | None = None) -> Path:
    """Train the detector on ``cases`` for ``seconds`` of wall time and save it.

    Parameters
    ----------
    cases : sequence of (Volume, list of Detection)
        FLAIR-like images on the card's grid (2 mm, RAS) and their true boxes.
    out_dir : path
        Model folder to write (weights and card, atomically).
    seconds : float
        Wall-clock budget of the optimisation (data preparation not included).
    batch_size, lr, seed
        Patches per step, peak AdamW learning rate, random seed.
    command : str
        The command line, for the card.
    positive_weight : float
        Weight of the true centres in the focal loss (see :func:`detection_loss`).
    start_from : str or Path, optional
        A detector of the same configuration to continue from (e.g. the shipped one);
        default a fresh network with the prior bias.

    Returns
    -------
    Path
        ``out_dir``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    card = detector_card("", "")
    n_classes = check_detector(card)
    model = create(card.architecture, **card.config)
    start = "a fresh network"
    if start_from is not None:
        start = "the weights of {name} (sha256 {sha256})".format(
            **initialise_from(model, card.architecture, model.config, start_from))
    else:
        with torch.no_grad():
            model.head.bias[:n_classes].fill_(PRIOR_LOGIT)
    prepared = _prepared(cases, card)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    started = time.perf_counter()
    step, losses = 0, []
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(int(1000 * elapsed / seconds), 1000, 50, lr)
        batch = [_sample(prepared[int(rng.integers(len(prepared)))], rng, n_classes)
                 for _ in range(batch_size)]
        image, heat, log_size, mask = (torch.from_numpy(np.stack(b)) for b in zip(*batch))
        loss = detection_loss(model(image), heat, log_size, mask, positive_weight)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {np.mean(losses[-20:]):.3f} "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    procedure = (
        f"{command or 'napari_medattn.detection.training.train_detector'}: from {start}, "
        f"{step} AdamW steps "
        f"(lr {lr:g}, cosine over a {seconds:.0f} s wall-clock budget, weight decay 1e-4), "
        f"batch {batch_size} patches of {PATCH[0]}^3 voxels at {SPACING_MM[0]:g} mm "
        f"({LESION_PATCH_FRACTION:.0%} centred near a lesion), random flips and intensity "
        f"scaling, CenterNet focal loss (true centres weighted {positive_weight:g}) + L1 on "
        f"log box sizes, float32, "
        f"{torch.get_num_threads()} CPU threads on a shared 2-core machine; final mean loss "
        f"{np.mean(losses[-20:]):.3f} (first steps {np.mean(losses[:20]):.3f}), seed {seed}.")
    card = detector_card(f"{len(cases)} training cases", procedure)
    model.eval()
    return save_model(model, card, Path(out_dir))


def evaluate_detector(model_dir: str | Path, cases: Sequence[tuple[Volume, list[Detection]]],
                      *, tta: bool = False, write_card: bool = True,
                      description: str = "") -> dict[str, float]:
    """FROC, CPM, AP and mAP of a detector on held-out cases; optionally into its card.

    Returns
    -------
    dict
        :meth:`~napari_medattn.metrics.detection.DetectionScores.summary` plus
        ``seconds_per_scan``.
    """
    model, card = load_model(model_dir)
    found, truths, seconds = [], [], []
    for image, lesions in cases:
        result = detect(image, model, card, device="cpu", tta=tta, min_score=0.02)
        found.append(result.detections)
        truths.append(lesions)
        seconds.append(result.provenance["runtime_s"])
    summary = evaluate_detections(found, truths).summary()
    summary["seconds_per_scan"] = float(np.mean(seconds))
    if write_card:
        record_figures(model_dir, card, summary, description or (
            f"{len(cases)} held-out synthetic cases ({summary['lesions']} lesions) made like "
            f"the training data with other seeds; FROC hit = IoU >= 0.1, no TTA."))
    return summary


def record_figures(model_dir: str | Path, card: ModelCard, figures: dict[str, float],
                   evaluated_on: str) -> None:
    """Write ``figures`` (the finite ones, to 4 decimals) and what they were measured on
    into the card of ``model_dir``, atomically. The lesion detector's and classifier's
    evaluations both end here."""
    metrics = {k: round(float(v), 4) for k, v in figures.items() if np.isfinite(v)}
    updated = dataclasses.replace(card, metrics=metrics, evaluated_on=evaluated_on)
    write_text_atomically(Path(model_dir) / CARD_FILE, updated.to_json())
