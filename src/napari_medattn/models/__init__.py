"""Attention models: blocks, networks, attention capture and cost counting (pure torch).

``create(name, **config)`` builds a network, ``architectures()`` lists the names,
``capture_attention(model)`` collects named attention maps during a forward pass, and
``count_parameters`` / ``count_flops`` measure size and cost.
"""

from napari_medattn.models.capture import AttentionMap, AttentionMaps, MapKind, capture_attention
from napari_medattn.models.complexity import count_flops, count_parameters
from napari_medattn.models.nets import architectures, create, presets

__all__ = [
    "create",
    "architectures",
    "presets",
    "capture_attention",
    "AttentionMap",
    "AttentionMaps",
    "MapKind",
    "count_parameters",
    "count_flops",
]
