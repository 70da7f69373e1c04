"""Segment a Volume with a model as its card says, results on the source geometry.

This is the call the napari widget and the ``medattn segment`` command make::

    module, card = load_model("unet-ct-organs")
    result = segment(volume, module, card, device="auto",
                     outputs=OutputRequest(tta=True, uncertainty="variance"))
    result.labels          # Volume: uint8/uint16 labels, the source affine and shape
    result.provenance      # what to write beside an output

Steps: reorient to the card's orientation (a view) -> resample to the card's spacing
(linear) -> normalise intensities -> optional crop to the body (on the model's grid, after
normalising, so the statistics are the whole volume's) -> sliding window -> paste into the
model's grid -> resample back to the source grid (labels nearest, probabilities and
uncertainty linear) -> undo the reorientation -> optional removal of small components.
The grid steps are :class:`~napari_medattn.inference.preprocess.CardGrid`'s. The returned
volumes carry the source affine and meta bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

import napari_medattn
from napari_medattn.errors import ModelError
from napari_medattn.inference.preprocess import (
    CardGrid,
    body_bounding_box,
    body_threshold,
    normalize_intensity,
    paste,
    remove_small_components,
)
from napari_medattn.inference.resample import LINEAR, NEAREST
from napari_medattn.inference.sliding_window import (
    CancelCheck,
    ProgressCallback,
    check_cancel,
    sliding_window_inference,
)
from napari_medattn.inference.window_options import MemoryBudget, OutputRequest, WindowOptions
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard


@dataclasses.dataclass
class Segmentation:
    """A segmentation on the source grid.

    Attributes
    ----------
    labels : Volume
        Class index per voxel (``modality="SEG"``); ``meta["classes"]`` lists
        ``(name, colour)`` by index.
    probabilities : dict of int to Volume
        Requested class probabilities in [0, 1].
    uncertainty : Volume or None
        Requested uncertainty in [0, 1].
    attention : dict of str to Volume
        Requested spatial attention maps, averaged over heads.
    provenance : dict
        Model, weights hash, card, device, parameters, runtime, package version, notes.
    """

    labels: Volume
    probabilities: dict[int, Volume]
    uncertainty: Volume | None
    attention: dict[str, Volume]
    provenance: dict[str, Any]

    @property
    def notes(self) -> list[str]:
        return list(self.provenance["notes"])


#: The body's bounding box is found on a view of at most this many voxels (every k-th voxel
#: per axis): labelling the connected parts of a whole 512x512x300 CT took 3-10 s.
BODY_BOX_VOXELS = 4_000_000


def _body_box(first: np.ndarray, threshold: float) -> tuple[slice, ...]:
    """:func:`body_bounding_box` of ``first``, computed on every k-th voxel per axis.

    The coarse box is scaled back and widened by ``k`` voxels on every side (clipped to the
    volume), so it holds every body voxel the coarse view misses between its samples.
    """
    step = max(1, int(np.ceil(np.cbrt(first.size / BODY_BOX_VOXELS))))
    if step == 1:
        return body_bounding_box(first, threshold=threshold)
    coarse = body_bounding_box(first[::step, ::step, ::step], threshold=threshold)
    return tuple(slice(max(0, b.start * step - step), min(size, b.stop * step + step))
                 for b, size in zip(coarse, first.shape))


def segment(
    volume: Volume,
    model: nn.Module,
    card: ModelCard,
    *,
    device: str | torch.device = "auto",
    outputs: OutputRequest = OutputRequest(),
    windows: WindowOptions = WindowOptions(),
    memory: MemoryBudget = MemoryBudget(),
    crop_to_body: bool = False,
    min_component_mm3: float | None = None,
    use_autocast: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Segmentation:
    """Segment ``volume`` with ``model`` as ``card`` prescribes.

    Parameters
    ----------
    volume : Volume
        3D, or 4D with ``card.in_channels`` frames (channels) first.
    model : nn.Module
        The network (e.g. from :func:`napari_medattn.models.registry.load_model`).
    card : ModelCard
        Its card: orientation, spacing (mm), normalisation, window size, classes.
    device, outputs, windows, use_autocast, progress, cancel
        As for :func:`~napari_medattn.inference.sliding_window.sliding_window_inference`
        (``outputs``: probabilities, test-time flips, uncertainty, attention maps;
        ``windows``: overlap, batch size, skipping of empty windows, ...).
    memory : MemoryBudget
        The memory the window batch is planned against (default: the free RAM and GPU
        memory measured at the start; a cohort worker passes its share of its limit).
    crop_to_body : bool
        Run only inside the bounding box of the body (voxels above
        :func:`~napari_medattn.inference.preprocess.body_threshold`, plus a margin of 4
        voxels of the model's grid); outside is background. The box is taken after
        normalisation, so the network sees the same values as without the crop, only
        fewer windows. The same threshold decides which windows ``windows.skip_empty``
        skips.
    min_component_mm3 : float, optional
        Remove connected pieces of each class smaller than this volume (mm^3).

    Returns
    -------
    Segmentation

    Raises
    ------
    DimensionError
        The volume's channels do not match the card's.
    ModelError
        The card is not a segmentation model's (e.g. a detector's).
    Cancelled
        When ``cancel`` fires; nothing is returned.
    """
    started = time.perf_counter()
    if card.task != "segmentation":  # a detector's card lists fewer classes than it outputs
        raise ModelError(f"Model {card.name!r} is a {card.task} model; choose a segmentation "
                         f"model to segment.")
    grid = CardGrid.for_volume(volume, card)  # reoriented as a view; checks the channels
    notes: list[str] = []
    if card.modality != "OT" and volume.modality != card.modality:
        notes.append(f"Model {card.name!r} was made for {card.modality}; this image is "
                     f"{volume.modality}.")
    model_input, foreground, box = _model_input(volume, card, grid, windows.skip_empty,
                                                crop_to_body, cancel)
    check_cancel(cancel)
    result = sliding_window_inference(
        model_input, model, card.patch_size, windows=windows, outputs=outputs, memory=memory,
        foreground=foreground, num_classes=card.num_classes, device=device,
        use_autocast=use_autocast, progress=progress, cancel=cancel)
    notes += result.notes
    del model_input

    def to_source(array: np.ndarray, order: int, outside: float) -> np.ndarray:
        """Body box -> model grid -> source grid -> source axis order."""
        if box is not None:
            array = paste(array, box, grid.shape, fill=outside)
        return grid.to_source(array, order)

    check_cancel(cancel)
    labels = to_source(result.labels, NEAREST, 0)
    if min_component_mm3:
        labels = remove_small_components(labels, min_component_mm3, volume.spacing)
    meta = dict(volume.meta)
    meta.update(name=f"{volume.name} {card.name}",
                classes=[(c.name, c.color) for c in card.classes])

    def on_source(array: np.ndarray, modality: str, name: str) -> Volume:
        return Volume(array, volume.affine.copy(), modality, {**meta, "name": name})

    probabilities = {c: on_source(to_source(p, LINEAR, 1.0 if c == 0 else 0.0), "OT",
                                  f"{volume.name} {card.class_names[c]} probability")
                     for c, p in result.probabilities.items()}
    uncertainty_volume = None
    if result.uncertainty is not None:
        uncertainty_volume = on_source(to_source(result.uncertainty, LINEAR, 0.0), "OT",
                                       f"{volume.name} {card.name} uncertainty")
    attention = {name: on_source(to_source(a, LINEAR, 0.0), "OT",
                                 f"{volume.name} {card.name} attention {name}")
                 for name, a in result.attention.items()}
    provenance = {
        "model": card.name,
        "weights_sha256": card.weights_sha256,
        "card": card.to_dict(),
        "device": result.device,
        "precision": result.precision,
        "parameters": {"overlap": windows.overlap, "batch_size": windows.batch_size,
                       "tta": outputs.tta, "uncertainty": outputs.uncertainty,
                       "keep_probabilities": list(outputs.keep_probabilities),
                       "attention_maps": list(outputs.attention_maps),
                       "crop_to_body": crop_to_body, "min_component_mm3": min_component_mm3,
                       "skip_empty": windows.skip_empty, "use_autocast": use_autocast},
        "windows": result.windows,
        "windows_predicted": result.windows_predicted,
        "runtime_s": time.perf_counter() - started,
        "package_version": napari_medattn.__version__,
        "notes": notes,
    }
    return Segmentation(on_source(labels, "SEG", meta["name"]), probabilities,
                        uncertainty_volume, attention, provenance)


def _model_input(volume: Volume, card: ModelCard, grid: CardGrid, skip_empty: bool,
                 crop_to_body: bool, cancel: CancelCheck | None
                 ) -> tuple[np.ndarray, np.ndarray | None, tuple[slice, ...] | None]:
    """The normalised network input on the model's grid, the foreground mask for skipping
    empty windows (or None), and the body box it was cropped to (or None)."""
    # Body versus air, in the image's own units, for the crop and for skipping windows.
    work = grid.work
    first = np.asarray(work.data if work.data.ndim == 3 else work.data[0])
    threshold = body_threshold(first, volume.modality) if (crop_to_body or skip_empty) else None
    check_cancel(cancel)

    # Resample the whole volume to the model's grid, then normalise.
    model_input = grid.intensities()
    # The first channel decides what is body, in the image's own units.
    body = (model_input if model_input.ndim == 3 else model_input[0])
    foreground = body > threshold if skip_empty else None
    units = volume.meta.get("units")
    if model_input.ndim == 3:
        model_input = normalize_intensity(model_input, card.normalization, units=units)
    else:
        model_input = np.stack([normalize_intensity(c, card.normalization, units=units)
                                for c in model_input])
    # Crop after normalising: the normalisation statistics (an MR z-score's Otsu
    # foreground, percentiles) are those of the whole volume, so every voxel inside the
    # box gets the same network input as without the crop; only fewer windows run.
    box = None
    if crop_to_body:
        box = _body_box(body, threshold)
        model_input = model_input[(Ellipsis, *box)]
        foreground = foreground[box] if foreground is not None else None
    return model_input, foreground, box
