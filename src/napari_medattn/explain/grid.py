"""The model grid of an explanation: the source volume as the network sees it, per-window
map runs through the package's one sliding-window engine, and the way back.

Why per window rather than the whole volume at once: :func:`napari_medattn.inference.segment`
runs a network window by window (the card's patch size, overlap 0.5, Gaussian blending), and
normalisation layers inside the network (instance norm) see one window at a time. Computing
an explanation on the same windows, blended by the same engine, explains the segmentation
the user sees, and keeps memory bounded by one window even when gradients are needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.inference.memory import DEFAULT_ACTIVATION_BYTES_PER_VOXEL
from napari_medattn.inference.preprocess import CardGrid, Reorientation, normalize_intensity
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_to_grid
from napari_medattn.inference.sliding_window import (
    CancelCheck,
    ProgressCallback,
    sliding_window_inference,
)
from napari_medattn.inference.window_options import MemoryBudget, OutputRequest, WindowOptions
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard

#: Window overlap of explanation runs: the one :func:`~napari_medattn.inference.segment` uses.
OVERLAP = 0.5
#: Backward passes keep every activation of a window: plan memory for about 3x a forward.
GRADIENT_BYTES_PER_VOXEL = 3 * DEFAULT_ACTIVATION_BYTES_PER_VOXEL

#: A per-window map function: a batch ``(B, C_in, *patch)`` and the target region
#: ``(B, *patch)`` (float 0/1), or None when no region was given, to maps ``(B, K, *patch)``.
WindowMapFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclasses.dataclass
class ModelGrid:
    """A volume preprocessed as its model card prescribes, and the way back to its grid.

    Attributes
    ----------
    grid : CardGrid
        The card's grid for the volume (orientation, spacing) and the way back, as
        :func:`napari_medattn.inference.segment` uses it.
    image : ndarray of float32
        Normalised intensities on the model grid, ``(C_in, *shape)``.
    """

    grid: CardGrid
    image: np.ndarray

    @property
    def source(self) -> Volume:
        """The volume as given."""
        return self.grid.source

    @property
    def work(self) -> Volume:
        """The volume turned to the card's orientation (a view)."""
        return self.grid.work

    @property
    def turned(self) -> Reorientation | None:
        """The turn, undone on the way back."""
        return self.grid.turned

    @property
    def affine(self) -> np.ndarray:
        """Model grid index -> LPS mm."""
        return self.grid.affine

    @property
    def shape(self) -> tuple[int, ...]:
        """Model grid shape (voxels)."""
        return self.grid.shape

    @classmethod
    def from_volume(cls, volume: Volume, card: ModelCard) -> ModelGrid:
        """Reorient, resample (linear) to the card's spacing and normalise, as
        :func:`napari_medattn.inference.segment` does.

        Raises
        ------
        DimensionError
            The model is not 3D, or the channels differ from the card's.
        """
        if len(card.patch_size) != 3:
            raise DimensionError(
                f"Model {card.name!r} is {len(card.patch_size)}D; explanations of a volume need "
                f"a 3D model (the functions of napari_medattn.explain.cam take 2D tensors).")
        grid = CardGrid.for_volume(volume, card)
        data = grid.intensities()
        frames = data[None] if data.ndim == 3 else data
        units = volume.meta.get("units")
        image = np.stack([normalize_intensity(f, card.normalization, units=units)
                          for f in frames]).astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            raise DimensionError(f"{volume.name} contains NaN or infinite values; fix or mask "
                                 f"them before explaining.")
        return cls(grid, image)

    def region_on_grid(self, region: np.ndarray | None) -> np.ndarray:
        """A boolean mask on the source grid, on the model grid (nearest); None: everywhere."""
        if region is None:
            return np.ones(self.shape, dtype=bool)
        region = np.asarray(region)
        if region.shape != self.source.spatial_shape:
            raise DimensionError(f"The region has shape {region.shape}; it must match the "
                                 f"image's {self.source.spatial_shape}.")
        if not region.any():
            raise DimensionError("The region is empty; draw at least one voxel.")
        mask = Volume(region.astype(np.uint8), self.source.affine)
        if self.turned is not None:
            mask = Volume(self.turned.apply(mask.data), self.work.affine)
        on_grid = resample_to_grid(mask, self.affine, self.shape, order=NEAREST).data > 0
        if not on_grid.any():
            raise DimensionError("The region is thinner than one voxel of the model grid; "
                                 "draw a larger region.")
        return on_grid

    def to_source(self, array: np.ndarray, name: str) -> Volume:
        """A map on the model grid back on the source geometry (linear), float32.

        The result has the source's spatial shape and affine exactly, and its meta with
        ``name``.
        """
        array = self.grid.to_source(array, LINEAR)
        meta = {**self.source.meta, "name": name}
        return Volume(np.ascontiguousarray(array, dtype=np.float32), self.source.affine.copy(),
                      "OT", meta)


class _WindowMaps(nn.Module):
    """Adapter that lets the sliding-window engine blend explanation maps: a window batch
    (with the region as its last channel when there is one) goes in, ``fn``'s maps come
    out as the "scores"."""

    def __init__(self, model: nn.Module, fn: WindowMapFn, in_channels: int,
                 has_region: bool) -> None:
        super().__init__()
        self.model = model
        self.fn = fn
        self.in_channels = in_channels
        self.has_region = has_region

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        # The engine runs under inference mode; a clone made outside it is an ordinary
        # tensor, so the map function may build a graph and take gradients.
        with torch.inference_mode(False), torch.enable_grad():
            batch = batch.clone()
            region = batch[:, self.in_channels] if self.has_region else None
            maps = self.fn(batch[:, :self.in_channels], region)
        return maps.detach().float()


def window_maps(grid: ModelGrid, model: nn.Module, card: ModelCard, fn: WindowMapFn, *,
                image: np.ndarray | None = None, region: np.ndarray | None = None,
                device: str | torch.device = "auto", batch_size: int = 2,
                gradients: bool = True, memory: MemoryBudget = MemoryBudget(),
                progress: ProgressCallback | None = None,
                cancel: CancelCheck | None = None) -> np.ndarray:
    """Run ``fn`` on every window of the model grid and blend its maps like probabilities.

    Parameters
    ----------
    grid : ModelGrid
        The preprocessed volume.
    model : nn.Module
        The network ``fn`` uses (moved to the device by the engine, in eval mode).
    card : ModelCard
        Its card (patch size).
    fn : callable
        ``fn(batch, region)`` -> ``(B, K, *patch)`` maps; see :data:`WindowMapFn`.
    image : ndarray, optional
        Input ``(C_in, *shape)`` instead of ``grid.image`` (e.g. with noise added).
    region : ndarray of bool, optional
        Target region on the model grid. Without one ``fn`` gets ``None`` and applies
        its own default (the class-activation maps and occlusion: the voxels predicted
        as the class, see :func:`~napari_medattn.explain.cam.target_score`).
    device, batch_size, progress, cancel
        As for :func:`~napari_medattn.inference.sliding_window_inference`.
    gradients : bool
        Plan memory for a backward pass per window.
    memory : MemoryBudget
        The free memory to plan against (its activation size is set by ``gradients``).

    Returns
    -------
    ndarray of float32
        ``(K, *shape)``: each map blended over the windows (Gaussian weights).
    """
    image = grid.image if image is None else image
    stacked = (image if region is None
               else np.concatenate([image, region[None].astype(np.float32)]))
    adapter = _WindowMaps(model, fn, image.shape[0], has_region=region is not None)
    result = sliding_window_inference(
        stacked, adapter, card.patch_size,
        windows=WindowOptions(overlap=OVERLAP, batch_size=batch_size, skip_empty=False,
                              activation="none"),
        outputs=OutputRequest(keep_probabilities="all"),
        memory=dataclasses.replace(memory, activation_bytes_per_voxel=(
            GRADIENT_BYTES_PER_VOXEL if gradients else DEFAULT_ACTIVATION_BYTES_PER_VOXEL)),
        device=device, use_autocast=False, progress=progress, cancel=cancel)
    if not result.probabilities:
        raise ModelError("The explanation produced no map.")
    return np.stack([result.probabilities[k] for k in sorted(result.probabilities)])
