"""Attention capture: named attention maps out of any model, without changing its numbers.

Blocks report what they attend to through :func:`record`; nothing is recorded (and the
cost is one context-variable lookup) unless a :func:`capture_attention` context is open::

    with capture_attention(model, query=(40, 48, 48)) as maps:
        logits = model(x)
    maps["encoder.3.attn.alpha"].value       # a tensor on the block's grid
    maps.on_input_grid("encoder.3.attn.alpha")  # resampled to x's spatial size

Map kinds and the layout of ``AttentionMap.value`` (batch first, detached, on the CPU):

* ``spatial``  (B, H, *grid) -- a weight per position (H heads or 1), e.g. gate alpha.
* ``channel``  (B, C)        -- a weight per channel, e.g. SE excitation.
* ``token``    (B, H, Q, *grid) -- for Q requested query tokens, attention over the key grid.
  Computed only for the query given to :func:`capture_attention`, never as an N x N matrix.
* ``routing``  (B, ..., k) integer indices -- hard selections, e.g. the regions each DSSA
  query region kept (meta ``"grid"`` gives the grid the indices run over, row-major).

Blocks that can answer a query call :func:`query_tokens` with their own feature-grid
shape to learn which of their tokens the requested input voxel falls in.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MapKind(str, enum.Enum):
    SPATIAL = "spatial"
    CHANNEL = "channel"
    TOKEN = "token"
    ROUTING = "routing"


@dataclasses.dataclass
class AttentionMap:
    name: str
    kind: MapKind
    value: torch.Tensor
    meta: dict = dataclasses.field(default_factory=dict)


class AttentionMaps(Mapping[str, AttentionMap]):
    """The maps collected in one capture, by name (``<module path>.<quantity>``)."""

    def __init__(self) -> None:
        self._maps: dict[str, AttentionMap] = {}
        self.input_shape: tuple[int, ...] | None = None

    def __getitem__(self, name: str) -> AttentionMap:
        return self._maps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def of_kind(self, kind: MapKind | str) -> dict[str, AttentionMap]:
        kind = MapKind(kind)
        return {n: m for n, m in self._maps.items() if m.kind is kind}

    def on_input_grid(self, name: str, mode: str = "linear") -> torch.Tensor:
        """A spatial or token map resampled to the input's spatial size.

        ``mode`` is ``"linear"`` (bi/trilinear, for viewing) or ``"nearest"``. The map's
        grid is taken to cover the same field of view as the input (cell-centred).
        """
        amap = self._maps[name]
        if amap.kind not in (MapKind.SPATIAL, MapKind.TOKEN):
            raise ValueError(f"{name} is a {amap.kind.value} map and has no spatial grid.")
        if self.input_shape is None:
            raise ValueError("The input size is unknown: the model was not run in the capture.")
        value = amap.value.float()
        grid = value.shape[-len(self.input_shape):]
        lead = value.shape[: -len(self.input_shape)]
        flat = value.reshape(1, -1, *grid)
        if mode == "linear":
            interp = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(grid)]
            out = F.interpolate(flat, size=self.input_shape, mode=interp, align_corners=False)
        else:
            out = F.interpolate(flat, size=self.input_shape, mode="nearest")
        return out.reshape(*lead, *self.input_shape)


@dataclasses.dataclass
class _Session:
    maps: AttentionMaps
    names: dict[int, str]
    query: tuple[int, ...] | None


_ACTIVE: contextvars.ContextVar[_Session | None] = contextvars.ContextVar(
    "napari_medattn_capture", default=None
)


def active() -> bool:
    """Whether a capture is open; blocks test this before computing anything for capture."""
    return _ACTIVE.get() is not None


def record(module: nn.Module, quantity: str, value: torch.Tensor, kind: MapKind | str,
           **meta) -> None:
    """Store ``value`` under ``<module path>.<quantity>`` if a capture is open.

    The value is detached and copied to the CPU, so the forward pass is untouched. A block
    called twice in one forward pass (weight sharing) gets ``#1``, ``#2``... suffixes.
    """
    session = _ACTIVE.get()
    if session is None:
        return
    base = session.names.get(id(module), type(module).__name__)
    name = f"{base}.{quantity}" if base else quantity
    if name in session.maps._maps:
        n = 1
        while f"{name}#{n}" in session.maps._maps:
            n += 1
        name = f"{name}#{n}"
    session.maps._maps[name] = AttentionMap(
        name=name, kind=MapKind(kind), value=value.detach().to("cpu", copy=True), meta=meta
    )


def query_tokens(grid: Sequence[int]) -> int | None:
    """Row-major index, on a block's feature ``grid``, of the token holding the query voxel.

    Returns None when no query was given or the input size is not known yet.
    """
    session = _ACTIVE.get()
    if session is None or session.query is None or session.maps.input_shape is None:
        return None
    shape_in = session.maps.input_shape
    if len(grid) != len(shape_in):
        return None
    index = 0
    for q, n_in, n_feat in zip(session.query, shape_in, grid):
        cell = min(int(q * n_feat // n_in), n_feat - 1)
        index = index * n_feat + cell
    return index


@contextlib.contextmanager
def capture_attention(model: nn.Module, query: Sequence[int] | None = None):
    """Collect the attention maps of ``model``'s forward passes inside the block.

    Parameters
    ----------
    model : nn.Module
        Any model; blocks of this package report their maps, other modules are ignored.
    query : sequence of int, optional
        A voxel of the input (array index, spatial axes only). Blocks with token
        attention then record what that voxel's token attends to.

    Yields
    ------
    AttentionMaps
        Filled as forward passes run; the model's outputs are bitwise unchanged.
    """
    maps = AttentionMaps()
    names = {id(m): n for n, m in model.named_modules()}

    def note_input(_module, args, kwargs=None):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors and kwargs:
            tensors = [a for a in kwargs.values() if isinstance(a, torch.Tensor)]
        if tensors and maps.input_shape is None:
            maps.input_shape = tuple(tensors[0].shape[2:])

    handle = model.register_forward_pre_hook(note_input, with_kwargs=True)
    token = _ACTIVE.set(_Session(maps=maps, names=names,
                                 query=tuple(int(q) for q in query) if query is not None else None))
    try:
        yield maps
    finally:
        _ACTIVE.reset(token)
        handle.remove()
