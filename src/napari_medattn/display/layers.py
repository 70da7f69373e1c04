"""Volumes to napari layer data and back, without importing napari.

A Volume is shown through its :meth:`~napari_medattn.io.volume.Volume.canonical` view
(zero copy): the layer's ``scale``/``translate`` place it in world (z, y, x) LPS mm, which
is exact for axis-aligned volumes and the nearest axis-aligned grid for oblique ones. The
canonical Volume itself (exact affine, modality, source metadata; its data are the layer's
data, so nothing is copied) rides along in ``layer.metadata[GEOMETRY_KEY]`` so that
computation and export never use the simplified display geometry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medattn.display.window_level import initial_limits
from napari_medattn.errors import DimensionError
from napari_medattn.io import Volume, volume_like
from napari_medattn.io.volume import nearest_grid

#: ``layer.metadata`` key holding the canonical :class:`Volume` a layer shows or was drawn on.
GEOMETRY_KEY = "medattn_geometry"
#: World axis labels (napari dims) of the three spatial axes.
SPATIAL_AXIS_LABELS = ("z", "y", "x")


def oblique_angle_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between an array axis and its nearest patient axis."""
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.clip(np.max(np.abs(direction), axis=0), -1.0, 1.0)
    return float(np.rad2deg(np.arccos(cosines.min())))


def oblique_message(volume: Volume) -> str | None:
    """The one-line notice for an oblique volume, or None for an axis-aligned one."""
    if not volume.is_oblique:
        return None
    return (f"{volume.name} is oblique (up to {oblique_angle_deg(volume.affine):.1f} degrees "
            f"off the patient axes): shown on the nearest axis-aligned grid; the exact "
            f"geometry is kept for measurements and export.")


def volume_layer_data(volume: Volume, layer_type: str | None = None) -> tuple[Any, dict, str]:
    """A napari layer-data tuple ``(data, kwargs, layer_type)`` for a volume.

    Parameters
    ----------
    volume : Volume
        Any orientation; it is shown through its canonical (z, y, x) view without copying.
    layer_type : {"image", "labels"}, optional
        Default: ``"labels"`` for modality ``"SEG"``, else ``"image"``.

    Returns
    -------
    tuple
        ``data`` (canonical view), ``kwargs`` (name, scale and translate in mm, units,
        axis labels, metadata with the exact geometry, and for images a grey colormap and
        the modality's initial contrast limits), and the layer type.
    """
    layer_type = layer_type or ("labels" if volume.modality == "SEG" else "image")
    if layer_type not in ("image", "labels"):
        raise DimensionError(f"A volume becomes an image or labels layer, not {layer_type!r}.")
    view = volume.canonical()
    scale, translate = nearest_grid(view.affine)
    frames = view.data.ndim - 3
    frame_label = str(volume.meta.get("frame_axis", "frame"))
    kwargs: dict[str, Any] = {
        "name": volume.name,
        "scale": (1.0,) * frames + tuple(float(s) for s in scale),
        "translate": (0.0,) * frames + tuple(float(t) for t in translate),
        "units": ("pixel",) * frames + ("mm",) * 3,
        "axis_labels": (frame_label,) * frames + SPATIAL_AXIS_LABELS,
        "metadata": {GEOMETRY_KEY: view},
    }
    data = view.data
    if layer_type == "image":
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = initial_limits(data, volume.modality,
                                                   header_window(volume.meta))
    elif not np.issubdtype(data.dtype, np.integer):
        raise DimensionError(f"{volume.name} has {data.dtype} voxels; a label map needs "
                             f"integer labels.")
    elif volume.meta.get("classes"):
        # Named, coloured classes (a DICOM-SEG's segments): shown with their colours, and
        # napari's status bar names the class under the cursor.
        classes = volume.meta["classes"]
        kwargs["colormap"] = {None: "magenta", 0: "transparent",
                              **{k: c[1] for k, c in enumerate(classes) if k}}
        kwargs["features"] = {"index": list(range(len(classes))),
                              "class": [str(c[0]) for c in classes]}
    return data, kwargs, layer_type


def layer_volume(data: Any, metadata: dict, modality: str | None = None,
                 name: str | None = None) -> Volume:
    """The Volume behind a layer: its data on the exact geometry kept in its metadata.

    Parameters
    ----------
    data : array-like
        The layer's data, in canonical (z, y, x) order as displayed.
    metadata : dict
        ``layer.metadata``; must hold :data:`GEOMETRY_KEY` (layers made by this plugin,
        and labels created on such an image, do).
    modality : str, optional
        Modality of the result; default: that of the scan (use ``"SEG"`` for labels).
    name : str, optional
        Name of the result (the layer name).

    Returns
    -------
    Volume
        Canonical-order volume whose ``meta`` still describes the source file, so the
        NIfTI writer restores the source array order, affine and header.
    """
    reference = metadata.get(GEOMETRY_KEY)
    if reference is None:
        raise DimensionError("This layer has no patient geometry (it was not opened with "
                             "napari-medattn, nor drawn on a scan that was).")
    return volume_like(reference, np.asarray(data), modality=modality or reference.modality,
                       name=name)


def header_window(meta: dict) -> tuple[float, float] | None:
    """The (window, level) the DICOM header recommends (first value if several), or None."""
    header = meta.get("dicom_header")
    if header is None:
        return None
    width, centre = header.get("WindowWidth"), header.get("WindowCenter")
    if width is None or centre is None:
        return None
    # Multi-valued tags list several windows; the first is the default the site chose.
    first = [float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
             for v in (width, centre)]
    return first[0], first[1]
