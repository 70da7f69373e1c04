"""Spatial transforms from fixed patient mm to moving patient mm (LPS).

Three kinds, all callables ``transform(points) -> points`` over ``(N, 3)`` LPS mm arrays:

* :class:`LinearTransform`: a 4x4 matrix (rigid, similarity or affine);
* :class:`DisplacementField`: ``x -> x + u(x)`` with ``u`` sampled on a grid in fixed
  space (``(3, *shape)`` mm, components LPS x, y, z) and linear interpolation between
  grid points; zero displacement outside the grid, as ITK's DisplacementFieldTransform;
* :class:`CompositeTransform`: a chain, applied in the order a fixed point meets them.

A stationary velocity field becomes a displacement field through :func:`exponentiate`
(scaling and squaring), which is diffeomorphic for a smooth enough velocity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from napari_medattn.errors import GeometryError
from napari_medattn.inference.resample import LINEAR, sample_points
from napari_medattn.io.volume import Volume

#: Linear transform kinds, from the most constrained.
LINEAR_KINDS = ("rigid", "similarity", "affine")


def _points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise GeometryError(f"Points must be an (N, 3) array of mm, got shape {points.shape}.")
    return points


@dataclasses.dataclass
class LinearTransform:
    """``y = matrix @ [x, 1]``: fixed LPS mm -> moving LPS mm.

    Parameters
    ----------
    matrix : (4, 4) ndarray
        Homogeneous matrix, last row ``[0, 0, 0, 1]``.
    kind : str
        ``"rigid"``, ``"similarity"`` or ``"affine"`` (what the matrix was fitted as).
    """

    matrix: np.ndarray
    kind: str = "affine"

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.matrix.shape != (4, 4) or not np.allclose(self.matrix[3], [0, 0, 0, 1]):
            raise GeometryError("A linear transform must be a 4x4 matrix with last row "
                                "[0, 0, 0, 1].")
        if abs(np.linalg.det(self.matrix[:3, :3])) < 1e-9:
            raise GeometryError("The linear transform is singular (it flattens space).")
        if self.kind not in LINEAR_KINDS:
            raise GeometryError(f"Linear transform kind must be one of {LINEAR_KINDS}, "
                                f"got {self.kind!r}.")

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = _points(points)
        return points @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def inverse(self) -> LinearTransform:
        """The exact inverse (moving mm -> fixed mm)."""
        return LinearTransform(np.linalg.inv(self.matrix), self.kind)

    @classmethod
    def identity(cls) -> LinearTransform:
        return cls(np.eye(4), "rigid")

    @classmethod
    def from_parameters(cls, rotation: Sequence[float] = (0, 0, 0),
                        translation: Sequence[float] = (0, 0, 0), scale: float = 1.0,
                        centre: Sequence[float] = (0, 0, 0)) -> LinearTransform:
        """Rotation (rotation vector, radians) and isotropic scale about ``centre`` (mm),
        then ``translation`` (mm): ``y = s R (x - c) + c + t``."""
        matrix = np.eye(4)
        matrix[:3, :3] = scale * Rotation.from_rotvec(np.asarray(rotation, float)).as_matrix()
        centre = np.asarray(centre, float)
        matrix[:3, 3] = centre - matrix[:3, :3] @ centre + np.asarray(translation, float)
        return cls(matrix, "rigid" if scale == 1.0 else "similarity")


@dataclasses.dataclass
class DisplacementField:
    """``y = x + u(x)``, ``u`` on a grid in fixed space.

    Parameters
    ----------
    displacement : (3, a0, a1, a2) ndarray
        Displacement in mm, components LPS x, y, z, at each grid voxel.
    affine : (4, 4) ndarray
        Grid index -> LPS mm (array-axis order, as :class:`Volume`).
    """

    displacement: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        self.displacement = np.asarray(self.displacement, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.displacement.ndim != 4 or self.displacement.shape[0] != 3:
            raise GeometryError(f"A displacement field must have shape (3, a0, a1, a2), got "
                                f"{self.displacement.shape}.")
        if not np.isfinite(self.displacement).all():
            raise GeometryError("The displacement field holds NaN or infinite values.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.displacement.shape[1:])

    def as_volume(self) -> Volume:
        """The field as a 4D Volume (components first) on its grid."""
        return Volume(self.displacement, self.affine, "OT", {"name": "displacement"})

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = _points(points)
        u = sample_points(self.as_volume(), points, order=LINEAR, mode="constant", cval=0.0)
        return points + u.T

    def grid_points(self) -> np.ndarray:
        """LPS mm of every grid voxel, ``(a0, a1, a2, 3)``."""
        return grid_points(self.affine, self.shape)

    def inverse(self, iterations: int = 30) -> tuple[DisplacementField, float]:
        """Inverse field on the same grid by fixed-point iteration
        ``v(y) = -u(y + v(y))``.

        Returns
        -------
        field : DisplacementField
            Approximates moving mm -> fixed mm.
        error_mm : float
            Largest ``|forward(inverse(y)) - y|`` in mm (0 for an exact inverse) over the
            grid's interior points (one voxel in from the border, where the field is cut
            to zero outside) whose image stays in that interior.
        """
        points = self.grid_points().reshape(-1, 3)
        field = self.as_volume()
        v = np.zeros_like(points)
        for _ in range(iterations):
            v = -sample_points(field, points + v, mode="constant").T
        inverse = DisplacementField(v.T.reshape(self.displacement.shape), self.affine)
        round_trip = self(inverse(points)) - points
        inside = _inside(self.affine, self.shape, inverse(points), margin=1) & _inside(
            self.affine, self.shape, points, margin=1)
        error = float(np.abs(round_trip[inside]).max()) if inside.any() else float("inf")
        return inverse, error


@dataclasses.dataclass
class CompositeTransform:
    """Transforms applied in the order a fixed point meets them:
    ``y = transforms[-1](... transforms[0](x))``."""

    transforms: list

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = _points(points)
        for transform in self.transforms:
            points = transform(points)
        return points


def compose(*transforms):
    """Chain transforms, the first applied first; linear neighbours multiply into one
    matrix (exact), so a chain of linear transforms stays a :class:`LinearTransform`."""
    chain: list = []
    for transform in transforms:
        parts = transform.transforms if isinstance(transform, CompositeTransform) else [transform]
        for part in parts:
            if chain and isinstance(part, LinearTransform) and isinstance(chain[-1],
                                                                         LinearTransform):
                previous = chain.pop()
                kind = max(previous.kind, part.kind, key=LINEAR_KINDS.index)
                part = LinearTransform(part.matrix @ previous.matrix, kind)
            chain.append(part)
    return chain[0] if len(chain) == 1 else CompositeTransform(chain)


def bake(transform, affine: np.ndarray, shape: tuple[int, int, int]) -> DisplacementField:
    """Any transform as one displacement field on the grid ``(affine, shape)``."""
    points = grid_points(affine, shape)
    moved = transform(points.reshape(-1, 3)).reshape(points.shape)
    return DisplacementField(np.moveaxis(moved - points, -1, 0), affine)


def exponentiate(velocity: np.ndarray, affine: np.ndarray, steps: int = 7
                 ) -> DisplacementField:
    """The displacement of a stationary velocity field's flow at time 1.

    Scaling and squaring (:func:`napari_medattn.registration.sampling.exponentiate`, the
    same code the optimiser runs): ``u = v / 2**steps``, then ``steps`` times
    ``u <- u + u o (x + u)``.

    Parameters
    ----------
    velocity : (3, a0, a1, a2) ndarray
        Velocity in mm, components LPS x, y, z, on the grid ``affine``.
    affine : (4, 4) ndarray
        Grid index -> LPS mm.
    steps : int
        Number of squarings.
    """
    import torch

    from napari_medattn.registration import sampling

    velocity = np.asarray(velocity, dtype=np.float32)
    shape = velocity.shape[1:]
    to_normalised = torch.as_tensor(sampling.mm_to_normalised(affine, shape), dtype=torch.float32)
    with torch.no_grad():
        u = sampling.exponentiate(torch.from_numpy(velocity),
                                  sampling.grid_points(affine, shape, torch.device("cpu")),
                                  to_normalised, steps)
    return DisplacementField(u.numpy(), affine)


def grid_points(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """LPS mm of every voxel of the grid ``(affine, shape)``, shape ``(*shape, 3)``."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape],
                                 indexing="ij"), -1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _inside(affine: np.ndarray, shape: tuple[int, ...], points: np.ndarray, margin: int = 0
            ) -> np.ndarray:
    to_index = np.linalg.inv(affine)
    index = points @ to_index[:3, :3].T + to_index[:3, 3]
    return np.all((index >= margin) & (index <= np.asarray(shape) - 1 - margin), axis=1)
