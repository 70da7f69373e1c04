"""Config bookkeeping and argument checks shared by the nets.

Every net stores the arguments it was built with as a JSON-ready dict (tuples become lists,
nothing else changes), so ``create(net.architecture, **json.loads(json.dumps(net.config)))``
rebuilds the same architecture. Bad arguments raise :class:`ModelError` with one sentence.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from napari_medattn.errors import ModelError


def jsonable(value: Any) -> Any:
    """``value`` with tuples turned into lists (recursively), as ``json`` would return it."""
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


class ConfiguredNet:
    """Mixin: ``config`` is a copy of the JSON-ready arguments a net was built with."""

    architecture: str = ""
    _config: dict

    def _store_config(self, **arguments: Any) -> None:
        self._config = jsonable(arguments)

    @property
    def config(self) -> dict:
        """The constructor arguments as plain JSON types (a copy; editing it changes nothing)."""
        return copy.deepcopy(self._config)


def check_choice(value: Any, choices: Iterable[Any], what: str) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ModelError`."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ModelError(f"Unknown {what} {value!r}; valid choices are {listed}.")
    return value


def check_spatial_dims(spatial_dims: Any) -> int:
    """``spatial_dims`` as an int if it is 2 or 3, else :class:`ModelError`."""
    return int(check_choice(spatial_dims, (2, 3), "spatial_dims"))


def positive_int(value: Any, what: str) -> int:
    """``value`` if it is a positive int (not a bool), else :class:`ModelError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, not {value!r}.")
    return value


def positive_ints(values: Any, what: str, length: int | None = None,
                  min_length: int = 1) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints, optionally of a fixed ``length``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ModelError(f"{what} must be a list of positive integers, not {values!r}.")
    out = tuple(positive_int(v, what) for v in values)
    if length is not None and len(out) != length:
        raise ModelError(f"{what} needs {length} entries, not {len(out)}.")
    if len(out) < min_length:
        raise ModelError(f"{what} needs at least {min_length} entries, not {len(out)}.")
    return out


def positive_number(value: Any, what: str) -> float:
    """``value`` as a float if it is a positive number (not a bool), else ModelError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ModelError(f"{what} must be a positive number, not {value!r}.")
    return float(value)


def check_io(spatial_dims: Any, in_channels: Any, out_channels: Any) -> tuple[int, int, int]:
    """The three arguments every net starts with, checked: 2 or 3 spatial dimensions and
    positive channel counts."""
    return (check_spatial_dims(spatial_dims), positive_int(in_channels, "in_channels"),
            positive_int(out_channels, "out_channels"))


def unit_interval(value: Any, what: str, closed_right: bool = False) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] with ``closed_right``), else ModelError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{what} must be a number in [0, 1), not {value!r}.")
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        raise ModelError(f"{what} must be in [0, 1{']' if closed_right else ')'}, not {value!r}.")
    return float(value)


def stage_topk(topk: Any, n_stages: int, what: str = "topk") -> tuple[int | None, ...]:
    """Per-stage DSSA top-k: one positive int or None (all regions) per stage."""
    if isinstance(topk, (str, bytes)) or not isinstance(topk, Sequence) or len(topk) != n_stages:
        raise ModelError(f"{what} needs one entry per stage ({n_stages}), each a positive "
                         f"integer or null for full attention, not {topk!r}.")
    return tuple(None if k is None else positive_int(k, what) for k in topk)
