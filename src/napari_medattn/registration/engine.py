"""The classical registration engine: multi-resolution optimisation in torch.

:func:`register` aligns a moving volume to a fixed one and returns a transform fixed mm ->
moving mm (the package convention). Linear methods (rigid, similarity, affine) optimise
a handful of parameters with L-BFGS; ``"deformable"`` runs an affine stage, then a
stationary velocity field on the fixed grid (diffeomorphic through scaling and squaring),
optimised with Adam under a Gaussian-smoothed parameterisation and a diffusion or
bending-energy penalty, coarse to fine. The code is device-agnostic (CPU, CUDA, MPS);
on CPU it is deterministic (fixed sample points, no atomics; the linear stage's metric
runs in serial compiled kernels there, :mod:`.linear_kernels`).

Every ``preview_every`` evaluations the engine hands a :class:`Snapshot` (the current
transform and metric) to ``callback`` and polls ``cancel``; a cancel raises
:class:`~napari_medattn.errors.Cancelled` carrying the last transform as ``partial``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from napari_medattn.errors import DimensionError, GeometryError
from napari_medattn.inference.resample import LINEAR, resample_to_grid, spacing_grid
from napari_medattn.io.volume import Volume
from napari_medattn.registration import optimise
from napari_medattn.registration.initialise import MODES, initial_transform
from napari_medattn.registration.similarity import METRICS
from napari_medattn.registration.transforms import (
    DisplacementField,
    LinearTransform,
    compose,
)

METHODS = ("rigid", "similarity", "affine", "deformable")
REGULARISERS = ("diffusion", "bending")
#: Smallest number of voxels a pyramid level keeps along an axis.
MIN_LEVEL_VOXELS = 8


@dataclasses.dataclass
class Settings:
    """Registration parameters.

    Attributes
    ----------
    method : str
        ``"rigid"``, ``"similarity"``, ``"affine"`` or ``"deformable"``.
    metric : str
        ``"mse"``, ``"ncc"`` (local, window ``2 radius + 1`` voxels) or ``"mi"`` (Mattes).
    levels : tuple of int
        Shrink factors of the pyramid, coarse to fine (each level smooths with a Gaussian
        of ``factor / 2`` voxels before shrinking).
    iterations : int
        Most L-BFGS iterations per level for the linear stage.
    deformable_iterations : tuple of int
        Adam iterations of the deformable stage at each level (same length as ``levels``).
        The default spends few where an iteration is dearest: on the 2 mm MNI152 pair of
        docs/benchmarks/registration.md, (80, 20, 5) reaches Dice within 0.02 of
        (80, 40, 20) in 38 % of its time.
    regularisation : str
        ``"diffusion"`` (squared first derivatives of the velocity, per mm) or
        ``"bending"`` (squared second derivatives).
    weight : float
        Weight of the regularisation term against the similarity.
    smoothing_mm : float
        Sigma (mm) of the Gaussian that parameterises the velocity field (its smoothness).
    learning_rate : float
        Adam step of the velocity, as a fraction of the level's voxel size.
    initialise : str
        ``"none"``, ``"geometry"``, ``"mass"`` or ``"moments"``.
    bins, radius : int
        Mattes MI histogram bins; local NCC window radius (voxels).
    samples : int
        Fixed voxels sampled per level for the linear stage (all if fewer). 8,000 (elastix
        draws 2,048 per iteration) kept TRE at 0.004-0.027 mm on the nibabel pairs of
        docs/benchmarks/registration.md (SimpleITK on every voxel: 0.018-1.26 mm) at
        about three quarters of the time of 20,000.
    tolerance : float
        Stop a level when the loss changes less than this between iterations.
    steps : int
        Scaling-and-squaring steps of the velocity exponential.
    preview_every : int
        Evaluations between snapshots and cancel checks.
    device : str
        Torch device (``"cpu"``, ``"cuda"``, ``"mps"``).
    seed : int
        Seed of the sample-point choice (results are deterministic on CPU).
    """

    method: str = "rigid"
    metric: str = "mse"
    levels: tuple[int, ...] = (4, 2, 1)
    iterations: int = 20
    deformable_iterations: tuple[int, ...] = (80, 20, 5)
    regularisation: str = "diffusion"
    weight: float = 2.0
    smoothing_mm: float = 4.0
    learning_rate: float = 0.25
    initialise: str = "geometry"
    bins: int = 32
    radius: int = 2
    samples: int = 8_000
    tolerance: float = 1e-6
    steps: int = 7
    preview_every: int = 5
    device: str = "cpu"
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`GeometryError` naming the first invalid setting."""
        for name, value, allowed in (("method", self.method, METHODS),
                                     ("metric", self.metric, METRICS),
                                     ("regularisation", self.regularisation, REGULARISERS),
                                     ("initialise", self.initialise, MODES)):
            if value not in allowed:
                raise GeometryError(f"The {name} must be one of {', '.join(allowed)}; got "
                                    f"{value!r}.")
        if not self.levels or any(int(f) < 1 for f in self.levels):
            raise GeometryError(f"Pyramid levels must be shrink factors >= 1, got "
                                f"{self.levels}.")
        if self.method == "deformable" and len(self.deformable_iterations) != len(self.levels):
            raise GeometryError("Give one deformable iteration count per pyramid level.")


@dataclasses.dataclass
class Snapshot:
    """The optimiser's state handed to the preview callback."""

    stage: str
    level: int
    iteration: int
    loss: float
    transform: object


@dataclasses.dataclass
class Result:
    """A registration result.

    Attributes
    ----------
    transform : LinearTransform or CompositeTransform
        Fixed mm -> moving mm: ``compose(field, linear)`` for deformable runs.
    linear : LinearTransform
        The linear part.
    field : DisplacementField or None
        The deformable part (fixed mm -> fixed mm, applied before ``linear``).
    velocity : ndarray or None
        The stationary velocity ``(3, *field grid)`` mm whose exponential is ``field``.
    loss_before, loss_after : float
        The metric at the finest level before (initial transform) and after (on the
        sample points of the linear stage for linear methods, on every voxel for
        deformable ones).
    history : list of (stage, level, iteration, loss)
    seconds : float
        Wall time of the run.
    """

    transform: object
    linear: LinearTransform
    field: DisplacementField | None
    velocity: np.ndarray | None
    loss_before: float
    loss_after: float
    history: list
    seconds: float


@dataclasses.dataclass
class Level:
    """One pyramid level of one image: normalised intensities on a grid."""

    data: np.ndarray
    affine: np.ndarray


def register(fixed: Volume, moving: Volume, settings: Settings | None = None, *,
             initial: LinearTransform | None = None,
             initial_velocity: np.ndarray | None = None, fixed_mask: Volume | None = None,
             progress: Callable[[int, int], None] | None = None,
             cancel: Callable[[], bool] | None = None,
             callback: Callable[[Snapshot], None] | None = None) -> Result:
    """Register ``moving`` to ``fixed``: find the transform fixed mm -> moving mm.

    Parameters
    ----------
    fixed, moving : Volume
        3D scans on any grids (orientation, voxel order and spacing are read from their
        affines; results do not depend on them).
    settings : Settings, optional
        Method, metric, pyramid and optimiser settings (defaults: rigid, MSE).
    initial : LinearTransform, optional
        Starting transform (e.g. from landmarks); replaces ``settings.initialise``.
    initial_velocity : (3, a0, a1, a2) ndarray, optional
        Deformable runs only: a stationary velocity (mm, components LPS x, y, z) on the
        fixed scan's grid to start from, e.g. a network's output ("learned + refine").
        It was found after the linear transform ``initial``, which is therefore required
        and kept as the linear part (the linear stage is skipped); the optimiser adds a
        smooth correction to it and regularises their sum. A start that is already close
        wants small steps (``learning_rate`` about 0.05 instead of 0.25): Adam's first
        steps are about ``learning_rate`` voxels whatever the gradient.
    fixed_mask : Volume, optional
        Label map on the fixed grid; only voxels > 0 count in the metric.
    progress : callable, optional
        ``progress(done, total)`` in optimiser evaluations.
    cancel : callable, optional
        Polled every ``preview_every`` evaluations; when true the run stops and raises
        :class:`~napari_medattn.errors.Cancelled` with the last transform as ``partial``.
    callback : callable, optional
        Receives a :class:`Snapshot` every ``preview_every`` evaluations.

    Returns
    -------
    Result

    Raises
    ------
    DimensionError
        4D or 2D input, NaN/infinite voxels, an empty mask.
    GeometryError
        Invalid settings, or no overlap in patient space after initialisation.
    RegistrationError
        The optimisation diverged (non-finite or worsening metric, exploding det J).
    """
    settings = settings or Settings()
    settings.check()
    start = time.perf_counter()
    fixed_data = _checked(fixed, "fixed")
    moving_data = _checked(moving, "moving")
    mask = _checked_mask(fixed_mask, fixed) if fixed_mask is not None else None
    start_velocity = (_checked_velocity(initial_velocity, fixed, settings, initial)
                      if initial_velocity is not None else None)
    fixed_levels = pyramid(normalise_intensities(fixed_data), fixed.affine, settings.levels)
    moving_levels = pyramid(normalise_intensities(moving_data), moving.affine, settings.levels)
    mask_levels = _mask_pyramid(mask, fixed.affine, fixed_levels) if mask is not None else None
    if initial is None:
        coarse_f, coarse_m = fixed_levels[0], moving_levels[0]
        initial = initial_transform(settings.initialise, coarse_f.data, coarse_f.affine,
                                    coarse_m.data, coarse_m.affine)
    run = optimise.Run(fixed_levels, moving_levels, mask_levels, settings, progress, cancel,
                       callback)
    run.check_overlap(initial)
    if start_velocity is not None:
        linear = initial
    else:
        kind = "affine" if settings.method == "deformable" else settings.method
        # The affine stage before a deformable one uses Mattes MI on sampled points when
        # the deformable metric is local NCC (which needs every voxel): it is many times
        # cheaper and as accurate for a global fit.
        linear_metric = "mi" if settings.method == "deformable" and settings.metric == "ncc" \
            else settings.metric
        linear, loss_before, loss_after = run.linear_stage(initial, kind, linear_metric)
    field = velocity = None
    transform = linear
    if settings.method == "deformable":
        loss_before = run.evaluate(initial)
        velocity, field, loss_after = run.deformable_stage(linear, start_velocity)
        transform = compose(field, linear)
    return Result(transform, linear, field, velocity, loss_before, loss_after, run.history,
                  time.perf_counter() - start)


def _checked(volume: Volume, role: str) -> np.ndarray:
    if volume.data.ndim != 3:
        raise DimensionError(f"The {role} scan is 4D (shape {volume.data.shape}); register "
                             f"one 3D frame at a time.")
    if min(volume.spatial_shape) < 2:
        raise DimensionError(f"The {role} scan is 2D (shape {volume.spatial_shape}); both "
                             f"scans must be 3D volumes.")
    data = np.asarray(volume.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DimensionError(f"The {role} scan has NaN or infinite voxels; replace them "
                             f"(e.g. by 0) before registering.")
    return data


def _checked_velocity(velocity: np.ndarray, fixed: Volume, settings: Settings,
                      initial: LinearTransform | None) -> tuple[np.ndarray, np.ndarray]:
    """The starting velocity and its grid (the fixed scan's), checked."""
    if settings.method != "deformable":
        raise GeometryError("A starting velocity needs the deformable method.")
    if initial is None:
        raise GeometryError("A starting velocity needs the linear transform it was found "
                            "after (pass it as initial).")
    velocity = np.asarray(velocity, dtype=np.float32)
    if velocity.shape != (3, *fixed.spatial_shape):
        raise GeometryError(f"The starting velocity must be (3, *fixed grid) = "
                            f"{(3, *fixed.spatial_shape)}, got {velocity.shape}.")
    if not np.isfinite(velocity).all():
        raise DimensionError("The starting velocity has NaN or infinite values.")
    return velocity, fixed.affine


def _checked_mask(mask: Volume, fixed: Volume) -> np.ndarray:
    if mask.spatial_shape != fixed.spatial_shape or not np.allclose(
            mask.affine, fixed.affine, atol=1e-4):
        raise GeometryError("The mask is not on the fixed scan's grid.")
    data = np.asarray(mask.data) > 0
    if not data.any():
        raise DimensionError("The mask is empty; draw a region or register without a mask.")
    return data


def normalise_intensities(data: np.ndarray) -> np.ndarray:
    """Intensities mapped so that the 0.5th and 99.5th percentiles become 0 and 1 (the
    similarity losses and step sizes then mean the same for CT, MR and PET)."""
    sample = data.reshape(-1)[:: max(1, data.size // 200_000)]
    low, high = np.percentile(sample, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    return (data - np.float32(low)) / np.float32(high - low)


def pyramid(data: np.ndarray, affine: np.ndarray, factors: tuple[int, ...]) -> list[Level]:
    """Smoothed and shrunk copies of an image, one per shrink factor, through the one
    resampler (each axis keeps at least :data:`MIN_LEVEL_VOXELS` voxels)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    extent = spacing * np.asarray(data.shape)
    levels = []
    for factor in factors:
        target = np.minimum(spacing * factor, extent / MIN_LEVEL_VOXELS)
        target = np.maximum(target, spacing)
        if np.allclose(target, spacing):
            levels.append(Level(data, affine))
            continue
        sigma = 0.5 * target / spacing
        smoothed = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
        grid_affine, shape = spacing_grid(affine, data.shape, tuple(target))
        level = resample_to_grid(Volume(smoothed, affine), grid_affine, shape, order=LINEAR)
        levels.append(Level(np.asarray(level.data, np.float32), grid_affine))
    return levels


def _mask_pyramid(mask: np.ndarray, affine: np.ndarray, fixed_levels: list[Level]
                  ) -> list[np.ndarray]:
    """The fixed mask on every pyramid level (voxels at least half inside)."""
    source = Volume(mask.astype(np.float32), affine)
    return [np.asarray(resample_to_grid(source, level.affine, level.data.shape).data) > 0.5
            for level in fixed_levels]
