"""Native attention maps: what the attention blocks themselves compute, read through
:func:`napari_medattn.models.capture.capture_attention`.

* ``gate``: the attention-gate coefficients ``alpha`` of each decoder level (Attention
  U-Net), in [0, 1], 1 = the skip feature passes.
* ``cbam``: CBAM's spatial attention ``Ms`` in [0, 1].
* ``channels``: the channel weights of SE (excitation), ECA, CBAM (channel attention) and
  scSE (channel gate), in [0, 1]. The weights are averaged over the windows of the volume
  (each window is one forward pass, so each has its own weights). The volume shown with
  them is the block's input features weighted by its channel weights and averaged over
  channels, ``mean_c(w_c |x_c|)`` per voxel: where the channels the block emphasises are
  active.
* ``dssa``: DSSA's region routing (hard attention): for each region of a DSSA block's
  grid, the fraction of query regions that keep it among their top-k key regions, in
  [0, 1] (1 everywhere for a block that attends to all regions). Where the routing
  concentrates; what one voxel attends to is the inspector's click-to-query map.

Spatial maps are blended over windows by the sliding-window engine itself (its
``attention_maps``), heads averaged, exactly as :func:`napari_medattn.inference.segment`
returns them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_medattn.explain.cam import upsample
from napari_medattn.explain.grid import OVERLAP, ModelGrid, window_maps
from napari_medattn.inference.sliding_window import (
    CancelCheck,
    ProgressCallback,
    sliding_window_inference,
)
from napari_medattn.inference.window_options import MemoryBudget, OutputRequest, WindowOptions
from napari_medattn.models.blocks.cbam import CBAM
from napari_medattn.models.blocks.dssa import DualSparseSelectionAttention
from napari_medattn.models.blocks.eca import EfficientChannelAttention
from napari_medattn.models.blocks.gate import AttentionGate
from napari_medattn.models.blocks.scse import SpatialChannelSE
from napari_medattn.models.blocks.se import SqueezeExcitation
from napari_medattn.models.capture import capture_attention
from napari_medattn.models.card import ModelCard

#: Block types and the capture quantity of each native method.
SPATIAL_QUANTITY = {"gate": ((AttentionGate, "alpha"),), "cbam": ((CBAM, "spatial"),),
                    "dssa": ((DualSparseSelectionAttention, "regions"),)}
CHANNEL_QUANTITY = ((SqueezeExcitation, "excitation"), (EfficientChannelAttention, "weights"),
                    (CBAM, "channel"), (SpatialChannelSE, "channel"))
NATIVE_METHODS = ("gate", "cbam", "channels", "dssa")


def _quantities(method: str):
    return CHANNEL_QUANTITY if method == "channels" else SPATIAL_QUANTITY[method]


def native_layers(model: nn.Module, method: str) -> list[str]:
    """Module paths of the blocks that record ``method``'s maps, in model order (for the
    U-Net's gates: ``decoder.0.gate``, the full-resolution level, first)."""
    types = tuple(t for t, _ in _quantities(method))
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def quantity_of(model: nn.Module, layer: str, method: str) -> str:
    """The capture name ``<layer>.<quantity>`` of ``method`` at ``layer``."""
    module = dict(model.named_modules())[layer]
    for block_type, quantity in _quantities(method):
        if isinstance(module, block_type):
            return f"{layer}.{quantity}"
    raise KeyError(layer)


def spatial_maps(grid: ModelGrid, model: nn.Module, card: ModelCard, names: list[str], *,
                 device: str | torch.device = "auto", memory: MemoryBudget = MemoryBudget(),
                 progress: ProgressCallback | None = None,
                 cancel: CancelCheck | None = None) -> dict[str, np.ndarray]:
    """Blended spatial capture maps (heads averaged) on the model grid, by capture name."""
    result = sliding_window_inference(
        grid.image, model, card.patch_size,
        windows=WindowOptions(overlap=OVERLAP, skip_empty=False),
        outputs=OutputRequest(attention_maps=tuple(names)), num_classes=card.num_classes,
        memory=memory, device=device,
        use_autocast=False,  # maps of the float32 computation, like the gradient methods
        progress=progress, cancel=cancel)
    return result.attention


def channel_map(grid: ModelGrid, model: nn.Module, card: ModelCard, layer: str, *,
                device: str | torch.device = "auto", memory: MemoryBudget = MemoryBudget(),
                progress: ProgressCallback | None = None,
                cancel: CancelCheck | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Channel weights of the block at ``layer`` and the weighted feature map.

    Returns
    -------
    weights : ndarray of float32
        ``(C,)``: the block's channel weights averaged over the windows.
    volume : ndarray of float32
        ``mean_c(w_c |x_c|)`` of the block's input ``x`` on the model grid (blended over
        windows, each window with its own weights).
    """
    name = quantity_of(model, layer, "channels")
    block = dict(model.named_modules())[layer]
    per_window: list[torch.Tensor] = []

    def weighted_features(batch: torch.Tensor, _region: torch.Tensor) -> torch.Tensor:
        inputs: list[torch.Tensor] = []
        handle = block.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
        try:
            with torch.no_grad(), capture_attention(model) as maps:
                model(batch)
        finally:
            handle.remove()
        weights = maps[name].value.to(batch.device).float()  # (B, C)
        per_window.append(weights.cpu())
        features = inputs[0].abs()
        shape = (*weights.shape, *(1,) * (features.ndim - 2))
        volume = (features * weights.reshape(shape)).mean(dim=1)
        return upsample(volume, tuple(batch.shape[2:]))[:, None]

    volume = window_maps(grid, model, card, weighted_features, device=device,
                         gradients=False, memory=memory, progress=progress, cancel=cancel)[0]
    weights = torch.cat(per_window).mean(dim=0).numpy().astype(np.float32)
    return weights, volume


def routing_maps(grid: ModelGrid, model: nn.Module, card: ModelCard, layers: list[str], *,
                 device: str | torch.device = "auto", memory: MemoryBudget = MemoryBudget(),
                 progress: ProgressCallback | None = None,
                 cancel: CancelCheck | None = None) -> dict[str, np.ndarray]:
    """How often each region of the DSSA blocks at ``layers`` is routed to, on the model grid.

    Per window and block: the fraction of query regions whose top-k key regions include
    each region (the capture's ``regions`` routing), laid on the block's grid (each region
    covers its tokens; the padding DSSA adds is cropped) and interpolated (linear) to the
    window; then blended over windows. Returns one map per layer.
    """
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def routed(batch: torch.Tensor, _region: torch.Tensor) -> torch.Tensor:
        shapes.clear()

        def note_grid(layer):
            def hook(_module, args):
                shapes.setdefault(layer, tuple(args[0].shape[2:]))
            return hook

        handles = [modules[layer].register_forward_pre_hook(note_grid(layer)) for layer in layers]
        try:
            with torch.no_grad(), capture_attention(model) as maps:
                model(batch)
        finally:
            for handle in handles:
                handle.remove()
        out = []
        for layer in layers:
            record = maps[quantity_of(model, layer, "dssa")]
            route = record.value.to(batch.device).flatten(1)  # (B, R * k) kept key regions
            n_regions = record.value.shape[1]
            counts = torch.zeros((batch.shape[0], n_regions), device=batch.device)
            counts.scatter_add_(1, route, torch.ones(route.shape, device=batch.device))
            on_grid = (counts / n_regions).reshape(batch.shape[0], *record.meta["grid"])
            for axis, size in enumerate(record.meta["region_size"]):
                on_grid = on_grid.repeat_interleave(size, dim=axis + 1)
            on_grid = on_grid[(slice(None), *(slice(0, n) for n in shapes[layer]))]
            out.append(upsample(on_grid, tuple(batch.shape[2:])))
        return torch.stack(out, dim=1)

    maps = window_maps(grid, model, card, routed, device=device, gradients=False,
                       memory=memory, progress=progress, cancel=cancel)
    return dict(zip(layers, maps))
