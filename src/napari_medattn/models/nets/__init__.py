"""Networks assembled from the attention blocks, created by name from a JSON-ready config.

>>> net = create("unet", spatial_dims=3, attention="cbam")
>>> same = create(net.architecture, **json.loads(json.dumps(net.config)))

Architectures: ``unet`` (the U-Net family; ``attention`` picks the ablation), ``dssa_unet``,
``medformer``, ``unetr``, and the multimodal ``dmaf_net``, ``region_fusion_net`` and
``early_fusion_unet``; the registration nets ``transmorph`` and ``voxelmorph`` (a pair in,
a velocity field out).
``preset`` names a published size (``"paper"``); explicit arguments override it and the
resulting config stores every value, not the preset name.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from napari_medattn.errors import MedAttnError, ModelError
from napari_medattn.models.nets.dmaf import DMAFNet, EarlyFusionUNet, RegionFusionNet
from napari_medattn.models.nets.dssa_unet import DSSAUNet
from napari_medattn.models.nets.medformer import MedFormer
from napari_medattn.models.nets.transmorph import TransMorph
from napari_medattn.models.nets.unet import UNET_ATTENTIONS, UNet
from napari_medattn.models.nets.unetr import UNETR
from napari_medattn.models.nets.voxelmorph import VoxelMorph

__all__ = ["create", "architectures", "presets", "UNet", "DSSAUNet", "MedFormer", "UNETR",
           "UNET_ATTENTIONS", "DMAFNet", "EarlyFusionUNet", "RegionFusionNet",
           "TransMorph", "VoxelMorph"]

_ARCHITECTURES: dict[str, type[nn.Module]] = {
    cls.architecture: cls for cls in (UNet, DSSAUNet, MedFormer, UNETR, DMAFNet, EarlyFusionUNet,
                                      RegionFusionNet, TransMorph, VoxelMorph)
}


def architectures() -> list[str]:
    """Names :func:`create` accepts, sorted."""
    return sorted(_ARCHITECTURES)


def _lookup(name: str) -> type[nn.Module]:
    if name not in _ARCHITECTURES:
        raise ModelError(f"Unknown architecture {name!r}; valid choices are "
                         f"{', '.join(architectures())}.")
    return _ARCHITECTURES[name]


def presets(name: str) -> list[str]:
    """Named sizes of architecture ``name`` (besides the CPU-sized defaults), sorted."""
    return sorted(getattr(_lookup(name), "PRESETS", {}))


def create(name: str, preset: str | None = None, **config: Any) -> nn.Module:
    """Build architecture ``name`` from ``config``.

    Parameters
    ----------
    name : str
        One of :func:`architectures`.
    preset : str, optional
        One of :func:`presets`; its values are used unless ``config`` overrides them.
    **config
        Constructor arguments, e.g. a net's ``config`` after a JSON round trip.

    Returns
    -------
    nn.Module
        The network (randomly initialised, train mode); ``net.config`` holds every
        argument and ``net.architecture`` is ``name``.

    Raises
    ------
    ModelError
        For an unknown name, preset or option, or an invalid value.
    """
    cls = _lookup(name)
    if preset is not None:
        known = getattr(cls, "PRESETS", {})
        if preset not in known:
            raise ModelError(f"Unknown preset {preset!r} for {name}; valid choices are "
                             f"{', '.join(sorted(known)) or 'none'}.")
        config = {**known[preset], **config}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ModelError(f"Unknown option(s) {', '.join(unknown)} for {name}; valid options "
                         f"are {', '.join(accepted)}.")
    try:
        return cls(**config)
    except ModelError:
        raise
    except (MedAttnError, ValueError, TypeError) as error:
        # A block refused a value (e.g. heads not dividing channels): same error type for
        # every bad config, with the block's sentence kept.
        raise ModelError(f"Invalid {name} config: {error}") from error
