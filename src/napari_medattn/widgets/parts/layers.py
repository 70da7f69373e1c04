"""Which layers are scans, the layer-metadata keys the widgets share, and how results
are styled (and marked as derived) as layers.

:func:`scan_layers` is the one rule for which layers are scans; :data:`DERIVED_KEY` and
the other keys tag what the widgets compute; :func:`heat_map_layer_data` and
:func:`labels_layer_data` build result layers as pure data (no napari objects), so a
worker thread can prepare them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import DirectLabelColormap

from napari_medattn.display.layers import GEOMETRY_KEY, volume_layer_data
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard

# ------------------------------------------------------------------ layer metadata keys
#: ``layer.metadata`` key of every layer a widget computes (maps, labels, markers): the
#: name of the widget that made it. Such layers are never offered as scans.
DERIVED_KEY = "medattn_derived"
#: ``layer.metadata`` key of Segment's result layers: ``{"image": <scan layer unique_id>,
#: "model": <name>, "output": "labels" | "probability <c>" | "uncertainty" |
#: "attention <map>"}``.
RUN_KEY = "medattn_segment_run"
#: ``layer.metadata`` key of a result labels layer: hash of the labels as written.
DIGEST_KEY = "medattn_labels_digest"
#: ``layer.metadata`` key of the inspector's layers: ``{"image": <scan layer unique_id>,
#: "model": <name>, "output": <what it shows>, "top": <largest magnitude>,
#: "signed": <bool>}``.
INSPECT_KEY = "medattn_inspector"
#: ``layer.metadata`` key the Register widget sets on the moving layer when a run ends:
#: ``{"fixed": <fixed layer unique_id>, "transform": <fixed mm -> moving mm transform>,
#: "method": <name>}``. Fuse offers it as the overlay's transform, so a registration
#: reaches the fusion view without a file.
TRANSFORM_KEY = "medattn_registration"

# ---------------------------------------------------------------------------- styling
#: Opacity of result labels over the scan, and of heat maps (blended additively).
LABELS_OPACITY = 0.5
HEAT_OPACITY = 0.6
HEAT_COLORMAP = "inferno"
#: Signed maps (e.g. occlusion): blue below zero, red above.
SIGNED_COLORMAP = "bwr"


def scan_layers(viewer: Any) -> list[Image]:
    """The layers that are scans: single-channel image layers opened with this plugin
    (they carry the patient geometry, :data:`GEOMETRY_KEY`) that no widget computed
    (no :data:`DERIVED_KEY`), in the viewer's order."""
    return [layer for layer in viewer.layers
            if isinstance(layer, Image) and not layer.rgb
            and GEOMETRY_KEY in layer.metadata and DERIVED_KEY not in layer.metadata]


def heat_map_layer_data(volume: Volume, made_by: str, tags: Mapping[str, Any], *,
                        signed: bool = False, top: float | None = None) -> tuple:
    """Layer-data tuple of a map on its scan's geometry, styled as every heat map.

    Pure data (no napari objects), so it can be prepared in a worker thread.

    Parameters
    ----------
    volume : Volume
        The map.
    made_by : str
        The widget that computed it (stored under :data:`DERIVED_KEY`).
    tags : mapping
        More layer metadata (the widget's run tag).
    signed : bool
        Values of both signs: :data:`SIGNED_COLORMAP` with limits symmetric about 0.
    top : float, optional
        The upper contrast limit (e.g. 1 for probabilities); default: the map's largest
        magnitude (1 for an all-zero map).
    """
    data, kwargs, kind = volume_layer_data(volume, "image")
    if top is None:
        top = float(np.max(np.abs(data))) if data.size else 0.0
    top = top if top > 0 else 1.0
    kwargs.update(colormap=SIGNED_COLORMAP if signed else HEAT_COLORMAP,
                  blending="additive", opacity=HEAT_OPACITY,
                  contrast_limits=(-top if signed else 0.0, top),
                  metadata={**kwargs["metadata"], **tags, DERIVED_KEY: made_by})
    return data, kwargs, kind


def labels_layer_data(volume: Volume, made_by: str, tags: Mapping[str, Any], *,
                      opacity: float = LABELS_OPACITY) -> tuple:
    """Layer-data tuple of a label map a widget computed, on its scan's geometry."""
    data, kwargs, kind = volume_layer_data(volume, "labels")
    kwargs.update(opacity=opacity,
                  metadata={**kwargs["metadata"], **tags, DERIVED_KEY: made_by})
    return data, kwargs, kind


def class_colormap(card: ModelCard) -> DirectLabelColormap:
    """The card's class colours by label value, background transparent."""
    colours: dict[int | None, Any] = {0: "transparent", None: "magenta"}
    colours.update({index: info.color for index, info in enumerate(card.classes) if index})
    return DirectLabelColormap(color_dict=colours)
