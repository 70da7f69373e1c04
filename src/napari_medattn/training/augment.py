"""On-the-fly augmentation of training batches, in torch, on the tensor's own device.

Tensors are batched: images ``(B, C, D, H, W)`` float, labels ``(B, 1, D, H, W)``
integer. Every random draw comes from one ``torch.Generator`` (on the CPU or the tensor's
device) in a fixed order, so a seed gives the same batch whatever the device the
generator lives on; numbers drawn on the CPU are moved to the tensor's device.

Each transform draws its parameters for every sample of the batch, then applies them to
the samples it selected with its probability ``p`` (the others are returned bit for bit).
Spatial transforms move image and label together (image trilinear, label nearest, 0
outside as in nnU-Net); intensity transforms touch the image only. Coordinates are voxel
indices: rotations and scalings are isotropic in voxels, so give the network isotropic
patches (:func:`napari_medattn.training.patches.prepare_case` with equal spacing) when
physical angles matter.

A pipeline is a JSON-serialisable dict, so a model card can record it::

    config = {"transforms": [{"name": "flip", "p": 0.5, "axes": [0, 1, 2]},
                             {"name": "gamma", "p": 0.3, "gamma": [0.7, 1.5]}]}
    augment = Compose.from_config(config)
    image, label = augment(image, label, generator=torch.Generator().manual_seed(0))
    augment.config == config   # with every default filled in

:data:`DEFAULT_AUGMENTATION` is close to nnU-Net's default 3D pipeline. The tensor
primitives the transforms use (blur, warps, fields) live in
:mod:`napari_medattn.training.tensor_ops`, shared with synthesis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from napari_medattn.errors import MedAttnError
from napari_medattn.training.tensor_ops import (
    bias_field,
    bias_monomials,
    gaussian_blur,
    identity_coordinates,
    normal,
    sample_grid,
    simulate_low_resolution,
    smooth_field,
    uniform,
    warp,
)


class AugmentationConfigError(MedAttnError):
    """An augmentation pipeline configuration names an unknown transform or a bad value."""


def _rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """The ``(3, 3)`` rotation by ``angles (3,)`` radians about array axes 0, then 1, then 2."""
    matrix = torch.eye(3, dtype=angles.dtype, device=angles.device)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        turn = torch.eye(3, dtype=angles.dtype, device=angles.device)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = (torch.cos(angle), -torch.sin(angle),
                                                          torch.sin(angle), torch.cos(angle))
        matrix = turn @ matrix
    return matrix


# ---------------------------------------------------------------------------- transforms


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class Transform:
    """Base: ``p`` is the probability (0-1) that each sample of a batch is transformed."""

    name: ClassVar[str] = ""
    #: Fields that are ``(low, high)`` ranges, with the smallest value each may hold; one
    #: uniform number per sample is drawn from each (see :meth:`draw`).
    ranges: ClassVar[dict[str, float]] = {}
    p: float = 0.2

    def __post_init__(self) -> None:
        # Every parameter has the kind of its default: a number, or a tuple of numbers.
        for field in dataclasses.fields(self):
            value, default = getattr(self, field.name), field.default
            if isinstance(default, tuple):
                valid = isinstance(value, tuple) and all(_is_number(v) for v in value)
                kind = "a list of numbers"
            else:
                valid, kind = _is_number(value), "a number"
            if not valid:
                raise AugmentationConfigError(f"Augmentation {self.name!r}: {field.name} must "
                                              f"be {kind}, got {value!r}.")
        if not 0.0 <= float(self.p) <= 1.0:
            raise AugmentationConfigError(f"Augmentation {self.name!r}: p must be in [0, 1], "
                                          f"got {self.p}.")
        for field, lowest in self.ranges.items():
            value = getattr(self, field)
            if len(value) != 2 or not value[0] <= value[1] or value[0] < lowest:
                raise AugmentationConfigError(
                    f"Augmentation {self.name!r}: {field} must be two increasing numbers of "
                    f"at least {lowest}, got {list(value)}.")

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (``Compose.from_config`` accepts it back)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"name": self.name,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = image.shape[0]
        chosen = torch.rand(batch, generator=generator, device=generator.device) < self.p
        params = self.draw(generator, image)
        picked = torch.nonzero(chosen.cpu()).flatten().tolist()
        if not picked:
            return image, label
        image = image.clone()
        label = None if label is None else label.clone()
        for b in picked:
            sample = {k: v[b] for k, v in params.items()}
            new_image, new_label = self.apply(image[b:b + 1],
                                              None if label is None else label[b:b + 1], sample)
            image[b:b + 1] = new_image
            if label is not None:
                label[b:b + 1] = new_label
        return image, label

    def draw(self, generator: torch.Generator, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters for every sample of the batch, each a tensor with the batch first:
        one uniform number per sample from each of :attr:`ranges`."""
        return {field: uniform(generator, (image.shape[0],), *getattr(self, field), image.device)
                for field in self.ranges}

    def apply(self, image: torch.Tensor, label: torch.Tensor | None,
              params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform one sample ``(1, C, D, H, W)`` (and its label) with its parameters."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RandomAffine(Transform):
    """Rotation (degrees, uniform in ``±rotation_deg`` about each axis), isotropic scale
    (uniform in ``scale``; > 1 zooms in) and translation (voxels, ``±translation``) about
    the patch centre."""

    name: ClassVar[str] = "affine"
    ranges: ClassVar[dict[str, float]] = {"scale": 1e-3}
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.25)
    translation: float = 0.0

    def draw(self, generator, image):
        b, device = image.shape[0], image.device
        r = math.radians(self.rotation_deg)
        return {**super().draw(generator, image),
                "angles": uniform(generator, (b, 3), -r, r, device),
                "shift": uniform(generator, (b, 3), -self.translation, self.translation,
                                 device)}

    def apply(self, image, label, params):
        # Output voxel q reads input M (q - c) + c + t with M = R / s (s > 1 magnifies) and
        # c the patch centre. With h = (n - 1) / 2 per axis, grid_sample's normalised
        # coordinates are g = (q - c) / h, so g_in = (H^-1 M H) g_out + H^-1 t.
        half = (torch.tensor(image.shape[2:], dtype=torch.float64) - 1).clamp(min=1) / 2
        matrix = _rotation_matrix(params["angles"].double().cpu()) / float(params["scale"])
        theta = torch.empty(3, 4, dtype=torch.float64)
        theta[:, :3] = matrix * half[None, :] / half[:, None]
        theta[:, 3] = params["shift"].double().cpu() / half
        theta = theta.flip(0)  # rows and columns in grid_sample's (x, y, z) order
        theta[:, :3] = theta[:, :3].flip(1)
        grid = F.affine_grid(theta[None].to(image.device, image.dtype), list(image.shape),
                             align_corners=True)
        return sample_grid(image, grid), None if label is None else sample_grid(label, grid)


@dataclasses.dataclass(frozen=True)
class ElasticDeformation(Transform):
    """Smooth random displacement (see :func:`smooth_field`): largest displacement uniform
    in ``magnitude`` voxels, control points every ``control_spacing`` voxels."""

    name: ClassVar[str] = "elastic"
    ranges: ClassVar[dict[str, float]] = {"magnitude": 0.0}
    magnitude: tuple[float, float] = (0.0, 4.0)
    control_spacing: float = 12.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.control_spacing <= 0:
            raise AugmentationConfigError("Augmentation 'elastic': control_spacing must be "
                                          "positive.")

    def draw(self, generator, image):
        magnitude = super().draw(generator, image)["magnitude"]
        field = smooth_field(generator, image.shape[0], image.shape[2:], self.control_spacing,
                             magnitude, image.device)
        return {"field": field.to(image.dtype)}

    def apply(self, image, label, params):
        coords = identity_coordinates(image.shape[2:], image.device, image.dtype)
        coords = (coords + params["field"])[None]
        return warp(image, coords), None if label is None else warp(label, coords)


@dataclasses.dataclass(frozen=True)
class Flip(Transform):
    """Mirror along each of ``axes`` (0-2, spatial) independently with probability ``p``."""

    name: ClassVar[str] = "flip"
    p: float = 0.5
    axes: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not set(self.axes) <= {0, 1, 2}:
            raise AugmentationConfigError(f"Augmentation 'flip': axes must be among 0, 1, 2, "
                                          f"got {list(self.axes)}.")

    def __call__(self, image, label, generator):
        batch = image.shape[0]
        chosen = (torch.rand((batch, len(self.axes)), generator=generator,
                             device=generator.device) < self.p).cpu()
        if not chosen.any():
            return image, label
        image = image.clone()
        label = None if label is None else label.clone()
        for b in range(batch):
            dims = [1 + a for a, c in zip(self.axes, chosen[b]) if c]  # image[b] is (C, D, H, W)
            if dims:
                image[b] = image[b].flip(dims)
                if label is not None:
                    label[b] = label[b].flip(dims)
        return image, label


@dataclasses.dataclass(frozen=True)
class Gamma(Transform):
    """Rescale each channel to [0, 1], raise to ``gamma`` (uniform in the range), scale back."""

    name: ClassVar[str] = "gamma"
    ranges: ClassVar[dict[str, float]] = {"gamma": 1e-3}
    p: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    def apply(self, image, label, params):
        low = image.amin(dim=(2, 3, 4), keepdim=True)
        span = (image.amax(dim=(2, 3, 4), keepdim=True) - low).clamp(min=1e-8)
        return ((image - low) / span) ** params["gamma"] * span + low, label


@dataclasses.dataclass(frozen=True)
class BiasField(Transform):
    """Multiply by ``exp`` of a random cubic polynomial (see :func:`bias_field`) whose
    coefficients are uniform in ``±strength``."""

    name: ClassVar[str] = "bias_field"
    p: float = 0.3
    strength: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strength < 0:
            raise AugmentationConfigError("Augmentation 'bias_field': strength must be at "
                                          "least 0.")

    def draw(self, generator, image):
        count = len(bias_monomials())
        return {"coefficients": uniform(generator, (image.shape[0], count), -self.strength,
                                        self.strength, image.device)}

    def apply(self, image, label, params):
        return image * bias_field(params["coefficients"][None].to(image.dtype),
                                  image.shape[2:]), label


@dataclasses.dataclass(frozen=True)
class GaussianNoise(Transform):
    """Add Gaussian noise whose standard deviation is uniform in ``std`` times each
    channel's standard deviation."""

    name: ClassVar[str] = "noise"
    ranges: ClassVar[dict[str, float]] = {"std": 0.0}
    p: float = 0.15
    std: tuple[float, float] = (0.0, 0.1)

    def draw(self, generator, image):
        return {**super().draw(generator, image),
                "noise": normal(generator, image.shape, image.device).to(image.dtype)}

    def apply(self, image, label, params):
        scale = image.std(dim=(2, 3, 4), keepdim=True) * params["std"]
        return image + params["noise"][None] * scale, label


@dataclasses.dataclass(frozen=True)
class GaussianBlur(Transform):
    """Gaussian blur with a standard deviation uniform in ``sigma`` voxels (all axes)."""

    name: ClassVar[str] = "blur"
    ranges: ClassVar[dict[str, float]] = {"sigma": 0.0}
    sigma: tuple[float, float] = (0.5, 1.0)

    def apply(self, image, label, params):
        return gaussian_blur(image, float(params["sigma"])), label


@dataclasses.dataclass(frozen=True)
class Contrast(Transform):
    """Scale each channel about its mean by a factor uniform in ``factor``, clipped to the
    channel's original range (nnU-Net's contrast augmentation)."""

    name: ClassVar[str] = "contrast"
    ranges: ClassVar[dict[str, float]] = {"factor": 0.0}
    p: float = 0.15
    factor: tuple[float, float] = (0.75, 1.25)

    def apply(self, image, label, params):
        dims = (2, 3, 4)
        mean = image.mean(dim=dims, keepdim=True)
        low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
        return torch.maximum(torch.minimum((image - mean) * params["factor"] + mean, high),
                             low), label


@dataclasses.dataclass(frozen=True)
class LowResolution(Transform):
    """Simulate a coarser scan (see :func:`simulate_low_resolution`) with a zoom uniform in
    ``zoom`` (fraction of voxels kept per axis)."""

    name: ClassVar[str] = "low_resolution"
    ranges: ClassVar[dict[str, float]] = {"zoom": 1e-3}
    p: float = 0.25
    zoom: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.zoom[1] > 1:
            raise AugmentationConfigError("Augmentation 'low_resolution': zoom must be at "
                                          "most 1.")

    def apply(self, image, label, params):
        return simulate_low_resolution(image, float(params["zoom"])), label


#: Transform classes by their configuration name.
TRANSFORMS: dict[str, type[Transform]] = {
    cls.name: cls for cls in (RandomAffine, ElasticDeformation, Flip, Gamma, BiasField,
                              GaussianNoise, GaussianBlur, Contrast, LowResolution)}

#: Close to nnU-Net's default 3D augmentation (spatial first, then intensity, then flips).
DEFAULT_AUGMENTATION: dict[str, Any] = {"transforms": [
    {"name": "affine", "p": 0.2, "rotation_deg": 15.0, "scale": [0.85, 1.25],
     "translation": 0.0},
    {"name": "elastic", "p": 0.1, "magnitude": [0.0, 4.0], "control_spacing": 12.0},
    {"name": "noise", "p": 0.1, "std": [0.0, 0.1]},
    {"name": "blur", "p": 0.2, "sigma": [0.5, 1.0]},
    {"name": "contrast", "p": 0.15, "factor": [0.75, 1.25]},
    {"name": "low_resolution", "p": 0.25, "zoom": [0.5, 1.0]},
    {"name": "gamma", "p": 0.3, "gamma": [0.7, 1.5]},
    {"name": "bias_field", "p": 0.1, "strength": 0.3},
    {"name": "flip", "p": 0.5, "axes": [0, 1, 2]},
]}


class Compose:
    """Apply transforms in order to an image batch and its labels.

    Parameters
    ----------
    transforms : sequence of Transform
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Compose:
        """Build from ``{"transforms": [{"name": ..., "p": ..., <parameters>}, ...]}``.

        Raises
        ------
        AugmentationConfigError
            Unknown transform name or parameter, or an invalid value.
        """
        if not isinstance(config, Mapping) or not isinstance(config.get("transforms"), list):
            raise AugmentationConfigError("An augmentation config is an object with a "
                                          "'transforms' list.")
        transforms = []
        for entry in config["transforms"]:
            if not isinstance(entry, Mapping) or entry.get("name") not in TRANSFORMS:
                raise AugmentationConfigError(
                    f"Unknown augmentation {entry!r}; use one of {', '.join(TRANSFORMS)}.")
            cls_ = TRANSFORMS[entry["name"]]
            allowed = {f.name for f in dataclasses.fields(cls_)}
            extra = set(entry) - allowed - {"name"}
            if extra:
                raise AugmentationConfigError(f"Augmentation {entry['name']!r} does not take "
                                              f"{', '.join(sorted(extra))}.")
            kwargs = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in entry.items() if k != "name"}
            try:
                transforms.append(cls_(**kwargs))
            except TypeError as error:
                raise AugmentationConfigError(f"Augmentation {entry['name']!r}: {error}.") \
                    from None
        return cls(transforms)

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-serialisable configuration, every parameter spelled out."""
        return {"transforms": [t.config for t in self.transforms]}

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None, seed: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Parameters
        ----------
        image : Tensor ``(B, C, D, H, W)``
            Float, on any device.
        label : Tensor ``(B, 1, D, H, W)``, optional
            Integer labels, on the same device.
        generator : torch.Generator, optional
            Source of every random draw (advanced by the call).
        seed : int, optional
            Shorthand for a fresh CPU generator seeded with ``seed``; give one of the two.

        Returns
        -------
        image, label
            New tensors (the inputs are not modified); ``label`` is ``None`` if not given.
        """
        if (generator is None) == (seed is None):
            raise AugmentationConfigError("Give either a generator or a seed.")
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        if image.ndim != 5 or not torch.is_floating_point(image):
            raise AugmentationConfigError(f"Augmentation needs a float (B, C, D, H, W) image "
                                          f"batch, got {tuple(image.shape)} {image.dtype}.")
        if label is not None and (label.shape[0] != image.shape[0] or label.shape[1] != 1
                                  or label.shape[2:] != image.shape[2:]):
            raise AugmentationConfigError(f"Labels {tuple(label.shape)} do not match the image "
                                          f"batch {tuple(image.shape)} (expected (B, 1, D, H, "
                                          f"W)).")
        for transform in self.transforms:
            image, label = transform(image, label, generator)
        return image, label
