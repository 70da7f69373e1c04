"""Inputs of a multimodal (missing-modality) model: a mapping modality -> Volume, any subset,
brought onto one reference grid through the exact affines.

>>> inputs = multimodal_inputs({"t1": t1, "flair": flair}, ("t1", "t1ce", "t2", "flair"))
>>> logits = net(torch.from_numpy(inputs.array)[None], torch.from_numpy(inputs.present))

Each modality goes onto the reference grid through
:func:`~napari_medattn.fusion.align.overlay_on_grid` (the one resampler, or a registration
transform when one is given), so the pipeline has no resampling of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_medattn.errors import DimensionError, GeometryError, ModelError
from napari_medattn.fusion.align import overlap_fraction, overlay_on_grid
from napari_medattn.io.volume import Volume, require_3d

__all__ = ["MultimodalInput", "multimodal_inputs"]


@dataclasses.dataclass
class MultimodalInput:
    """Modalities on one grid, in a model's channel order.

    Attributes
    ----------
    array : (M, a0, a1, a2) float32 ndarray
        One channel per model modality; a missing one is all zeros.
    present : (M,) bool ndarray
        Which channels hold a scan.
    modalities : tuple of str
        The model's modality names, in channel order.
    grid : Volume
        The reference scan: its affine (index -> LPS mm) and shape are the grid's, and its
        metadata is what outputs on this grid are written back with.
    """

    array: np.ndarray
    present: np.ndarray
    modalities: tuple[str, ...]
    grid: Volume


def _normalise_names(volumes: Mapping[str, Volume], modalities: Sequence[str]
                     ) -> dict[str, Volume]:
    known = tuple(m.lower() for m in modalities)
    if not volumes:
        raise DimensionError(f"No modality was given; give at least one of "
                             f"{', '.join(known)}.")
    named: dict[str, Volume] = {}
    for name, volume in volumes.items():
        key = str(name).lower()
        if key not in known:
            raise ModelError(f"The model does not know the modality {name!r}; it takes "
                             f"{', '.join(known)}.")
        if key in named:
            raise DimensionError(f"The modality {key!r} was given twice.")
        named[key] = volume
    return named


def _same_scan(a: Volume, b: Volume) -> bool:
    source_a, source_b = a.meta.get("source"), b.meta.get("source")
    if source_a is not None and source_a == source_b:
        return True
    if a.data is b.data:
        return True
    return (a.data.shape == b.data.shape and np.allclose(a.affine, b.affine)
            and np.array_equal(np.asarray(a.data), np.asarray(b.data)))


def multimodal_inputs(volumes: Mapping[str, Volume], modalities: Sequence[str], *,
                      reference: str | None = None,
                      transforms: Mapping[str, Any] | None = None,
                      min_overlap: float = 0.5) -> MultimodalInput:
    """Bring the given modalities onto one grid in the model's channel order.

    Parameters
    ----------
    volumes : mapping of str to Volume
        Scans by modality name (case-insensitive), any non-empty subset of ``modalities``;
        each a 3D volume (or one frame).
    modalities : sequence of str
        The model's modalities in channel order (``card.config["modalities"]``).
    reference : str, optional
        The modality whose grid (exact affine and shape) the others are resampled onto;
        default the first given one in ``modalities`` order.
    transforms : mapping of str to transform, optional
        Per modality, a registration result mapping reference LPS mm to that scan's LPS mm
        (4x4 matrix, LinearTransform or displacement field); without one, the scans'
        affines are taken to share one patient space.
    min_overlap : float
        Smallest fraction of the reference's field of view each scan must cover.

    Returns
    -------
    MultimodalInput
        Intensities resampled trilinearly (float32, the scans' own units; 0 outside a
        scan's field of view), the presence mask and the reference grid.

    Raises
    ------
    DimensionError
        No modality given, one given twice, the same scan given for two modalities, or a
        scan with several frames or only two dimensions.
    ModelError
        A modality name the model does not know.
    GeometryError
        A scan covers less than ``min_overlap`` of the reference in patient space.
    """
    order = tuple(m.lower() for m in modalities)
    named = _normalise_names(volumes, order)
    named = {key: require_3d(volume) for key, volume in named.items()}
    keys = list(named)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            if _same_scan(named[first], named[second]):
                raise DimensionError(f"The same scan was given as {first} and {second}.")
    if reference is None:
        reference = next(m for m in order if m in named)
    reference = reference.lower()
    if reference not in named:
        raise DimensionError(f"The reference modality {reference!r} was not given.")
    grid = named[reference]
    transforms = {str(k).lower(): v for k, v in (transforms or {}).items()}
    array = np.zeros((len(order), *grid.spatial_shape), dtype=np.float32)
    present = np.zeros(len(order), dtype=bool)
    for channel, name in enumerate(order):
        if name not in named:
            continue
        volume, transform = named[name], transforms.get(name)
        if name == reference and transform is None:
            array[channel] = np.asarray(volume.data, dtype=np.float32)
        else:
            covered = overlap_fraction(grid, volume, transform)
            if covered < min_overlap:
                raise GeometryError(
                    f"The {name} scan covers {covered:.0%} of the {reference} scan in patient "
                    f"space (at least {min_overlap:.0%} needed); check the files or give a "
                    f"registration transform.")
            moved = overlay_on_grid(volume, grid, transform, order=1)
            array[channel] = np.asarray(moved.data, dtype=np.float32)
        present[channel] = True
    return MultimodalInput(array=array, present=present, modalities=order, grid=grid)
