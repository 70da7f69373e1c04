"""Inference: preprocessing, the sliding-window engine, devices, memory planning, TTA.

Submodules are imported on first use so that light users (the resampler, from ``io``)
do not pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "segment": "pipeline",
    "Segmentation": "pipeline",
    "sliding_window_inference": "sliding_window",
    "attention_map_names": "sliding_window",
    "InferenceResult": "sliding_window",
    "WindowOptions": "window_options",
    "OutputRequest": "window_options",
    "MemoryBudget": "window_options",
    "resolve_device": "devices",
    "plan_inference": "memory",
    "resample_to_grid": "resample",
    "resample_to_spacing": "resample",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"napari_medattn.inference.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'napari_medattn.inference' has no attribute {name!r}")
