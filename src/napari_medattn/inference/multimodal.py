"""Segment brain tumours from any subset of a multimodal model's modalities.

    module, card = load_model("dmaf-brain-tumour")
    result = segment_multimodal({"t1ce": t1ce, "flair": flair}, module, card)
    result.labels            # Volume on the reference scan's grid, BraTS values 0/1/2/4
    result.volumes_ml        # {"WT": ..., "TC": ..., "ET": ...}
    result.modality_weights  # each modality's contribution over the tumour, sums to 1

The scans go onto the reference scan's grid through their exact affines (or registration
transforms) by :func:`~napari_medattn.fusion.multimodal.multimodal_inputs`; the stacked
channels then run through the one segmentation pipeline
(:func:`~napari_medattn.inference.pipeline.segment`: the card's orientation, spacing,
normalisation and sliding window), with the presence mask bound to the network, so the
labels come back on the reference grid bit for bit.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.fusion.multimodal import multimodal_inputs
from napari_medattn.inference.pipeline import _body_box, segment
from napari_medattn.inference.preprocess import body_threshold, crop, paste
from napari_medattn.inference.sliding_window import CancelCheck, ProgressCallback
from napari_medattn.inference.window_options import OutputRequest, WindowOptions
from napari_medattn.io.volume import Volume
from napari_medattn.models import capture
from napari_medattn.models.brats import BRATS_LABELS, LABEL_COLOURS, REGIONS, classes_to_labels
from napari_medattn.models.card import ModelCard

__all__ = ["MULTIMODAL_TASK", "MultimodalSegmentation", "segment_multimodal",
           "attention_map_name", "region_volumes_ml", "guess_modality"]

#: The card task of a model that takes several modalities: not offered for single scans.
MULTIMODAL_TASK = "multimodal-segmentation"


#: Patterns of scan names and series descriptions, most specific first: FLAIR before T2,
#: contrast-enhanced T1 before T1.
_GUESSES = (
    ("flair", re.compile(r"flair")),
    ("t1ce", re.compile(r"t1[\s_-]*(ce|c|gd|post|\+c|contrast)(?![a-z])|gad|gado|contrast|"
                        r"post[\s_-]*(gd|contrast|c)(?![a-z])")),
    ("t2", re.compile(r"t2(?![0-9])")),
    ("t1", re.compile(r"t1(?![0-9])|mprage|spgr")),
)


def guess_modality(text: str) -> str | None:
    """The BraTS modality a scan's name or series description suggests, or None.

    >>> guess_modality("BraTS20_Training_001_t1ce"), guess_modality("AX FLAIR")
    ('t1ce', 'flair')
    """
    lower = str(text).lower()
    return next((name for name, pattern in _GUESSES if pattern.search(lower)), None)


def attention_map_name(modality: str) -> str:
    """Name of a modality's spatial contribution map, as the pipeline returns it."""
    return f"attention_{modality}"


@dataclasses.dataclass
class MultimodalSegmentation:
    """A multimodal segmentation on the reference scan's grid.

    Attributes
    ----------
    labels : Volume
        BraTS labels (uint8: 0, 1 necrotic core, 2 oedema, 4 enhancing tumour);
        ``meta["labels"]`` names them and ``meta["label_colours"]`` gives their colours.
    volumes_ml : dict of str to float
        Whole tumour, tumour core and enhancing tumour volumes in mL.
    modality_weights : dict of str to float
        Each given modality's mean contribution to the fused features over the predicted
        tumour (over the whole volume when none is found), summing to 1; empty for a model
        that records no fusion weights.
    attention : dict of str to Volume
        Per-modality contribution maps in [0, 1] on the reference grid, when asked for.
    reference : str
        The modality whose grid the outputs are on.
    provenance : dict
        The pipeline's record plus the modalities given and their weights.
    """

    labels: Volume
    volumes_ml: dict[str, float]
    modality_weights: dict[str, float]
    attention: dict[str, Volume]
    reference: str
    provenance: dict[str, Any]


class _PresenceBound(nn.Module):
    """The multimodal net with its presence mask bound, as a one-input predictor for the
    sliding window; sums each modality's contribution over the predicted tumour."""

    def __init__(self, net: nn.Module, present: np.ndarray, modalities: tuple[str, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("present", torch.from_numpy(np.asarray(present, dtype=bool)))
        self.modalities = modalities
        self.tumour_sums = torch.zeros(len(modalities), dtype=torch.float64)
        self.all_sums = torch.zeros(len(modalities), dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with capture.capture_attention(self.net) as maps:
            logits = self.net(x, self.present)
        if "fusion.0.attention" in maps:  # DMAF: contributions per voxel
            per_voxel = maps["fusion.0.attention"].value.double()  # (B, M, *padded grid)
            per_voxel = per_voxel[(..., *(slice(0, n) for n in x.shape[2:]))]
            tumour = 1.0 - logits.detach().float().softmax(1)[:, :1].cpu().double()
            self.tumour_sums += (per_voxel * tumour).sum(dim=(0, *range(2, x.ndim)))
            self.all_sums += per_voxel.sum(dim=(0, *range(2, x.ndim)))
            for m, name in enumerate(self.modalities):
                if bool(self.present[m]):
                    capture.record(self, attention_map_name(name), per_voxel[:, m:m + 1].float(),
                                   capture.MapKind.SPATIAL)
        elif "fusion.0.weights" in maps:  # one weight per window (region fusion)
            self.all_sums += maps["fusion.0.weights"].value.double().sum(0)
        return logits

    def weights(self) -> dict[str, float]:
        sums = self.tumour_sums if float(self.tumour_sums.sum()) > 1e-6 else self.all_sums
        total = float(sums.sum())
        if total <= 0:
            return {}
        return {name: float(sums[m]) / total for m, name in enumerate(self.modalities)
                if bool(self.present[m])}


def _union_body_box(channels: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding the head box of every given channel (reference grid)."""
    boxes = [_body_box(c, body_threshold(c, "MR")) for c in channels]
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                 for a in range(3))


def region_volumes_ml(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """WT, TC and ET volumes in mL of a BraTS label map on a grid with ``affine``."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    return {name: float(np.isin(labels, values).sum()) * voxel_ml
            for name, values in REGIONS.items()}


def segment_multimodal(
    volumes: Mapping[str, Volume],
    model: nn.Module,
    card: ModelCard,
    *,
    reference: str | None = None,
    transforms: Mapping[str, Any] | None = None,
    attention: bool = False,
    device: str | torch.device = "auto",
    windows: WindowOptions = WindowOptions(overlap=0.25),
    use_autocast: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> MultimodalSegmentation:
    """Segment from any non-empty subset of the model's modalities.

    Parameters
    ----------
    volumes : mapping of str to Volume
        Scans by modality name (case-insensitive), e.g. ``{"t1ce": a, "flair": b}``.
    model, card
        A multimodal segmentation network and its card (``config["modalities"]``).
    reference : str, optional
        The modality whose grid the outputs are on (default: the first given, in the
        model's order).
    transforms : mapping of str to transform, optional
        Per modality, a registration result (reference LPS mm -> that scan's LPS mm).
    attention : bool
        Also return each given modality's contribution map.
    device, windows, use_autocast, progress, cancel
        As for :func:`~napari_medattn.inference.pipeline.segment`. Windows are never
        skipped as empty: which scan shows the body depends on which are given.

    Returns
    -------
    MultimodalSegmentation

    Raises
    ------
    ModelError
        The model is not a multimodal one, or a modality name it does not know.
    DimensionError
        No modality given, one given twice, or the same scan given for two modalities.
    GeometryError
        A scan does not overlap the reference scan in patient space.
    """
    modalities = tuple(card.config.get("modalities") or ())
    if not modalities:
        raise ModelError(f"Model {card.name!r} takes one scan, not several modalities; "
                         f"choose a multimodal model such as dmaf-brain-tumour.")
    if card.task not in (MULTIMODAL_TASK, "segmentation"):
        raise ModelError(f"Model {card.name!r} is a {card.task} model; choose a multimodal "
                         f"segmentation model.")
    inputs = multimodal_inputs(volumes, modalities, reference=reference, transforms=transforms)
    grid = inputs.grid
    reference_name = (reference.lower() if reference else
                      next(m for m, p in zip(modalities, inputs.present) if p))
    # Only the union of the given scans' head boxes runs: windows over air cost as much
    # as windows over the head, and which scan shows the head depends on which are given.
    box = _union_body_box(inputs.array[inputs.present])
    stacked = crop(Volume(inputs.array, grid.affine.copy(), grid.modality, dict(grid.meta)),
                   box)
    bound = _PresenceBound(model, inputs.present, modalities)
    maps = tuple(attention_map_name(m) for m, p in zip(modalities, inputs.present) if p)
    # The pipeline runs the stacked channels as one scan of a segmentation model.
    result = segment(stacked, bound, dataclasses.replace(card, task="segmentation"),
                     device=device,
                     outputs=OutputRequest(attention_maps=maps if attention else ()),
                     windows=dataclasses.replace(windows, skip_empty=False),
                     use_autocast=use_autocast, progress=progress, cancel=cancel)
    shape = grid.spatial_shape
    labels = paste(classes_to_labels(result.labels.data), box, shape)
    meta = {**grid.meta, "name": f"{grid.name} {card.name} tumour",
            "labels": dict(BRATS_LABELS), "label_colours": dict(LABEL_COLOURS)}
    meta.pop("classes", None)
    weights = bound.weights()
    given = [m for m, p in zip(modalities, inputs.present) if p]
    provenance = {**result.provenance, "modalities": given, "reference": reference_name,
                  "modality_weights": weights}
    provenance["parameters"] = {**provenance["parameters"], "attention": attention}
    return MultimodalSegmentation(
        labels=Volume(labels, grid.affine.copy(), "SEG", meta),
        volumes_ml=region_volumes_ml(labels, grid.affine), modality_weights=weights,
        attention={name.removeprefix("attention_"): Volume(
            paste(volume.data, box, shape), grid.affine.copy(), "OT",
            {**grid.meta, "name": f"{grid.name} {card.name} {name}"})
            for name, volume in result.attention.items()},
        reference=reference_name, provenance=provenance)

