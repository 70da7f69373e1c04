"""Composition of two images already on one grid: windows, colour tables, blend, fade,
checkerboard and difference.

Plain arithmetic on numpy arrays (no napari), shared by the Fuse and Register widgets, the
``medattn fuse`` command and scripts. Inputs are arrays of the same shape on the same grid
(bring an overlay there first with :func:`napari_medattn.fusion.align.overlay_on_grid`);
values are in physical units (HU for CT, SUV for PET) until a window maps them to [0, 1].
Colours are float RGB in [0, 1] on a last axis of length 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap

from napari_medattn.display.window_level import CT_PRESETS, window_to_limits
from napari_medattn.errors import DimensionError

#: PET windows (SUV, g/ml): the ranges PET/CT readers use for FDG (0-5 for tumour contrast
#: in the body, 0-10 and 0-20 for brain and bladder-range uptake), as OHIF's PET/CT mode.
PET_PRESETS: dict[str, tuple[float, float]] = {
    "SUV 0-5": (0.0, 5.0),
    "SUV 0-10": (0.0, 10.0),
    "SUV 0-20": (0.0, 20.0),
}

#: Control points of the nuclear-medicine rainbow (black through blue, green, yellow and
#: red to white), the colour table PET viewers call "rainbow" or "PET": equal steps from
#: 0 to 1. Defined here once so the library, CLI montages and napari layers agree.
PET_RAINBOW_COLORS = (
    (0.0, 0.0, 0.0), (0.33, 0.0, 0.5), (0.0, 0.0, 1.0), (0.0, 0.8, 1.0), (0.0, 0.85, 0.0),
    (1.0, 1.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 1.0),
)
#: Colour tables offered for overlays, by the names napari also knows them by.
OVERLAY_COLORMAPS = ("hot", "inferno", "pet_rainbow", "gray")
#: Entries of the lookup tables built by :func:`colormap_lut`.
LUT_SIZE = 256

MODES = ("blend", "checkerboard", "difference")


def preset_window(name: str) -> tuple[float, float]:
    """Limits ``(low, high)`` in physical units of a named window.

    Parameters
    ----------
    name : str
        A PET preset (``"SUV 0-5"``, ``"SUV 0-10"``, ``"SUV 0-20"``, in SUV) or a CT preset
        of :data:`napari_medattn.display.window_level.CT_PRESETS` (``"brain"``, ``"bone"``,
        ..., in HU).

    Returns
    -------
    (low, high) : tuple of float
    """
    if name in PET_PRESETS:
        return PET_PRESETS[name]
    if name in CT_PRESETS:
        preset = CT_PRESETS[name]
        return window_to_limits(preset.window, preset.level)
    raise DimensionError(f"Unknown window {name!r}; choose one of "
                         f"{', '.join([*PET_PRESETS, *CT_PRESETS])}.")


def apply_window(data: Any, low: float, high: float) -> np.ndarray:
    """Map values in physical units to [0, 1] through the window ``[low, high]``.

    Parameters
    ----------
    data : array-like
        Values in the image's units (HU, SUV, ...).
    low, high : float
        Window limits in the same units; ``high > low``. Values at or below ``low`` give 0,
        at or above ``high`` give 1, linear in between. NaN stays NaN.

    Returns
    -------
    ndarray
        float32, same shape as ``data``.
    """
    low, high = float(low), float(high)
    if not high > low:
        raise DimensionError(f"A window needs high > low, got {low} to {high}.")
    values = np.asarray(data, dtype=np.float32)
    out = (values - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def colormap_lut(name: str, size: int = LUT_SIZE) -> np.ndarray:
    """A colour lookup table.

    Parameters
    ----------
    name : str
        One of :data:`OVERLAY_COLORMAPS`: ``"hot"`` and ``"inferno"`` (matplotlib's),
        ``"pet_rainbow"`` (:data:`PET_RAINBOW_COLORS`), ``"gray"``.
    size : int
        Number of entries (>= 2).

    Returns
    -------
    (size, 3) ndarray
        float32 RGB in [0, 1]; entry 0 is the colour of window value 0, the last of 1.
    """
    if size < 2:
        raise DimensionError(f"A lookup table needs at least 2 entries, got {size}.")
    if name == "pet_rainbow":
        cmap = LinearSegmentedColormap.from_list("pet_rainbow", PET_RAINBOW_COLORS, N=size)
    elif name in OVERLAY_COLORMAPS:
        cmap = colormaps[name].resampled(size)
    else:
        raise DimensionError(f"Unknown colormap {name!r}; choose one of "
                             f"{', '.join(OVERLAY_COLORMAPS)}.")
    return cmap(np.arange(size))[:, :3].astype(np.float32)


def overlay_lut_rgba(name: str, size: int = LUT_SIZE) -> np.ndarray:
    """The overlay colour table with opacity: transparent at window value 0, opaque above.

    The same rule as :func:`colour_overlay` (an overlay is drawn only where it is above
    the lower end of its window), for viewers that blend RGBA tables (napari).

    Returns
    -------
    (size, 4) ndarray
        float32 RGBA in [0, 1].
    """
    rgba = np.ones((size, 4), np.float32)
    rgba[:, :3] = colormap_lut(name, size)
    rgba[0, 3] = 0.0
    return rgba


def apply_lut(values: Any, lut: np.ndarray) -> np.ndarray:
    """Colour windowed values through a lookup table.

    Parameters
    ----------
    values : array-like
        Windowed values in [0, 1] (see :func:`apply_window`); NaN is drawn as entry 0.
    lut : (N, 3) ndarray
        RGB lookup table; value ``v`` takes entry ``round(v * (N - 1))``.

    Returns
    -------
    ndarray
        float32, shape ``values.shape + (3,)``.
    """
    lut = np.asarray(lut, dtype=np.float32)
    if lut.ndim != 2 or lut.shape[1] != 3 or lut.shape[0] < 2:
        raise DimensionError(f"A lookup table is an (N, 3) RGB array, got shape {lut.shape}.")
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    index = np.rint(np.clip(values, 0.0, 1.0) * (lut.shape[0] - 1)).astype(np.intp)
    return lut[index]


def gray_rgb(values: Any) -> np.ndarray:
    """Windowed values in [0, 1] as grey RGB (float32, last axis 3)."""
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)
    return np.repeat(values[..., None], 3, axis=-1)


def blend(base: Any, overlay: Any, alpha: Any) -> np.ndarray:
    """Alpha blend (also the fade between base and overlay): ``(1 - alpha) base + alpha overlay``.

    Parameters
    ----------
    base, overlay : array-like
        Same shape: windowed values or RGB colours (last axis 3).
    alpha : float or array-like
        Weight of the overlay in [0, 1]: a scalar (the fade: 0 shows only the base, 1 only
        the overlay) or an array broadcasting against ``base`` (per-pixel opacity, e.g. an
        overlay drawn only where it is above its window).

    Returns
    -------
    ndarray
        float32, the shape of ``base``.
    """
    base = np.asarray(base, dtype=np.float32)
    overlay = np.asarray(overlay, dtype=np.float32)
    if base.shape != overlay.shape:
        raise DimensionError(f"Base and overlay must be on one grid; got shapes {base.shape} "
                             f"and {overlay.shape}.")
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim and alpha.ndim == base.ndim - 1 and base.shape[-1] == 3:
        alpha = alpha[..., None]  # per-pixel opacity over RGB colours
    if np.any((alpha < 0) | (alpha > 1)):
        raise DimensionError("The overlay opacity must lie between 0 and 1.")
    return base + alpha * (overlay - base)


def colour_overlay(base_values: Any, overlay_values: Any, lut: np.ndarray,
                   opacity: float = 0.5) -> np.ndarray:
    """Fuse a windowed base (grey) and a windowed overlay (colour table) into RGB.

    The overlay is drawn with ``opacity`` where its windowed value is above 0 and not at
    all below its window, as PET/CT viewers do, so the anatomy stays visible around
    uptake.

    Parameters
    ----------
    base_values, overlay_values : array-like
        Windowed values in [0, 1] on one grid (see :func:`apply_window`).
    lut : (N, 3) ndarray
        Overlay colour table (see :func:`colormap_lut`).
    opacity : float
        Overlay opacity in [0, 1].

    Returns
    -------
    ndarray
        float32 RGB, shape ``base_values.shape + (3,)``.
    """
    overlay_values = np.asarray(overlay_values, dtype=np.float32)
    visible = np.where(np.nan_to_num(overlay_values, nan=0.0) > 0, np.float32(opacity), 0)
    return blend(gray_rgb(base_values), apply_lut(overlay_values, lut), visible)


def checkerboard_mask(shape: tuple[int, ...], spacing: Any, tile_mm: float) -> np.ndarray:
    """Which voxels of a grid belong to the base's tiles in a checkerboard of ``tile_mm``.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (2D slice or 3D volume).
    spacing : sequence of float
        Voxel size in mm along each axis of ``shape`` (for a volume: ``Volume.spacing``).
    tile_mm : float
        Edge length of a tile in mm, the same along every axis. Tiles start at voxel 0 of
        the grid: voxel ``i`` along an axis of spacing ``s`` lies in tile
        ``floor(i * s / tile_mm)``, so a tile holds ``tile_mm / s`` voxels when that is an
        integer.

    Returns
    -------
    ndarray of bool
        True on tiles whose indices sum to an even number (the base's), False on the
        others (the overlay's).
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (len(shape),) or np.any(spacing <= 0):
        raise DimensionError(f"The spacing needs one positive size in mm per axis of the "
                             f"grid {tuple(shape)}, got {spacing.tolist()}.")
    if not tile_mm > 0:
        raise DimensionError(f"The checkerboard tile must be a positive size in mm, got "
                             f"{tile_mm}.")
    parity = np.zeros(tuple(shape), dtype=np.int64)
    for axis, (n, s) in enumerate(zip(shape, spacing)):
        # A hair of tolerance keeps i * s exactly on a tile edge (e.g. 10 * 1.0 / 10) in the
        # next tile despite float rounding.
        tiles = np.floor(np.arange(n) * s / tile_mm + 1e-9).astype(np.int64)
        view = [1] * len(shape)
        view[axis] = n
        parity = parity + tiles.reshape(view)
    return parity % 2 == 0


def checkerboard(base: Any, overlay: Any, spacing: Any, tile_mm: float) -> np.ndarray:
    """Alternate tiles of ``base`` and ``overlay`` (see :func:`checkerboard_mask`).

    Parameters
    ----------
    base, overlay : array-like
        Same grid; values or RGB colours (a last axis of 3 not counted in ``spacing``).
    spacing : sequence of float
        Voxel size in mm per spatial axis.
    tile_mm : float
        Tile edge in mm.

    Returns
    -------
    ndarray
        Base values on even tiles, overlay values on odd ones (the inputs' common dtype).
    """
    base, overlay = np.asarray(base), np.asarray(overlay)
    if base.shape != overlay.shape:
        raise DimensionError(f"Base and overlay must be on one grid; got shapes {base.shape} "
                             f"and {overlay.shape}.")
    spatial = base.shape[:len(np.atleast_1d(spacing))]
    mask = checkerboard_mask(spatial, spacing, tile_mm)
    mask = mask.reshape(mask.shape + (1,) * (base.ndim - mask.ndim))
    return np.where(mask, base, overlay)


def difference(base: Any, overlay: Any) -> np.ndarray:
    """Signed difference ``base - overlay`` (float32), in the units of the inputs.

    Meaningful for two images in the same units (CT before and after, an MR and its
    registered copy); windowed values in [0, 1] give a difference in [-1, 1], which
    :func:`difference_display` maps to grey with 0 at mid-grey.
    """
    base = np.asarray(base, dtype=np.float32)
    overlay = np.asarray(overlay, dtype=np.float32)
    if base.shape != overlay.shape:
        raise DimensionError(f"Base and overlay must be on one grid; got shapes {base.shape} "
                             f"and {overlay.shape}.")
    return base - overlay


def difference_display(diff: Any, half_range: float) -> np.ndarray:
    """A signed difference as [0, 1] grey: 0.5 where equal, 0 at ``-half_range`` or below,
    1 at ``+half_range`` or above (``half_range`` in the difference's units)."""
    return apply_window(diff, -float(half_range), float(half_range))


def compose_rgb(base_values: Any, overlay_values: Any, mode: str, *, lut: np.ndarray,
                opacity: float = 0.5, spacing: Any = None, tile_mm: float = 20.0) -> np.ndarray:
    """One fused RGB image of two windowed images on one grid, in any of :data:`MODES`.

    Parameters
    ----------
    base_values, overlay_values : array-like
        Windowed values in [0, 1] (see :func:`apply_window`), same shape.
    mode : {"blend", "checkerboard", "difference"}
        ``blend``: :func:`colour_overlay`; ``checkerboard``: grey base and coloured overlay
        in alternate tiles of ``tile_mm``; ``difference``: grey, mid-grey where the windowed
        values agree.
    lut : (N, 3) ndarray
        Overlay colour table.
    opacity : float
        Overlay opacity for ``blend``.
    spacing : sequence of float
        Voxel size in mm per axis; needed for ``checkerboard``.
    tile_mm : float
        Checkerboard tile edge in mm.

    Returns
    -------
    ndarray
        float32 RGB, shape ``base_values.shape + (3,)``.
    """
    if mode == "blend":
        return colour_overlay(base_values, overlay_values, lut, opacity)
    if mode == "checkerboard":
        if spacing is None:
            raise DimensionError("A checkerboard needs the grid's spacing in mm.")
        return checkerboard(gray_rgb(base_values), apply_lut(overlay_values, lut), spacing,
                            tile_mm)
    if mode == "difference":
        return gray_rgb(difference_display(difference(base_values, overlay_values), 1.0))
    raise DimensionError(f"Unknown fusion mode {mode!r}; choose one of {', '.join(MODES)}.")


#: Short names of modalities in the fused cursor text.
MODALITY_NAMES = {"PT": "PET", "CT": "CT", "MR": "MR", "SEG": "Labels"}


def fused_values_text(entries: list[tuple[str, Any, str]]) -> str:
    """The cursor line of a fused view: every layer's value with its unit.

    Parameters
    ----------
    entries : list of (name, value, unit)
        In display order; ``value`` None (outside that layer) is shown as a dash. HU are
        whole numbers; other units keep three significant digits.

    Returns
    -------
    str
        E.g. ``"CT 45 HU · PET 6.2 SUV"``.
    """
    parts = []
    for name, value, unit in entries:
        if value is None or not np.isfinite(float(value)):
            text = "-"
        elif unit == "HU":
            text = f"{float(value):.0f}"
        else:
            text = f"{float(value):.3g}"
        parts.append(" ".join(p for p in (name, text, unit if text != "-" else "") if p))
    return " · ".join(parts)
