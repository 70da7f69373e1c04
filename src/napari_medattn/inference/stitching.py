"""Blending buffers of the sliding-window engine: a slab of weighted sums, finalised
plane range by plane range into the outputs (see :mod:`.sliding_window` for the method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_medattn.inference.memory import FINALISE_CHUNK_FLOATS
from napari_medattn.inference.tta import normalised_entropy


class OutputMaps:
    """Final results on the unpadded grid, filled plane range by plane range."""

    def __init__(self, shape, pad_before, keep, uncertainty, attention_maps):
        self.shape = tuple(shape)
        self.pad_before = pad_before
        self.keep = keep
        self.uncertainty_kind = uncertainty
        self.labels: np.ndarray | None = None
        self.probabilities: dict[int, np.ndarray] = {}
        self.uncertainty = np.zeros(self.shape, np.float32) if uncertainty else None
        self.attention = {name: np.zeros(self.shape, np.float32) for name in attention_maps}
        self.num_classes: int | None = None

    def scalar_targets(self) -> dict[str, np.ndarray]:
        """Outputs that are a weighted average of one map per window, by buffer key."""
        targets = {f"attention:{name}": array for name, array in self.attention.items()}
        if self.uncertainty_kind == "variance":
            targets["variance"] = self.uncertainty
        return targets

    def allocate(self, num_classes: int | None) -> None:
        dtype = np.uint8 if (num_classes or 1) <= 256 else np.uint16
        self.labels = np.zeros(self.shape, dtype)
        keep = range(num_classes or 1) if self.keep == "all" else self.keep
        self.probabilities = {int(c): np.zeros(self.shape, np.float32) for c in keep}

    def set_classes(self, num_classes: int) -> None:
        """Size the outputs for ``num_classes``; planes finalised before the number was
        known came from skipped windows only, where every class but 0 has probability 0."""
        self.num_classes = num_classes
        if self.labels is None:
            self.allocate(num_classes)
            return
        if num_classes > 256 and self.labels.dtype == np.uint8:
            self.labels = self.labels.astype(np.uint16)
        if self.keep == "all":
            for c in range(num_classes):
                self.probabilities.setdefault(c, np.zeros(self.shape, np.float32))

    def region(self, start: int, stop: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Slices of the buffer planes [start, stop) (padded coordinates) and of the output."""
        lo = max(start, self.pad_before[0])
        hi = min(stop, self.pad_before[0] + self.shape[0])
        out = [slice(lo - self.pad_before[0], hi - self.pad_before[0])]
        buf = [slice(lo - start, hi - start)]
        for size, before in zip(self.shape[1:], self.pad_before[1:]):
            out.append(slice(0, size))
            buf.append(slice(before, before + size))
        return tuple(buf), tuple(out)


class SlabAccumulator:
    """Weighted sums of the planes [lo, hi) along axis 0 that are not final yet.

    The buffers have a fixed capacity of planes allocated once; plane ``lo`` is always at
    buffer offset 0. Finalising moves the remaining planes to the front in place, so the
    peak memory is the capacity itself (no reallocation, no second copy).
    """

    def __init__(self, rest_shape, capacity: int, device, outputs: OutputMaps):
        self.rest = tuple(rest_shape)
        self.capacity = capacity
        self.device = device
        self.out = outputs
        self.lo = 0
        self.hi = 0
        self.classes: torch.Tensor | None = None  # (C, capacity, *rest)
        self.weight = torch.zeros((capacity, *self.rest), device=device)
        self.background = torch.zeros((capacity, *self.rest), device=device)
        # Weighted sums of per-window scalar maps (TTA variance, attention maps).
        self.scalars = {key: torch.zeros((capacity, *self.rest), device=device)
                        for key in outputs.scalar_targets()}

    def _planes(self) -> list[torch.Tensor]:
        """Every buffer with planes on its first axis (the class buffer is moved to it)."""
        buffers = [self.weight, self.background, *self.scalars.values()]
        if self.classes is not None:
            buffers.append(self.classes.transpose(0, 1))
        return buffers

    def fits(self, hi: int) -> bool:
        return hi - self.lo <= self.capacity

    def extend_to(self, hi: int) -> None:
        if hi <= self.hi:
            return
        # The engine flushes its batch before a window would overflow the slab.
        assert self.fits(hi), "slab capacity exceeded"
        self.hi = hi

    def ensure_classes(self, num_classes: int) -> None:
        if self.classes is None:
            self.classes = torch.zeros((num_classes, self.capacity, *self.rest),
                                       device=self.device)
            self.out.set_classes(num_classes)

    def _window(self, start: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
        return (slice(start[0] - self.lo, start[0] - self.lo + patch[0]),
                *(slice(s, s + p) for s, p in zip(start[1:], patch[1:])))

    def add(self, start, weighted_probs, weight, weighted_scalars: dict) -> None:
        index = self._window(start, weight.shape)
        self.classes[(slice(None), *index)] += weighted_probs
        self.weight[index] += weight
        for key, value in weighted_scalars.items():
            self.scalars[key][index] += value

    def add_background(self, start, weight) -> None:
        # Kept apart from the predicted windows' weights, so every buffer receives its
        # contributions in window order however batches are cut (exact streaming).
        self.background[self._window(start, weight.shape)] += weight

    def finalise(self, upto: int) -> None:
        """Write planes [lo, upto) to the outputs and drop them from the buffer."""
        upto = min(upto, self.hi)
        if upto <= self.lo:
            return
        if self.out.labels is None:
            self.out.allocate(None)
        num_classes = self.classes.shape[0] if self.classes is not None else 1
        step = max(1, FINALISE_CHUNK_FLOATS // max(1, num_classes * math.prod(self.rest)))
        for a in range(self.lo, upto, step):
            b = min(a + step, upto)
            self._finalise_chunk(a, b)
        drop = upto - self.lo
        keep = self.hi - upto
        for buffer in self._planes():
            # Forward plane copies never overwrite a plane not yet moved (drop >= 1).
            for k in range(keep):
                buffer[k].copy_(buffer[drop + k])
            buffer[keep:keep + drop].zero_()
        self.lo = upto

    def _finalise_chunk(self, a: int, b: int) -> None:
        buf, out = self.out.region(a, b)
        rel = slice(a - self.lo, b - self.lo)
        weight = self.weight[rel] + self.background[rel]
        if self.classes is not None:
            probs = self.classes[:, rel].clone()
            probs[0] += self.background[rel]
        else:
            # Every window so far was skipped: class 0 with certainty.
            probs = self.background[rel][None].clone()
        probs /= weight
        probs = probs[(slice(None), *buf)]
        self.out.labels[out] = argmax_classes(probs).cpu().numpy()
        for c, array in self.out.probabilities.items():
            if c < probs.shape[0]:
                array[out] = probs[c].cpu().numpy()
        for key, target in self.out.scalar_targets().items():
            target[out] = (self.scalars[key][rel] / weight)[buf].cpu().numpy()
        if self.out.uncertainty_kind == "entropy":
            self.out.uncertainty[out] = normalised_entropy(probs, dim=0).cpu().numpy()


def argmax_classes(probs: torch.Tensor) -> torch.Tensor:
    """Index of the largest class (the first on ties, like ``torch.argmax``) over axis 0.

    One elementwise pass per class: several times faster on the CPU than torch's argmax
    over the outermost, strided axis.
    """
    dtype = torch.uint8 if probs.shape[0] <= 256 else torch.int32
    best = probs[0].clone()
    index = torch.zeros(probs.shape[1:], dtype=dtype, device=probs.device)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        index[better] = c
        torch.maximum(best, probs[c], out=best)
    return index
