"""Differentiable sampling in patient mm for the optimiser (torch).

The optimiser needs gradients of the moved image with respect to the transform, so it
samples with ``torch.nn.functional.grid_sample`` (trilinear) on tensors; results that
leave the optimiser (the warped scan, labels) go through the package's one resampler,
:mod:`napari_medattn.inference.resample`. Both read the same geometry: a grid's affine
(index -> LPS mm, array-axis order), turned here into grid_sample's normalised
coordinates (``align_corners=True``: -1 and +1 are the centres of the first and last
voxels, components in reversed axis order).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_medattn.errors import GeometryError


def mm_to_normalised(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """4x4 map from LPS mm to grid_sample coordinates of the grid ``(affine, shape)``."""
    shape = np.asarray(shape, dtype=np.float64)
    if np.any(shape < 2):
        raise GeometryError(f"Registration needs at least 2 voxels along every axis, got "
                            f"{tuple(int(s) for s in shape)}.")
    scale = np.eye(4)
    scale[:3, :3] = np.diag(2.0 / (shape - 1))
    scale[:3, 3] = -1.0
    reverse = np.eye(4)[[2, 1, 0, 3]]
    return reverse @ scale @ np.linalg.inv(affine)


def grid_points(affine: np.ndarray, shape: tuple[int, ...], device: torch.device
                ) -> torch.Tensor:
    """LPS mm of every voxel of a grid as a ``(*shape, 3)`` float32 tensor."""
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in shape]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    a = torch.as_tensor(affine, dtype=torch.float64, device=device)
    return (index @ a[:3, :3].T + a[:3, 3]).float()


def sample(image: torch.Tensor, to_normalised: torch.Tensor, points: torch.Tensor,
           padding: str = "zeros") -> torch.Tensor:
    """Trilinear values of ``image`` (``(C, a0, a1, a2)``) at mm ``points`` (``(..., 3)``).

    Returns ``(C, ...)``; ``to_normalised`` comes from :func:`mm_to_normalised`.
    """
    spatial = points.shape[:-1]
    grid = points.reshape(1, -1, 1, 1, 3) @ to_normalised[:3, :3].T + to_normalised[:3, 3]
    values = F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding,
                           align_corners=True)
    return values.reshape(image.shape[0], *spatial)


def forward_differences(image: np.ndarray) -> np.ndarray:
    """``(3, a0, a1, a2)``: ``image[i + 1] - image[i]`` along each array axis (0 at the
    last index), the slopes of trilinear interpolation between grid points."""
    image = np.asarray(image, np.float32)
    out = np.zeros((3, *image.shape), np.float32)
    for axis in range(3):
        ahead = [slice(None)] * 3
        ahead[axis] = slice(0, -1)
        out[axis][tuple(ahead)] = np.diff(image, axis=axis)
    return out


def sample_with_gradient(stack: torch.Tensor, to_index: torch.Tensor, points: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trilinear values at mm ``points`` (``(N, 3)``) and their exact gradient per mm.

    ``stack`` is ``(4, 1, a0, a1, a2)``: the image and its :func:`forward_differences`;
    ``to_index`` the 4x4 map LPS mm -> array index. Along axis k the derivative of
    trilinear interpolation is the forward difference at the cell's lower corner along
    k, interpolated linearly along the other axes: one batched ``grid_sample`` gives all
    four (the value and the three slopes), the same numbers autograd would give without
    building a graph.

    Returns
    -------
    values : (N,) tensor
        Zero outside the grid.
    gradient : (N, 3) tensor
        d value / d point (LPS mm).
    inside : (N,) bool tensor
        Whether each point lies within the grid.
    """
    index = points @ to_index[:3, :3].T + to_index[:3, 3]
    size = torch.tensor(stack.shape[2:], dtype=index.dtype, device=index.device)
    axes = torch.arange(4, device=index.device)
    snap = (axes[:, None] == axes[None, 1:])[:, None, :]  # batch k + 1 snaps axis k
    corners = torch.where(snap, torch.floor(index), index)  # (4, N, 3)
    grid = (corners * (2 / (size - 1)) - 1).flip(-1)
    out = F.grid_sample(stack, grid[:, :, None, None, :], mode="bilinear",
                        padding_mode="zeros", align_corners=True).reshape(4, -1)
    inside = ((index >= 0) & (index <= size - 1)).all(-1)
    return out[0], out[1:].T @ to_index[:3, :3], inside


def exponentiate(velocity: torch.Tensor, points: torch.Tensor, to_normalised: torch.Tensor,
                 steps: int = 7) -> torch.Tensor:
    """Displacement ``(3, ...)`` in mm of the flow of a stationary velocity field at time 1.

    Scaling and squaring on the velocity's own grid (``points``, its voxel positions):
    ``u = v / 2**steps``, then ``steps`` times ``u <- u + u o (x + u)``.
    """
    u = velocity / 2 ** steps
    for _ in range(steps):
        u = u + sample(u, to_normalised, points + u.permute(1, 2, 3, 0), padding="border")
    return u


def gaussian_smooth(field: torch.Tensor, sigma_voxels: np.ndarray) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(C, a0, a1, a2)`` with per-axis sigma (voxels),
    borders replicated."""
    out = field[None]
    for axis, sigma in enumerate(sigma_voxels):
        if sigma <= 0:
            continue
        radius = max(1, int(np.ceil(3 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
        kernel = torch.exp(-0.5 * (x / float(sigma)) ** 2)
        kernel = kernel / kernel.sum()
        size = [1, 1, 1]
        size[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *size).repeat(field.shape[0], 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=field.shape[0])
    return out[0]
