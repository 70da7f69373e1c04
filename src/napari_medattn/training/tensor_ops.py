"""Torch building blocks shared by augmentation and synthesis.

Seeded random draws, separable Gaussian blur, warps by voxel coordinates, smooth random
fields, polynomial bias fields and low-resolution simulation, on ``(B, C, D, H, W)``
tensors on their own device. :mod:`napari_medattn.training.augment` assembles them into
transforms; :mod:`napari_medattn.training.synthesis` and ``lesions`` render images with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def uniform(generator: torch.Generator, shape: Sequence[int], low: float, high: float,
            device: torch.device | str) -> torch.Tensor:
    """Uniform numbers in ``[low, high)`` drawn on the generator's device, moved to ``device``."""
    values = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return (low + (high - low) * values).to(device)


def normal(generator: torch.Generator, shape: Sequence[int],
           device: torch.device | str) -> torch.Tensor:
    """Standard normal numbers drawn on the generator's device, moved to ``device``."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: torch.Tensor, sigma: Sequence[float] | float) -> torch.Tensor:
    """Separable Gaussian blur of every channel of a ``(B, C, D, H, W)`` tensor.

    Parameters
    ----------
    x : Tensor
        Float tensor, any device.
    sigma : float or sequence of 3 float
        Standard deviation in voxels per spatial axis; 0 leaves that axis alone.

    Returns
    -------
    Tensor
        Same shape; borders are extended by replication.
    """
    sigmas = [float(sigma)] * 3 if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    channels = x.shape[1]
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        kernel = _gaussian_kernel(s, x.dtype, x.device)
        radius = kernel.numel() // 2
        shape = [1, 1, 1]
        shape[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *shape).repeat(channels, 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad lists the last axis first
        x = F.conv3d(F.pad(x, pad, mode="replicate"), weight, groups=channels)
    return x


def identity_coordinates(shape: Sequence[int], device: torch.device | str,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel index coordinates ``(3, D, H, W)`` of a grid (channel ``a`` = index along axis a)."""
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def warp(x: torch.Tensor, coordinates: torch.Tensor, *, nearest: bool = False) -> torch.Tensor:
    """Sample ``x`` at voxel coordinates: ``out[b, :, p] = x[b, :, coordinates[b, :, p]]``.

    Parameters
    ----------
    x : Tensor
        ``(B, C, D, H, W)``; integer tensors (labels) are sampled nearest and keep dtype.
    coordinates : Tensor
        ``(B, 3, D', H', W')`` voxel indices into ``x`` along its three spatial axes (a
        pull-back map: identity coordinates plus a displacement in voxels).
    nearest : bool
        Nearest-neighbour sampling for float tensors too.

    Returns
    -------
    Tensor
        ``(B, C, D', H', W')``; 0 where the coordinates fall outside ``x``.
    """
    sizes = torch.tensor(x.shape[2:], dtype=coordinates.dtype, device=coordinates.device)
    # align_corners=True: -1 and +1 are the centres of the first and last voxels;
    # grid_sample wants the axes as (x=W, y=H, z=D), the reverse of array order.
    scale = (2.0 / (sizes - 1).clamp(min=1)).flip(0)
    grid = coordinates.permute(0, 2, 3, 4, 1).flip(-1) * scale - 1.0
    return sample_grid(x, grid, nearest=nearest)


def sample_grid(x: torch.Tensor, grid: torch.Tensor, *, nearest: bool = False) -> torch.Tensor:
    """grid_sample with 0 outside; integer tensors nearest, dtype kept."""
    integer = not torch.is_floating_point(x)
    source = x.float() if integer else x
    mode = "nearest" if (integer or nearest) else "bilinear"
    out = F.grid_sample(source, grid.to(source.dtype), mode=mode, padding_mode="zeros",
                        align_corners=True)
    return out.round().to(x.dtype) if integer else out


def smooth_field(generator: torch.Generator, batch: int, shape: Sequence[int],
                 control_spacing: float, magnitude: torch.Tensor | float,
                 device: torch.device | str) -> torch.Tensor:
    """A smooth random displacement field ``(B, 3, D, H, W)`` in voxels.

    Standard normal vectors on a control grid every ``control_spacing`` voxels are
    upsampled (trilinear) and blurred (sigma = ``control_spacing / 2``), then scaled so
    the largest displacement of each sample is ``magnitude`` voxels.

    Parameters
    ----------
    magnitude : float or Tensor of shape (B,)
        Largest displacement length per sample, in voxels.
    """
    coarse = [max(2, int(math.ceil(n / control_spacing)) + 1) for n in shape]
    field = normal(generator, (batch, 3, *coarse), device)
    field = F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)
    field = gaussian_blur(field, control_spacing / 2.0)
    largest = field.norm(dim=1).flatten(1).amax(1).clamp(min=1e-12)
    scale = torch.as_tensor(magnitude, dtype=field.dtype, device=field.device) / largest
    return field * scale.view(-1, 1, 1, 1, 1)


def bias_field(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A multiplicative bias ``exp(polynomial)`` of degree 3, ``(B, 1, D, H, W)``.

    Parameters
    ----------
    coefficients : Tensor ``(B, 20)``
        Coefficients of the 20 monomials ``z^i y^j x^k`` with ``i + j + k <= 3``, over
        coordinates scaled to ``[-1, 1]`` along each axis (ordering of :func:`bias_monomials`).
    shape : sequence of 3 int
    """
    powers = [torch.linspace(-1.0, 1.0, n, dtype=coefficients.dtype,
                             device=coefficients.device)[None] ** torch.arange(
                  4, dtype=coefficients.dtype, device=coefficients.device)[:, None]
              for n in shape]  # (4, n): 1, t, t^2, t^3 per axis
    # The polynomial is separable monomial by monomial: sum c_ijk z^i y^j x^k.
    table = torch.zeros(coefficients.shape[0], 4, 4, 4, dtype=coefficients.dtype,
                        device=coefficients.device)
    for m, (i, j, k) in enumerate(bias_monomials()):
        table[:, i, j, k] = coefficients[:, m]
    log_field = torch.einsum("bijk,id,jh,kw->bdhw", table, *powers)
    return torch.exp(log_field)[:, None]


def bias_monomials(degree: int = 3) -> list[tuple[int, int, int]]:
    """Exponents (i, j, k) of the polynomial terms of :func:`bias_field`, in its order."""
    return [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i)
            for k in range(degree + 1 - i - j)]


def simulate_low_resolution(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Downsample ``(1, C, D, H, W)`` by ``zoom`` (nearest) and back (trilinear), as nnU-Net.

    Parameters
    ----------
    zoom : float
        Fraction (0-1] of the voxels kept per axis; 1 returns ``x`` unchanged.
    """
    if zoom >= 1.0:
        return x
    small = [max(1, int(round(n * zoom))) for n in x.shape[2:]]
    low = F.interpolate(x, size=small, mode="nearest")
    return F.interpolate(low, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
