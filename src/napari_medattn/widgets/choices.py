"""Combo boxes of layers and models, shared by the plugin's widgets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox

from napari_medattn.models.registry import ModelEntry
from napari_medattn.widgets.tooltips import model_card_tooltip


def set_items(box: QComboBox, names: Sequence[str], fallback: str | None = None) -> None:
    """Replace a combo box's items without emitting signals.

    The current choice is kept when it is still listed, else ``fallback`` is chosen if
    listed, else the first item.
    """
    current = box.currentText()
    box.blockSignals(True)
    box.clear()
    box.addItems(list(names))
    for choice in (current, fallback):
        if choice in names:
            box.setCurrentText(choice)
            break
    box.blockSignals(False)


def set_models(box: QComboBox, entries: Mapping[str, Any], fallback: str | None) -> None:
    """List models by name (as :func:`set_items`), each registry model with its card as
    the item's tooltip; other values (e.g. a path the user opened) get none."""
    set_items(box, list(entries), fallback=fallback)
    for row, entry in enumerate(entries.values()):
        if isinstance(entry, ModelEntry):
            box.setItemData(row, model_card_tooltip(entry.card), Qt.ItemDataRole.ToolTipRole)


def labels_on_scan_grid(viewer: Any, scan_name: str, *,
                        skip_key: str | None = None) -> list[str]:
    """Names of the labels layers on the grid of the layer ``scan_name`` (same spatial
    shape), the top-most first; none when that layer is gone. Layers whose metadata hold
    ``skip_key`` are left out."""
    try:
        scan = viewer.layers[scan_name]
    except KeyError:
        return []
    return [layer.name for layer in reversed(viewer.layers)
            if isinstance(layer, Labels) and layer.data.shape == scan.data.shape[-3:]
            and (skip_key is None or skip_key not in layer.metadata)]


def on_layers_changed(viewer: Any, callback: Callable[..., None]) -> None:
    """Call ``callback(event)`` whenever a layer is added, removed or moved."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                  viewer.layers.events.moved):
        event.connect(callback)
