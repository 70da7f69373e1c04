"""Pre- and postprocessing as a model card asks: orientation, model grid, intensity, body
crop, cleanup.

Every function is plain: arrays or :class:`~napari_medattn.io.Volume` in, the same out,
no hidden state. Geometry changes return the exact new affine (see also
:mod:`napari_medattn.inference.resample`, the package's one resampler).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medattn.errors import DimensionError, GeometryError, ModelError
from napari_medattn.inference.resample import LINEAR, resample_to_grid, spacing_grid
from napari_medattn.io.volume import (
    NEGATIVE_LETTERS,
    POSITIVE_LETTERS,
    WORLD_TO_LPS,
    Volume,
    canonical_permutation,
    reorient_affine,
)
from napari_medattn.models.card import ModelCard, validate_normalization

# ---------------------------------------------------------------------------- orientation


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips that turned an array to a target orientation.

    ``perm[w]`` is the source axis that became axis ``w``; ``flips[a]`` says whether
    source axis ``a`` was reversed (before the permutation).
    """

    perm: tuple[int, ...]
    flips: tuple[bool, ...]

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Turn a source-ordered array (3D, or 4D frames first) to the target order (a view)."""
        lead = data.ndim - 3
        for axis, flip in enumerate(self.flips):
            if flip:
                data = np.flip(data, lead + axis)
        return data.transpose(tuple(range(lead)) + tuple(lead + p for p in self.perm))

    def undo(self, data: np.ndarray) -> np.ndarray:
        """Turn a target-ordered array back to the source order (a view)."""
        lead = data.ndim - 3
        inverse = np.argsort(self.perm)
        data = data.transpose(tuple(range(lead)) + tuple(lead + int(i) for i in inverse))
        for axis, flip in enumerate(self.flips):
            if flip:
                data = np.flip(data, lead + axis)
        return data


def reorient(volume: Volume, code: str) -> tuple[Volume, Reorientation]:
    """View ``volume`` with array axes increasing towards the letters of ``code``.

    Parameters
    ----------
    volume : Volume
        Any orientation (oblique volumes follow their nearest patient axes; the affine
        stays exact).
    code : str
        Three LPS-convention letters, one per output array axis, e.g. ``"RAS"``.

    Returns
    -------
    Volume
        A view of the data with the exact affine of the new order.
    Reorientation
        What was done, to :meth:`~Reorientation.undo` it on outputs.
    """
    code = code.upper()
    letters = []
    for letter in code:
        if letter in POSITIVE_LETTERS:
            letters.append((POSITIVE_LETTERS.index(letter), 1.0))
        elif letter in NEGATIVE_LETTERS:
            letters.append((NEGATIVE_LETTERS.index(letter), -1.0))
        else:
            raise GeometryError(f"Orientation {code!r} has an unknown letter {letter!r}.")
    if len(code) != 3 or len({axis for axis, _ in letters}) != 3:
        raise GeometryError(f"Orientation {code!r} must name each patient axis once.")
    # Which source axis lies along each patient axis: the same assignment as canonical().
    canonical, _ = canonical_permutation(volume.affine)
    source_of_lps = {WORLD_TO_LPS[w]: int(canonical[w]) for w in range(3)}
    direction = volume.direction
    perm = tuple(source_of_lps[axis] for axis, _ in letters)
    flips = [False, False, False]
    for (axis, sign), source in zip(letters, perm):
        flips[source] = bool(np.sign(direction[axis, source]) != sign)
    how = Reorientation(perm, tuple(flips))
    affine = reorient_affine(volume.affine, volume.spatial_shape, perm, flips)
    meta = dict(volume.meta)
    return Volume(how.apply(volume.data), affine, volume.modality, meta), how


# ----------------------------------------------------------------------------- model grid


@dataclasses.dataclass(frozen=True)
class CardGrid:
    """The grid a model card prescribes for a volume, and the way back to the volume's own.

    Segmentation (:func:`napari_medattn.inference.segment`) and the explanation maps
    (:mod:`napari_medattn.explain`) both go through it, so that a map lies exactly where
    the model's labels do.

    Attributes
    ----------
    source : Volume
        The volume as given.
    work : Volume
        ``source`` turned to the card's orientation (a view).
    turned : Reorientation or None
        The turn, undone on the way back.
    affine : (4, 4) ndarray
        Model grid index -> LPS mm.
    shape : tuple of int
        Model grid shape (voxels).
    """

    source: Volume
    work: Volume
    turned: Reorientation | None
    affine: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def for_volume(cls, volume: Volume, card: ModelCard) -> CardGrid:
        """Turn ``volume`` to ``card.orientation`` and place the card's spacing on it.

        Raises
        ------
        DimensionError
            The volume's channels (4D frames) differ from ``card.in_channels``.
        """
        channels = 1 if volume.data.ndim == 3 else volume.data.shape[0]
        if channels != card.in_channels:
            raise DimensionError(f"Model {card.name!r} needs {card.in_channels} input "
                                 f"channel(s); this image has {channels}.")
        if card.orientation:
            work, turned = reorient(volume, card.orientation)
        else:
            work, turned = volume, None
        affine, shape = work.affine, work.spatial_shape
        if card.spacing is not None and not np.allclose(work.spacing, card.spacing, rtol=1e-6,
                                                        atol=0):
            affine, shape = spacing_grid(work.affine, work.spatial_shape, card.spacing)
        return cls(volume, work, turned, affine, tuple(shape))

    @property
    def resampled(self) -> bool:
        """Whether the model grid differs from the turned volume's own."""
        return self.shape != self.work.spatial_shape or not np.array_equal(self.affine,
                                                                          self.work.affine)

    def intensities(self) -> np.ndarray:
        """The volume's intensities on the model grid (linear), in its own units; a view
        of the turned volume when no resampling is needed."""
        if not self.resampled:
            return np.asarray(self.work.data)
        return resample_to_grid(self.work, self.affine, self.shape, order=LINEAR).data

    def to_source(self, array: np.ndarray, order: int) -> np.ndarray:
        """An array on the model grid (3D, or channels first) back on the source grid and in
        its axis order (spline ``order``: 0 labels, 1 maps), C-contiguous."""
        if self.resampled:
            array = resample_to_grid(Volume(array, self.affine, self.source.modality),
                                     self.work.affine, self.work.spatial_shape,
                                     order=order).data
        if self.turned is not None:
            array = self.turned.undo(array)
        return np.ascontiguousarray(array)


# ------------------------------------------------------------------------------ intensity

def ct_window(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip CT values to the window [low, high] HU and scale it to [0, 1] (float32)."""
    data = np.asarray(data, dtype=np.float32)
    return (np.clip(data, low, high) - np.float32(low)) / np.float32(high - low)


def otsu_threshold(data: np.ndarray) -> float:
    """Otsu's threshold of ``data`` (its single value when constant), in its units."""
    from skimage.filters import threshold_otsu

    data = np.asarray(data)
    if data.min() == data.max():
        return float(data.min())
    return float(threshold_otsu(data))


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Voxels brighter than Otsu's threshold (the imaged body in MR); all when constant."""
    data = np.asarray(data)
    if data.min() == data.max():
        return np.ones(data.shape, dtype=bool)
    return data > otsu_threshold(data)


def robust_zscore(data: np.ndarray, mask: np.ndarray | None = None,
                  percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """MR normalisation: clip to foreground percentiles, then z-score by foreground stats.

    Parameters
    ----------
    data : ndarray
        Intensities in arbitrary scanner units.
    mask : ndarray of bool, optional
        Foreground (default: :func:`foreground_mask`).
    percentiles : pair of float
        Lower and upper percentile (0-100) of the foreground intensities to clip at.

    Returns
    -------
    ndarray of float32
        ``(clip(data) - mean) / std`` with mean and standard deviation of the clipped
        foreground, in units of foreground standard deviations (everywhere, background
        included).
    """
    data = np.asarray(data, dtype=np.float32)
    mask = foreground_mask(data) if mask is None else mask
    if not mask.any():
        raise DimensionError("The image has no foreground to normalise by.")
    low, high = np.percentile(data[mask], percentiles)
    clipped = np.clip(data, low, high)
    values = clipped[mask]
    mean, std = float(values.mean()), float(values.std())
    return ((clipped - mean) / max(std, 1e-8)).astype(np.float32)


def percentile_scale(data: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5),
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Scale the ``percentiles`` (0-100) of ``data`` (inside ``mask``) to [0, 1], clipped."""
    data = np.asarray(data, dtype=np.float32)
    values = data[mask] if mask is not None else data
    low, high = np.percentile(values, percentiles)
    if high <= low:
        return np.zeros_like(data)
    return ((np.clip(data, low, high) - low) / (high - low)).astype(np.float32)


def suv_scale(data: np.ndarray, suv_max: float) -> np.ndarray:
    """PET in SUV (g/mL): clip to [0, suv_max] and divide by ``suv_max`` (float32, [0, 1])."""
    data = np.asarray(data, dtype=np.float32)
    return np.clip(data, 0, suv_max) / np.float32(suv_max)


def normalize_intensity(data: np.ndarray, spec: Mapping[str, Any], *,
                        units: str | None = None) -> np.ndarray:
    """Normalise intensities as a card's ``normalization`` says.

    Schemes: ``none``; ``ct_window`` (``window`` = [low, high] HU, see :func:`ct_window`);
    ``zscore`` (MR, see :func:`robust_zscore`); ``percentile`` (see
    :func:`percentile_scale`); ``suv`` (PET in SUV, ``max`` in g/mL, see :func:`suv_scale`).

    Parameters
    ----------
    units : str, optional
        The volume's intensity units when known (``Volume.meta["units"]``); the ``suv``
        scheme refuses a PET that is not in SUV.
    """
    validate_normalization(spec)
    scheme = spec["scheme"]
    if scheme == "none":
        return np.asarray(data, dtype=np.float32)
    if scheme == "ct_window":
        return ct_window(data, *spec["window"])
    if scheme == "zscore":
        return robust_zscore(data, percentiles=spec.get("percentiles", (0.5, 99.5)))
    if scheme == "percentile":
        return percentile_scale(data, spec.get("percentiles", (0.5, 99.5)))
    if units is not None and units.upper() not in ("SUV", "G/ML", "SUVBW"):
        raise ModelError(f"The model expects PET in SUV, but this image is in {units}.")
    return suv_scale(data, spec["max"])


# ----------------------------------------------------------------------------- body crop


#: CT voxels above this (HU) are body: between air (-1000) and fat (-100).
CT_BODY_THRESHOLD_HU = -500.0
#: PET voxels above this fraction of the 99.5th percentile are body: air holds almost no
#: activity, while the body's background uptake is a few percent of the hottest voxels.
PET_BODY_FRACTION = 0.02


def body_threshold(data: np.ndarray, modality: str) -> float:
    """Intensity above which a voxel is body rather than air, in the data's units.

    CT: -500 HU. PET: 2 % of the 99.5th percentile. MR and others: Otsu's threshold,
    which splits the dark air from the body.
    """
    data = np.asarray(data)
    if modality == "CT":
        return CT_BODY_THRESHOLD_HU
    if modality == "PT":
        return float(PET_BODY_FRACTION * np.percentile(data, 99.5))
    return otsu_threshold(data)


def body_bounding_box(data: np.ndarray, threshold: float | None = None,
                      margin: int = 4) -> tuple[slice, ...]:
    """Bounding box of the largest bright connected region (the body), with a margin.

    Parameters
    ----------
    data : ndarray
        3D intensities.
    threshold : float, optional
        Body voxels are above it (e.g. -500 HU for CT); default Otsu's threshold.
    margin : int
        Voxels added on every side, clipped to the volume.

    Returns
    -------
    tuple of slice
        One per axis; the whole volume when nothing is above the threshold.
    """
    data = np.asarray(data)
    mask = data > (otsu_threshold(data) if threshold is None else threshold)
    labels, count = ndimage.label(mask)
    if count == 0:
        return tuple(slice(0, s) for s in data.shape)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    box = ndimage.find_objects((labels == int(np.argmax(sizes))).astype(np.uint8))[0]
    return tuple(slice(max(0, b.start - margin), min(s, b.stop + margin))
                 for b, s in zip(box, data.shape))


def crop(volume: Volume, box: Sequence[slice]) -> Volume:
    """The sub-volume ``box`` (one slice per spatial axis) with its exact affine."""
    starts = np.array([b.start or 0 for b in box], dtype=np.float64)
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ starts
    lead = (slice(None),) * (volume.data.ndim - 3)
    return Volume(volume.data[lead + tuple(box)], affine, volume.modality, dict(volume.meta))


def paste(part: np.ndarray, box: Sequence[slice], shape: Sequence[int],
          fill: float = 0) -> np.ndarray:
    """Put a cropped result back into an array of ``shape`` filled with ``fill``."""
    out = np.full(tuple(shape), fill, dtype=part.dtype)
    out[tuple(box)] = part
    return out


# ---------------------------------------------------------------------------- cleanup


def remove_small_components(labels: np.ndarray, min_volume_mm3: float,
                            spacing: Sequence[float]) -> np.ndarray:
    """Set to background the connected pieces of each class smaller than a volume.

    Parameters
    ----------
    labels : ndarray of int
        Label map (0 = background).
    min_volume_mm3 : float
        Pieces below this volume in mm^3 are removed.
    spacing : sequence of float
        Voxel size in mm per axis.

    Returns
    -------
    ndarray
        A copy of ``labels`` (same dtype); connectivity is 26-neighbour in 3D.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DimensionError(f"A label map must hold integers, not {labels.dtype}.")
    min_voxels = min_volume_mm3 / float(np.prod(spacing))
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    out = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        pieces, count = ndimage.label(labels == value, structure)
        sizes = np.bincount(pieces.ravel())
        small = np.nonzero(sizes < min_voxels)[0]
        small = small[small != 0]
        if small.size:
            out[np.isin(pieces, small)] = 0
    return out
