"""Lesion detection with a MedFormer: dense centre heatmaps and sizes, decoded to boxes in mm.

Why anchor-free (CenterNet-style: a centre heatmap per class and a box size per voxel)
rather than RetinaNet anchors: lesions here span 3 to 30 mm (1.5 to 15 voxels at 2 mm),
which anchors would need many scales and aspect ratios to cover, each with its own
matching thresholds; a heatmap has none of those choices. And dense maps go through the
package's one sliding-window engine unchanged: the engine blends each window's maps with
its Gaussian weights, so a lesion cut by a window border is *merged across windows in
map space* before any box exists, and flip test-time augmentation is the engine's own
(a heatmap flips with the image; box sizes are per axis and do not change under flips).
Remaining duplicates are removed by 3D non-maximum suppression.

Network. A MedFormer (:class:`~napari_medattn.models.nets.MedFormer`, task
``"segmentation"``): its DSSA pyramid feeds the FPN, fused at 1/4 and brought to the
input grid; the last 1x1 layer gives ``K + 3`` channels per voxel: a centre logit for each
of the card's ``K`` lesion classes (``card.classes[1:]``), and the log of the box size
along each array axis of the model grid, ``log(size_mm / SIZE_SCALE_MM)``.

Decoding. Peaks of the class-wise maximum heatmap (local maxima over 3x3x3 voxels at or
above ``min_score``) become boxes: centre at the peak refined to sub-voxel position by a
parabola through its neighbours along each axis, size read at the peak, class the
argmax. Centres go through the model grid's exact affine to LPS mm; the boxes' axes are
the model grid's (the scan's own axes, reordered; oblique scans keep their obliquity).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

import napari_medattn
from napari_medattn.detection.boxes import Detection, nms
from napari_medattn.errors import ModelError
from napari_medattn.inference.preprocess import CardGrid, body_threshold, normalize_intensity
from napari_medattn.inference.sliding_window import (
    CancelCheck,
    ProgressCallback,
    check_cancel,
    sliding_window_inference,
)
from napari_medattn.inference.window_options import MemoryBudget, OutputRequest, WindowOptions
from napari_medattn.io.volume import Volume, require_3d
from napari_medattn.models.card import ModelCard

__all__ = ["DEFAULT_DETECTOR", "DETECTION_WINDOWS", "SIZE_SCALE_MM", "DecodeOptions",
           "DetectionMaps", "DetectionResult", "decode_maps", "detect"]

#: The built-in detector the CLI and the Detect widget start with.
DEFAULT_DETECTOR = "medformer-lesion-detector"
#: Size channels predict ``log(size_mm / SIZE_SCALE_MM)``.
SIZE_SCALE_MM = 10.0
#: Sizes are clamped to exp(+-LOG_SIZE_LIMIT) * SIZE_SCALE_MM (0.07 mm to 1.5 m).
LOG_SIZE_LIMIT = 5.0


class DetectionMaps(nn.Module):
    """A detector network's raw output turned into maps the sliding window can blend.

    Output channels: ``1 - max_k p_k`` (no lesion centre: a skipped, empty window
    contributes exactly this channel, as the engine's background), the ``K`` class
    centre probabilities ``p_k`` (sigmoid), then the box size in mm along each axis.
    """

    def __init__(self, net: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.net = net
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x).float()
        k = self.n_classes
        heat = torch.sigmoid(out[:, :k])
        size = torch.exp(out[:, k:k + 3].clamp(-LOG_SIZE_LIMIT, LOG_SIZE_LIMIT)) * SIZE_SCALE_MM
        return torch.cat([1.0 - heat.amax(dim=1, keepdim=True), heat, size], dim=1)


def _refine(heat: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Sub-voxel peak position: a parabola through the peak and its two neighbours per axis."""
    out = peak.astype(np.float64)
    for axis in range(3):
        if 0 < peak[axis] < heat.shape[axis] - 1:
            lo, hi = peak.copy(), peak.copy()
            lo[axis] -= 1
            hi[axis] += 1
            a, b, c = heat[tuple(lo)], heat[tuple(peak)], heat[tuple(hi)]
            curvature = a - 2 * b + c
            if curvature < 0:
                out[axis] += float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5))
    return out


def decode_maps(heat: np.ndarray, size_mm: np.ndarray, affine: np.ndarray, *,
                class_names: Sequence[str], min_score: float = 0.05,
                max_detections: int = 100, nms_iou: float = 0.1) -> list[Detection]:
    """Boxes from centre heatmaps and size maps on one grid.

    Parameters
    ----------
    heat : (K, *S) ndarray
        Centre probability per class, in [0, 1].
    size_mm : (3, *S) ndarray
        Box size in mm along each array axis of the grid.
    affine : (4, 4) ndarray
        Grid index -> LPS mm.
    class_names : sequence of str
        Name of each of the ``K`` classes (class index ``k + 1``).
    min_score : float
        Peaks below this are not boxes.
    max_detections : int
        Keep at most this many, highest scores first (before NMS).
    nms_iou : float
        Class-agnostic NMS threshold (lesions do not overlap).

    Returns
    -------
    list of Detection
        By decreasing score.
    """
    best = heat.max(axis=0)
    peaks = (ndimage.maximum_filter(best, size=3, mode="constant") == best) & (best >= min_score)
    points = np.argwhere(peaks)
    order = np.argsort(-best[tuple(points.T)], kind="stable")[:max_detections]
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    axes = linear / np.linalg.norm(linear, axis=0)
    out = []
    for point in points[order]:
        index = tuple(point)
        label = int(np.argmax(heat[(slice(None), *index)]))
        centre = linear @ _refine(best, point) + affine[:3, 3]
        out.append(Detection(centre, size_mm[(slice(None), *index)], axes,
                             score=float(best[index]), label=label + 1,
                             class_name=class_names[label]))
    return nms(out, nms_iou)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How :func:`detect` turns peaks into boxes, besides the score threshold.

    Attributes
    ----------
    nms_iou : float
        Class-agnostic NMS threshold (lesions do not overlap).
    max_detections : int
        Keep at most this many, highest scores first (before NMS).
    """

    nms_iou: float = 0.1
    max_detections: int = 100


#: The detector's windows: a quarter overlap (the maps are smooth, and boxes are merged
#: across windows in map space), two windows per batch. The activation is always "none":
#: :class:`DetectionMaps` returns probabilities and sizes itself.
DETECTION_WINDOWS = WindowOptions(overlap=0.25, batch_size=2, activation="none")


@dataclasses.dataclass
class DetectionResult:
    """What :func:`detect` returns.

    Attributes
    ----------
    detections : list of Detection
        Boxes in LPS mm by decreasing score, every one at or above ``min_score``.
    heatmap : Volume
        The class-wise maximum centre probability on the model grid (its exact affine),
        for display.
    provenance : dict
        Model, weights hash, card, device, parameters, runtime, package version, notes.
    """

    detections: list[Detection]
    heatmap: Volume
    provenance: dict[str, Any]

    def above(self, threshold: float) -> list[Detection]:
        """The detections scoring at least ``threshold``."""
        return [d for d in self.detections if d.score >= threshold]


def check_detector(card: ModelCard) -> int:
    """The number of lesion classes of a detector card (ModelError if it is not one)."""
    if card.task != "detection":
        raise ModelError(f"Model {card.name!r} is a {card.task} model, not a detector.")
    if card.in_channels != 1:
        raise ModelError(f"Detector {card.name!r} takes {card.in_channels} channels; "
                         f"detectors of one channel only are supported.")
    if card.num_classes < 2:
        raise ModelError(f"Detector {card.name!r} lists no lesion class besides background.")
    return card.num_classes - 1


def detect(volume: Volume, model: nn.Module, card: ModelCard, *, device: str = "auto",
           tta: bool = False, min_score: float = 0.05,
           decoding: DecodeOptions = DecodeOptions(),
           windows: WindowOptions = DETECTION_WINDOWS,
           use_autocast: bool = True, memory: MemoryBudget = MemoryBudget(),
           progress: ProgressCallback | None = None,
           cancel: CancelCheck | None = None) -> DetectionResult:
    """Detect lesions in a scan with a detector and its card; boxes in patient mm.

    Steps: the card's grid (:class:`~napari_medattn.inference.preprocess.CardGrid`:
    orientation and spacing) -> intensity normalisation -> the sliding window over
    :class:`DetectionMaps` (windows without body skipped; flips when ``tta``) ->
    :func:`decode_maps` on the model grid.

    Parameters
    ----------
    volume : Volume
        A 3D scan (detectors take one channel).
    model : nn.Module
        The detector network (see :func:`napari_medattn.models.registry.load_model`).
    card : ModelCard
        Its card (task ``"detection"``).
    device, use_autocast, memory, progress, cancel
        As for :func:`~napari_medattn.inference.sliding_window.sliding_window_inference`.
    tta : bool
        Average the maps over the 8 flips of the three axes.
    min_score : float
        Peaks below this are not boxes.
    decoding : DecodeOptions
        NMS threshold and the most boxes kept (see :func:`decode_maps`).
    windows : WindowOptions
        Overlap, batch size and the engine's other window options (default
        :data:`DETECTION_WINDOWS`); the activation is always ``"none"``.

    Returns
    -------
    DetectionResult
        An empty list is a result (no lesion found), not an error.

    Raises
    ------
    ModelError
        The card is not a detector's.
    DimensionError
        Not a 3D volume, wrong channels, NaN in the image.
    Cancelled
        When ``cancel`` fires.
    """
    started = time.perf_counter()
    n_classes = check_detector(card)
    volume = require_3d(volume)
    grid = CardGrid.for_volume(volume, card)  # also checks the card's channels
    values = grid.intensities()
    foreground = values > body_threshold(values, volume.modality)
    values = normalize_intensity(values, card.normalization, units=volume.meta.get("units"))
    check_cancel(cancel)
    windows = dataclasses.replace(windows, activation="none")
    result = sliding_window_inference(
        values, DetectionMaps(model, n_classes), card.patch_size, windows=windows,
        outputs=OutputRequest(keep_probabilities="all", tta=tta), memory=memory,
        foreground=foreground,
        num_classes=1 + n_classes + 3, device=device, use_autocast=use_autocast,
        progress=progress, cancel=cancel)
    maps = result.probabilities
    heat = np.stack([maps[1 + k] for k in range(n_classes)])
    size = np.stack([maps[1 + n_classes + a] for a in range(3)])
    check_cancel(cancel)
    detections = decode_maps(heat, size, grid.affine, class_names=card.class_names[1:],
                             min_score=min_score, max_detections=decoding.max_detections,
                             nms_iou=decoding.nms_iou)
    heatmap = Volume(heat.max(axis=0), grid.affine.copy(), "OT",
                     {"name": f"{volume.name} {card.name} lesion centres"})
    notes = list(result.notes)
    if not detections:
        notes.append(f"No lesion scored {min_score:g} or more in {volume.name}.")
    provenance = {
        "model": card.name,
        "weights_sha256": card.weights_sha256,
        "card": card.to_dict(),
        "source": str(volume.meta.get("source", volume.name)),
        "device": result.device,
        "precision": result.precision,
        "parameters": {"tta": tta, "min_score": min_score, "nms_iou": decoding.nms_iou,
                       "max_detections": decoding.max_detections, "overlap": windows.overlap,
                       "batch_size": windows.batch_size, "use_autocast": use_autocast},
        "windows": result.windows,
        "windows_predicted": result.windows_predicted,
        "runtime_s": time.perf_counter() - started,
        "package_version": napari_medattn.__version__,
        "notes": notes,
    }
    return DetectionResult(detections, heatmap, provenance)
