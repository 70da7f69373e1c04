"""Known deformations for tests, benchmarks and training pairs.

:func:`random_velocity` draws a smooth stationary velocity field; its exponential
(:func:`napari_medattn.registration.transforms.exponentiate`) is a diffeomorphism whose
exact inverse is the exponential of the negated velocity, so a pair made with it has a
known ground-truth transform in both directions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_velocity(shape: tuple[int, int, int], spacing_mm: float | np.ndarray, *,
                    magnitude_mm: float = 5.0, smoothness_mm: float = 12.0,
                    seed: int = 0) -> np.ndarray:
    """A smooth random velocity field ``(3, *shape)`` in mm.

    Parameters
    ----------
    shape : tuple of int
        Grid shape.
    spacing_mm : float or (3,) array
        Voxel size of the grid in mm per array axis.
    magnitude_mm : float
        Largest velocity component in mm (the displacement is of the same order).
    smoothness_mm : float
        Sigma in mm of the Gaussian that smooths white noise into the field.
    seed : int
        Seed of the noise (same seed, same field).
    """
    rng = np.random.default_rng(seed)
    sigma = smoothness_mm / np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
                      for _ in range(3)])
    return (field * (magnitude_mm / np.abs(field).max())).astype(np.float32)
