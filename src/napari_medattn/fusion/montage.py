"""Montages of fused slices for reports: axial, coronal and sagittal, radiological.

The base and the overlay must already share one grid (see
:func:`~napari_medattn.fusion.align.overlay_on_grid`). Slices are taken from the
canonical (z, y, x) view, turned to the radiological screen convention (axial: anterior
up, patient right on the left; coronal: superior up, right on the left; sagittal:
superior up, anterior on the left; see :mod:`napari_medattn.display.orientation`) and
scaled to square pixels of the grid's finest spacing, so a millimetre is as long across
as down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from napari_medattn.errors import DimensionError
from napari_medattn.fusion.compose import apply_window, compose_rgb
from napari_medattn.io import Volume
from napari_medattn.io.atomic import atomic_path

VIEWS = ("axial", "coronal", "sagittal")
#: Canonical (z, y, x) axis each view slices along.
VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def radiological_slice(canonical: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice of a canonical (z, y, x) array, as a radiologist reads it (rows down the
    screen, columns left to right); trailing axes (RGB) are kept."""
    if view == "axial":
        return canonical[index]  # rows y: anterior (low y) first; columns x: right first
    if view == "coronal":
        return canonical[::-1, index]  # superior first; columns x
    if view == "sagittal":
        return canonical[::-1, :, index]  # superior first; columns y: anterior first
    raise DimensionError(f"Unknown view {view!r}; choose one of {', '.join(VIEWS)}.")


def slice_indices(size: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices strictly inside ``[0, size)``."""
    count = max(1, min(count, size))
    return [int(i) for i in np.linspace(0, size - 1, count + 2)[1:-1].round()]


def fused_montages(base: Volume, overlay: Volume, *, mode: str = "blend",
                   base_window: tuple[float, float], overlay_window: tuple[float, float],
                   lut: np.ndarray, opacity: float = 0.5, tile_mm: float = 20.0,
                   slices: int = 9, columns: int = 3) -> dict[str, np.ndarray]:
    """Fused montages of ``slices`` evenly spaced slices per view.

    Parameters
    ----------
    base, overlay : Volume
        3D, on one grid (same shape and affine).
    mode : {"blend", "checkerboard", "difference"}
        See :func:`~napari_medattn.fusion.compose.compose_rgb`.
    base_window, overlay_window : (low, high)
        Windows in each image's units (HU, SUV, ...).
    lut : (N, 3) ndarray
        Overlay colour table.
    opacity : float
        Overlay opacity for ``blend``.
    tile_mm : float
        Checkerboard tile edge in mm.
    slices, columns : int
        Slices per view and montage columns.

    Returns
    -------
    dict
        View name -> uint8 RGB montage ``(rows, columns, 3)``.
    """
    if base.spatial_shape != overlay.spatial_shape or not np.allclose(
            base.affine, overlay.affine, atol=1e-6):
        raise DimensionError(f"{overlay.name} is not on {base.name}'s grid; resample it onto "
                             f"the base grid first.")
    base_c, overlay_c = base.canonical(), overlay.canonical()
    spacing = base_c.spacing  # mm along z, y, x
    montages = {}
    for view in VIEWS:
        axis = VIEW_AXIS[view]
        in_plane = [a for a in range(3) if a != axis]
        tiles = []
        for index in slice_indices(base_c.spatial_shape[axis], slices):
            values = [apply_window(radiological_slice(np.asarray(v.data), view, index), *w)
                      for v, w in ((base_c, base_window), (overlay_c, overlay_window))]
            rgb = compose_rgb(values[0], values[1], mode, lut=lut, opacity=opacity,
                              spacing=spacing[in_plane], tile_mm=tile_mm)
            tiles.append(_square_pixels(rgb, spacing[in_plane]))
        montages[view] = _grid(tiles, columns)
    return montages


def _square_pixels(rgb: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Resize an RGB slice so each pixel is ``min(spacing)`` mm on a side."""
    pixel = float(np.min(spacing))
    height, width = (int(round(n * s / pixel)) for n, s in zip(rgb.shape[:2], spacing))
    image = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if (height, width) != rgb.shape[:2]:
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    width = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    out = np.zeros((rows * height, min(columns, len(tiles)) * width, 3), np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        out[r * height:r * height + tile.shape[0], c * width:c * width + tile.shape[1]] = tile
    return out


def write_png(path: str | Path, rgb: Any) -> Path:
    """Write a uint8 RGB array as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(temporary, format="PNG")
    return path
