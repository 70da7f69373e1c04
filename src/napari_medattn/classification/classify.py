"""Scan classification with a MedFormer classifier: one probability per scan, and the heat
map that says where it looked.

The scan goes through the card's preprocessing
(:class:`~napari_medattn.inference.preprocess.CardGrid`: orientation and spacing, then
:func:`~napari_medattn.inference.preprocess.normalize_intensity`) and is fitted to the
card's window in one piece: an axis shorter than the window is padded with zeros on both
sides, as the sliding-window engine pads (``(window - n) // 2`` before), so that the
explanation maps of :func:`napari_medattn.explain.explain`, which run through that engine,
explain exactly the input classified here (for a scan that fits the window); an axis longer than the window is cut to the
window centred on the body (the largest bright connected region). The network's logits
become class probabilities by softmax.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import napari_medattn
from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.inference.devices import resolve_device
from napari_medattn.inference.preprocess import (
    CardGrid,
    body_bounding_box,
    body_threshold,
    normalize_intensity,
)
from napari_medattn.inference.sliding_window import check_cancel
from napari_medattn.io.volume import Volume, require_3d
from napari_medattn.models.card import ModelCard

if TYPE_CHECKING:  # explain imports the inference stack; heat_map imports it when called
    from napari_medattn.explain.dispatch import ExplanationMap

__all__ = ["CAM_LAYER", "DEFAULT_CLASSIFIER", "HEATMAPS", "ClassificationResult",
           "check_classifier", "classifier_input", "classify", "heat_map", "mask_in_window"]

#: The built-in classifier the CLI and the Detect widget start with.
DEFAULT_CLASSIFIER = "medformer-lesion-classifier"
#: Heat-map kinds: Grad-CAM of the positive class, or DSSA's region routing.
HEATMAPS = ("gradcam", "routing")
#: Layer of the classifier's Grad-CAM: the third stage (1/16 of the input grid, 48 mm
#: cells at 3 mm), the stage that classifiers trained by
#: :mod:`~napari_medattn.classification.training` max-pool (``head_stage`` 2): there
#: Grad-CAM is the positive class's evidence of each cell the head chooses from. (The
#: shipped weights predate that head and pool the last stage's mean.)
CAM_LAYER = "backbone.stages.2"
#: DSSA block whose routing is shown: the first stage's, the finest grid that selects
#: among regions (4 of 64 per query region).
ROUTING_LAYER = "backbone.stages.0.0.attn"


def check_classifier(card: ModelCard) -> None:
    """ModelError unless ``card`` is a one-channel scan classifier's."""
    if card.task != "classification":
        raise ModelError(f"Model {card.name!r} is a {card.task} model, not a classifier.")
    if card.in_channels != 1:
        raise ModelError(f"Classifier {card.name!r} takes {card.in_channels} channels; "
                         f"classifiers of one channel only are supported.")
    if card.num_classes < 2:
        raise ModelError(f"Classifier {card.name!r} lists fewer than two classes.")


def _fit_axis(size: int, window: int, centre: float) -> tuple[slice, int, int]:
    """Source slice and padding (before, after) that fit ``size`` voxels to ``window``."""
    if size <= window:
        before = (window - size) // 2
        return slice(0, size), before, window - size - before
    start = int(np.clip(round(centre - window / 2), 0, size - window))
    return slice(start, start + window), 0, 0


def _window(volume: Volume, card: ModelCard
            ) -> tuple[np.ndarray, list[tuple[slice, int, int]]]:
    """``volume``'s intensities on the card's grid and how each axis fits the window."""
    volume = require_3d(volume)
    grid = CardGrid.for_volume(volume, card)
    values = np.asarray(grid.intensities(), dtype=np.float32)
    if not np.isfinite(values).all():
        raise DimensionError(f"{volume.name} contains NaN or infinite values; fix or mask "
                             f"them before classifying.")
    box = body_bounding_box(values, body_threshold(values, volume.modality), margin=0)
    centres = [(b.start + b.stop) / 2 for b in box]
    return values, [_fit_axis(n, w, c) for n, w, c in zip(values.shape, card.patch_size,
                                                           centres)]


def _fitted(values: np.ndarray, fits: list[tuple[slice, int, int]]) -> np.ndarray:
    values = values[tuple(f[0] for f in fits)]
    return np.pad(values, [(f[1], f[2]) for f in fits])[None].astype(np.float32)


def classifier_input(volume: Volume, card: ModelCard) -> np.ndarray:
    """The network input for ``volume``: ``(1, *card.patch_size)`` float32 (see the module
    docstring).

    Raises
    ------
    DimensionError
        Not a 3D scan, or NaN / infinite intensities.
    """
    values, fits = _window(volume, card)
    values = values[tuple(f[0] for f in fits)]
    values = normalize_intensity(values, card.normalization, units=volume.meta.get("units"))
    return _fitted(values, [(slice(None), before, after) for _, before, after in fits])


def mask_in_window(mask: np.ndarray, volume: Volume, card: ModelCard) -> np.ndarray:
    """A mask on ``volume``'s grid brought to :func:`classifier_input`'s window:
    ``(1, *card.patch_size)`` float32, the fraction of each window voxel inside the mask
    (linear resampling), 0 in the padding. For training targets that must lie exactly
    where the input's voxels do."""
    _, fits = _window(volume, card)
    grid = CardGrid.for_volume(Volume(np.asarray(mask, dtype=np.float32), volume.affine,
                                      "SEG"), card)
    return _fitted(np.asarray(grid.intensities(), dtype=np.float32), fits)


@dataclasses.dataclass
class ClassificationResult:
    """What :func:`classify` returns.

    Attributes
    ----------
    probabilities : ndarray of float
        ``(C,)`` class probabilities (softmax), summing to 1.
    class_names : list of str
        The card's class names.
    provenance : dict
        Model, weights hash, card name, device, runtime, package version, notes.
    """

    probabilities: np.ndarray
    class_names: list[str]
    provenance: dict[str, Any]

    @property
    def probability(self) -> float:
        """Probability of class 1, the finding the classifier looks for."""
        return float(self.probabilities[1])

    @property
    def predicted(self) -> str:
        """Name of the most probable class."""
        return self.class_names[int(np.argmax(self.probabilities))]


def classify(volume: Volume, model: nn.Module, card: ModelCard, *, device: str = "auto",
             cancel: Callable[[], bool] | None = None) -> ClassificationResult:
    """Classify a scan with a classifier and its card.

    Parameters
    ----------
    volume : Volume
        A 3D scan.
    model : nn.Module
        The classifier network (see :func:`napari_medattn.models.registry.load_model` and
        the model cache).
    card : ModelCard
        Its card (task ``"classification"``).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.
    cancel : callable, optional
        Returns True to stop before the forward pass
        (:class:`~napari_medattn.errors.Cancelled`).

    Returns
    -------
    ClassificationResult

    Raises
    ------
    ModelError
        The card is not a classifier's.
    DimensionError
        Not a 3D volume, wrong channels, NaN in the image.
    """
    started = time.perf_counter()
    check_classifier(card)
    x = classifier_input(volume, card)
    check_cancel(cancel)
    choice = resolve_device(device)
    module = model.to(choice.device).eval()
    with torch.inference_mode():
        logits = module(torch.from_numpy(x[None]).to(choice.device)).float()
    if logits.ndim != 2 or logits.shape[1] != card.num_classes:
        raise ModelError(f"Model {card.name!r} returned shape {tuple(logits.shape)}; a "
                         f"classifier of {card.num_classes} classes returns (1, "
                         f"{card.num_classes}).")
    probabilities = torch.softmax(logits[0], dim=0).cpu().numpy().astype(np.float64)
    provenance = {
        "model": card.name,
        "weights_sha256": card.weights_sha256,
        "source": str(volume.meta.get("source", volume.name)),
        "device": str(choice.device),
        "precision": "float32",
        "runtime_s": time.perf_counter() - started,
        "package_version": napari_medattn.__version__,
        "notes": [choice.note] if choice.note else [],
    }
    return ClassificationResult(probabilities, card.class_names, provenance)


def heat_map(volume: Volume, model: nn.Module, card: ModelCard, kind: str = "gradcam", *,
             device: str = "auto", progress: Callable[[int, int], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> ExplanationMap:
    """Where the classifier looked, on the scan's geometry, through
    :func:`napari_medattn.explain.explain`.

    Parameters
    ----------
    kind : {"gradcam", "routing"}
        ``"gradcam"``: Grad-CAM of class 1's logit at :data:`CAM_LAYER`, scaled to [0, 1]
        by its maximum. ``"routing"``: how often each region of the DSSA block
        :data:`ROUTING_LAYER` is routed to (in [0, 1], class-free).
    device, progress, cancel
        As for :func:`~napari_medattn.explain.explain`.

    Returns
    -------
    ExplanationMap
        Its ``volume`` has the scan's shape and affine.
    """
    from napari_medattn.explain import explain

    check_classifier(card)
    if kind not in HEATMAPS:
        raise ModelError(f"Unknown heat map {kind!r}; choose one of {', '.join(HEATMAPS)}.")
    method, layer = ("gradcam", CAM_LAYER) if kind == "gradcam" else ("dssa", ROUTING_LAYER)
    (found,) = explain(volume, model, card, method, target_class=1, layer=layer,
                       device=device, progress=progress, cancel=cancel)
    return found
