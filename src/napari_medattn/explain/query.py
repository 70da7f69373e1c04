"""What one clicked voxel attends to: token attention and DSSA routing, cheap per click.

A :class:`QueryExplorer` is prepared once per (image, model): the image goes through the
card's preprocessing exactly as :func:`napari_medattn.inference.segment` does it (reorient,
resample to the card's spacing, normalise), the model runs once on each window the
segmentation engine would use (the card's patch size, overlap 0.5), and every
token-attention block keeps the output of its QKV projection per window (and a DSSA block
its region routing, which does not depend on the query). A click is answered in the
window that holds the voxel nearest its centre, and costs one attention row on one block,
not a forward pass::

    explorer = QueryExplorer(volume, model, card)
    explorer.blocks()                  # ["encoder.stages.0.0.attn", ...]
    result = explorer.query((12.0, -30.5, 40.0), "encoder.stages.1.0.attn")
    result.attention                   # Volume on the source geometry
    result.regions, result.kept_tokens # DSSA: routed regions 1..k, the keys the voxel kept

Supported blocks: :class:`~napari_medattn.models.blocks.global_attention.MultiHeadSelfAttention`
(the row over all tokens), :class:`~napari_medattn.models.blocks.window.WindowAttention`
(the row over the voxel's window, with the relative position bias and the shift masks) and
:class:`~napari_medattn.models.blocks.dssa.DualSparseSelectionAttention` (the row over the
keys kept from the routed regions). Each row is recorded through the capture API
(:func:`napari_medattn.models.capture.record`) under the same name and layout the block
itself records in :func:`~napari_medattn.models.capture.capture_attention`, and the query
token is found by :func:`~napari_medattn.models.capture.query_tokens`, so a click shows the
same numbers as a forward pass of that window with that query.

Why windows rather than the whole volume: token attention depends on the grid it runs on
(DSSA cuts its input into a fixed number of regions per axis; every net pads its input),
and the network was trained and segments on windows of its patch size; a whole-volume pass
would show attention the model never computes when it segments.

Geometry: a map on a block's token grid is placed on its window of the model grid
cell-centred (token ``j`` of ``n`` covers window voxels ``[j N/n, (j+1) N/n)``), as
:meth:`~napari_medattn.models.capture.AttentionMaps.on_input_grid` does, and resampled once
to the source grid: linearly for the attention weights, nearest for the region labels and
the kept tokens, 0 outside the window. Results have the source volume's shape and affine
exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from napari_medattn.errors import GeometryError, ModelError
from napari_medattn.explain.grid import OVERLAP, ModelGrid
from napari_medattn.explain.query_rows import TOKEN_BLOCKS, BlockState, answer, prepare
from napari_medattn.inference.devices import resolve_device
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_to_grid
from napari_medattn.inference.sliding_window import (
    CancelCheck,
    ProgressCallback,
    check_cancel,
    window_starts,
)
from napari_medattn.io.volume import Volume, mm_to_index
from napari_medattn.models import capture
from napari_medattn.models.blocks.dssa import DualSparseSelectionAttention
from napari_medattn.models.blocks.global_attention import MultiHeadSelfAttention
from napari_medattn.models.card import ModelCard

__all__ = ["TOKEN_BLOCKS", "QueryExplorer", "QueryResult", "token_blocks"]



def token_blocks(model: nn.Module) -> list[str]:
    """Module paths of the blocks of ``model`` a voxel can be queried in, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, TOKEN_BLOCKS)]


@dataclasses.dataclass
class QueryResult:
    """What a clicked voxel attends to in one block, on the source image's geometry.

    Attributes
    ----------
    attention : Volume
        float32 attention weights of the voxel's token (mean over heads, or one head),
        linearly resampled from the block's token grid; ``meta["name"]`` says what it is.
    regions : Volume or None
        DSSA blocks that route (keep fewer regions than there are): the key regions the
        query's region chose, as labels 1..k (1 = highest affinity; uint8, uint16 past
        255), 0 elsewhere. None for other blocks.
    kept_tokens : Volume or None
        DSSA only: uint8, 1 where a key the voxel's token kept (in the chosen head, or in
        any head) lies, 0 elsewhere.
    """

    attention: Volume
    regions: Volume | None = None
    kept_tokens: Volume | None = None


class QueryExplorer:
    """Token attention of a model for any clicked voxel, prepared once per image and model.

    Parameters
    ----------
    volume : Volume
        The source image: 3D, or 4D with ``card.in_channels`` channels first.
    model : nn.Module
        The network; it is put in eval mode.
    card : ModelCard
        Its card: orientation, spacing (mm) and normalisation are applied as in
        :func:`napari_medattn.inference.segment`.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...; see
        :func:`~napari_medattn.inference.devices.resolve_device`. The cached projections
        stay on it, so clicks run there too.
    progress : callable, optional
        ``progress(done, total)`` after each of the preparation's steps.
    cancel : callable, optional
        Polled between steps; raises :class:`~napari_medattn.errors.Cancelled`.

    Raises
    ------
    ModelError
        The model has no token-attention block.
    DimensionError
        The image's channels do not match the card's, or the model is not 3D.

    Notes
    -----
    Preparation runs one forward pass per window (as many as a segmentation without TTA)
    and keeps, per window, the attention blocks' Q/K (and window masks, DSSA routing):
    for the built-in DSSA-UNet about 2 MB per 64^3 window.
    """

    def __init__(self, volume: Volume, model: nn.Module, card: ModelCard, *,
                 device: str = "auto", progress: ProgressCallback | None = None,
                 cancel: CancelCheck | None = None) -> None:
        self.volume = volume
        self.model = model.eval()
        self.card = card
        names = token_blocks(model)
        if not names:
            raise ModelError(f"Model {card.name!r} has no token-attention block (window, "
                             f"global or DSSA attention) to query.")
        # The card's preprocessing, as inference.segment does it (no body crop).
        self._grid = ModelGrid.from_volume(volume, card)
        check_cancel(cancel)
        #: Spatial shape of the windows the model runs on (the card's patch size).
        self.input_shape: tuple[int, ...] = tuple(int(p) for p in card.patch_size)
        # Windows as the segmentation engine places them (padded at the end when the grid
        # is smaller than a window), so a click sees what the model computes when it
        # segments: attention and routing depend on the window the tokens come from.
        image = self._grid.image
        short = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(self.input_shape, image.shape[1:])]
        image = np.pad(image, short)
        starts = window_starts(image.shape[1:], self.input_shape, OVERLAP)
        report: Callable[[int], None] = (
            (lambda done: progress(done, len(starts))) if progress else (lambda done: None))

        self.device = resolve_device(device).device
        self.model.to(self.device)
        self._names = names
        #: ``(start, blocks)`` per window, start on the model grid (voxels).
        self._windows: list[tuple[tuple[int, ...], dict[str, BlockState]]] = []
        for done, start in enumerate(starts, start=1):
            window = image[(slice(None), *(slice(s, s + p) for s, p in
                                          zip(start, self.input_shape)))]
            x = torch.from_numpy(np.ascontiguousarray(window))[None].to(self.device)
            self._windows.append((start, self._run(x, names)))
            report(done)
            check_cancel(cancel)

    # -- preparation ------------------------------------------------------------------
    def _run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, BlockState]:
        """One forward pass keeping each block's grid, QKV output and (DSSA) routing."""
        modules = dict(self.model.named_modules())
        blocks = {name: BlockState(modules[name], ()) for name in names}
        handles = []
        for name in names:
            block = blocks[name]

            def keep_grid(_module, args, block=block):
                block.grid = tuple(args[0].shape[2:])

            def keep_qkv(_module, _args, output, block=block):
                block.qkv = output.detach()

            module = block.module
            if isinstance(module, MultiHeadSelfAttention):
                # forward_tokens is also called directly (UNETR), with the grid as argument.
                def keep_tokens_grid(_module, args, kwargs, block=block):
                    grid = kwargs.get("grid", args[1] if len(args) > 1 else None)
                    block.grid = tuple(int(n) for n in grid)
                handles.append(_wrap_forward_tokens(module, keep_tokens_grid))
            else:
                handles.append(module.register_forward_pre_hook(keep_grid))
            handles.append(module.qkv.register_forward_hook(keep_qkv))
        try:
            with torch.no_grad(), capture.capture_attention(self.model) as maps:
                self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        for name, block in blocks.items():
            if block.qkv is None:
                raise ModelError(f"Block {name} of model {self.card.name!r} did not run in the "
                                 f"forward pass, so it cannot be queried.")
            if block.qkv.shape[0] != 1:
                raise ModelError(f"Block {name} ran more than once in one forward pass; "
                                 f"querying shared blocks is not supported.")
            if isinstance(block.module, DualSparseSelectionAttention):
                block.route = maps[f"{name}.regions"].value[0].to(x.device)
            block.cache = prepare(block)
            block.qkv = None  # the cache holds what is needed, in its own layout
        return blocks

    # -- queries ----------------------------------------------------------------------
    def blocks(self) -> list[str]:
        """Module paths of the blocks a voxel can be queried in, in forward order."""
        return list(self._names)

    def heads(self, block: str) -> int:
        """Number of attention heads of ``block``."""
        return int(self._block(block).module.num_heads)

    def is_routing(self, block: str) -> bool:
        """Whether ``block`` routes (DSSA), so queries also return regions and kept tokens."""
        return isinstance(self._block(block).module, DualSparseSelectionAttention)

    def _block(self, block: str, window: int = 0) -> BlockState:
        try:
            return self._windows[window][1][block]
        except KeyError:
            raise ModelError(f"{block!r} is not a token-attention block of model "
                             f"{self.card.name!r}; choose one of {', '.join(self._names)}."
                             ) from None

    def window_of(self, voxel: Sequence[int]) -> int:
        """The window answering a query at a model-grid voxel: of those holding it, the one
        whose centre is nearest (the voxel is then furthest from the window's borders)."""
        voxel = np.asarray(voxel, dtype=np.float64)
        patch = np.asarray(self.input_shape)
        best, best_distance = 0, np.inf
        for i, (start, _blocks) in enumerate(self._windows):
            start = np.asarray(start)
            if np.all(voxel >= start) and np.all(voxel < start + patch):
                distance = float(np.sum((voxel - (start + (patch - 1) / 2)) ** 2))
                if distance < best_distance:
                    best, best_distance = i, distance
        return best

    def model_voxel(self, point_mm: Sequence[float]) -> tuple[int, int, int]:
        """The voxel of the model grid holding a patient point.

        Parameters
        ----------
        point_mm : sequence of 3 float
            LPS mm (x, y, z), the space ``Volume.affine`` maps to.

        Returns
        -------
        tuple of int
            Index on the model grid (card orientation and spacing).

        Raises
        ------
        GeometryError
            The point lies outside the source image.
        """
        point = np.asarray(point_mm, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise GeometryError(f"A query point is three finite coordinates in mm, not "
                                f"{np.asarray(point_mm).tolist()}.")
        source = self.volume.mm_to_index(point)
        shape = np.asarray(self.volume.spatial_shape)
        if np.any(source < -0.5) or np.any(source > shape - 0.5):
            raise GeometryError(f"The point ({', '.join(f'{p:.1f}' for p in point)}) mm lies "
                                f"outside the image {self.volume.name}.")
        index = np.rint(mm_to_index(self._grid.affine, point)).astype(int)
        index = np.clip(index, 0, np.asarray(self._grid.shape) - 1)
        return tuple(int(i) for i in index)

    def maps(self, point_mm: Sequence[float], block: str) -> capture.AttentionMaps:
        """The query maps of ``block`` on its own token grid, as the capture API records them.

        The same names and layouts as a forward pass of the window :meth:`window_of` picks
        inside ``capture_attention(model, query=<voxel in that window>)`` records for this
        block: ``<block>.attention`` (token kind, ``(1, H, 1, *grid)``) and, for DSSA,
        ``<block>.tokens`` (routing, ``(1, H, n_keep)`` grid indices, best first). The
        attention map's meta also holds ``"token"`` (the query's row-major token index)
        and ``"window"`` (the window's start on the model grid, voxels).
        """
        self._block(block)  # an unknown block is refused before the point is looked at
        voxel = self.model_voxel(point_mm)
        index = self.window_of(voxel)
        start, blocks = self._windows[index]
        state = blocks[block]
        local = tuple(v - s for v, s in zip(voxel, start))
        with torch.no_grad(), capture.capture_attention(self.model, query=local) as maps:
            maps.input_shape = self.input_shape  # the block runs alone: set what the model would
            token = capture.query_tokens(state.grid)
            answer(state, token)
        maps[f"{block}.attention"].meta.update(token=token, window=start)
        return maps

    def query(self, point_mm: Sequence[float], block: str,
              head: int | None = None) -> QueryResult:
        """What the voxel at ``point_mm`` attends to in ``block``.

        Parameters
        ----------
        point_mm : sequence of 3 float
            The clicked point in LPS mm (array-axis order as ``Volume.affine`` maps indices).
        block : str
            One of :meth:`blocks`.
        head : int, optional
            One head (0-based); default the mean over heads (kept tokens: in any head).

        Returns
        -------
        QueryResult
            On the source geometry (same shape and affine as the input volume).

        Raises
        ------
        GeometryError
            The point lies outside the image.
        ModelError
            ``block`` is not a queryable block, or ``head`` is out of range.
        """
        state = self._block(block)
        heads = state.module.num_heads
        if head is not None and not 0 <= head < heads:
            raise ModelError(f"Block {block} has {heads} heads (0 to {heads - 1}), not {head}.")
        maps = self.maps(point_mm, block)
        token = maps[f"{block}.attention"].meta["token"]
        start = maps[f"{block}.attention"].meta["window"]
        state = self._windows[self.window_of(self.model_voxel(point_mm))][1][block]
        weights = maps[f"{block}.attention"].value[0, :, 0].float()  # (H, *grid)
        weights = weights.mean(0) if head is None else weights[head]
        which = "mean of heads" if head is None else f"head {head}"
        label = f"{self.volume.name} {self.card.name} query {block} ({which})"
        attention = self._to_source(weights.numpy(), start, state.grid, LINEAR,
                                    f"{label} attention")
        if state.route is not None:
            kept = maps[f"{block}.tokens"].value[0]  # (H, n_keep) grid indices, -1 = padding
            kept = kept.flatten() if head is None else kept[head]
            mask = np.zeros(math.prod(state.grid), dtype=np.uint8)
            mask[kept[kept >= 0].numpy()] = 1
            kept_tokens = self._to_source(mask.reshape(state.grid), start, state.grid,
                                          NEAREST, f"{label} kept tokens")
            regions = None
            if state.route.shape[1] < state.route.shape[0]:
                # A block that keeps every region (the last DSSA stage) does not route.
                regions = self._to_source(self._region_labels(state, token), start,
                                          state.grid, NEAREST, f"{label} routed regions")
            return QueryResult(attention, regions, kept_tokens)
        return QueryResult(attention)

    def _region_labels(self, state: BlockState, token: int) -> np.ndarray:
        """uint8 labels on the block grid: rank 1..k of each region the query region chose."""
        module = state.module
        grid = state.grid
        n_win = module.n_win
        region = tuple(math.ceil(n / n_win) for n in grid)
        coords = np.unravel_index(token, grid)
        query_region = int(np.ravel_multi_index(tuple(c // r for c, r in zip(coords, region)),
                                                (n_win,) * len(grid)))
        chosen = state.route[query_region].cpu().numpy()
        # Region of every token, row-major on the region grid.
        axes = np.meshgrid(*(np.arange(n) // r for n, r in zip(grid, region)), indexing="ij")
        token_region = np.ravel_multi_index(tuple(axes), (n_win,) * len(grid))
        dtype = np.uint8 if len(chosen) < 256 else np.uint16
        rank = np.zeros(n_win ** len(grid), dtype=dtype)
        rank[chosen] = np.arange(1, len(chosen) + 1)
        return rank[token_region]

    def _to_source(self, values: np.ndarray, start: Sequence[int], grid: Sequence[int],
                   order: int, name: str) -> Volume:
        """A map on a block's token grid, placed cell-centred on its window of the model
        grid and resampled once onto the source grid (then turned back to the source axis
        order); 0 outside the window."""
        ratio = np.asarray(self.input_shape, dtype=np.float64) / np.asarray(grid)
        cells = np.eye(4)
        cells[:3, :3] = np.diag(ratio)
        # Token centre j -> model-grid index start + (j + 1/2) r - 1/2.
        cells[:3, 3] = np.asarray(start) + (ratio - 1.0) / 2.0
        work = self._grid.work
        on_tokens = Volume(np.ascontiguousarray(values), self._grid.affine @ cells, "OT")
        # Border tokens extend to the window's edge (as on_input_grid's interpolation does)...
        data = resample_to_grid(on_tokens, work.affine, work.spatial_shape, order=order).data
        # ...and not beyond: the model grid shares the work grid's axes (spacing_grid keeps
        # directions), so the window covers a box of work voxels.
        mapping = np.linalg.solve(self._grid.affine, work.affine)  # work -> model index
        for axis, (first, size) in enumerate(zip(start, self.input_shape)):
            model = mapping[axis, axis] * np.arange(data.shape[axis]) + mapping[axis, 3]
            outside = (model < first - 0.5) | (model >= first + size - 0.5)
            data[(slice(None),) * axis + (outside,)] = 0
        if self._grid.turned is not None:
            data = self._grid.turned.undo(data)
        return Volume(np.ascontiguousarray(data), self.volume.affine.copy(), "OT",
                      {**self.volume.meta, "name": name})


def _wrap_forward_tokens(module: MultiHeadSelfAttention, hook: Callable) -> _Restore:
    """Call ``hook(module, args, kwargs)`` before every ``module.forward_tokens`` call."""
    original = module.forward_tokens

    def forward_tokens(*args, **kwargs):
        hook(module, args, kwargs)
        return original(*args, **kwargs)

    module.forward_tokens = forward_tokens
    return _Restore(module)


class _Restore:
    """Handle that removes the instance-level ``forward_tokens`` wrapper."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def remove(self) -> None:
        self._module.__dict__.pop("forward_tokens", None)
