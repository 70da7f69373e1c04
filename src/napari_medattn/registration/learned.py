"""Learned deformable registration: a network predicts the velocity field in one pass.

:func:`register_learned` runs three steps and returns the engine's
:class:`~napari_medattn.registration.engine.Result`, so warping, QA, ITK files and the
widget treat it like a classical result:

1. an affine pre-alignment by the classical engine (Mattes MI);
2. the network (a registration model: ``task == "registration"`` in its card, e.g. the
   TransMorph-style ``transmorph-brain-2mm`` or the VoxelMorph-style
   ``voxelmorph-brain-2mm``) reads the fixed scan and the affinely moved moving scan on the
   grid its card prescribes (the card's orientation and spacing over the fixed field of
   view, so the result does not depend on the fixed file's voxel order), intensities
   normalised as the engine does, and predicts a stationary velocity field; its exponential
   (:func:`~napari_medattn.registration.transforms.exponentiate`, scaling and squaring) is
   the diffeomorphic deformable part;
3. optionally ("learned + refine") a few classical deformable iterations that start from
   the network's velocity (``engine.register(..., initial_velocity=...)``), with the
   metric the modality-pair table gives
   (:func:`~napari_medattn.registration.defaults.defaults_for`: local NCC within one
   contrast, Mattes MI across contrasts) and a firmer regularisation
   (:func:`refine_settings`).

The transform is ``compose(field, linear)``: fixed mm -> moving mm, as every result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from napari_medattn.errors import Cancelled, GeometryError, ModelError
from napari_medattn.inference.preprocess import reorient
from napari_medattn.inference.resample import (
    LINEAR,
    resample_through,
    resample_to_grid,
    sample_points,
    spacing_grid,
)
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard
from napari_medattn.registration import similarity
from napari_medattn.registration.defaults import contrast_of, defaults_for
from napari_medattn.registration.engine import Result, Settings, Snapshot, normalise_intensities, register
from napari_medattn.registration.transforms import (
    DisplacementField,
    LinearTransform,
    compose,
    exponentiate,
)

#: The model run when none is named.
DEFAULT_MODEL = "transmorph-brain-2mm"
#: Share of the progress bar each stage takes: affine, network, refinement.
_SHARES = (0.3, 0.1, 0.6)
#: Factor on the modality-pair table's regularisation weight for the refinement: it
#: corrects a start that is already close and should not pull far. On the held-out
#: cross-contrast pair of docs/benchmarks/registration.md (20 iterations, 2026-12-03,
#: loaded CPU) the table's own settings folded 0.21 % of the voxels, twice the weight
#: none, at a mean tissue Dice 0.006 lower (0.864 against 0.870). Smaller Adam steps
#: (0.05 voxel instead of 0.25) folded more: 0.35 % alone, 0.066 % with twice the weight.
REFINE_WEIGHT_FACTOR = 2.0


def network_velocity(net: nn.Module, fixed: torch.Tensor, moving: torch.Tensor,
                     affine: np.ndarray) -> torch.Tensor:
    """A registration net's velocity for one pair on one grid, in mm.

    Parameters
    ----------
    net : nn.Module
        A registration network: ``(1, 2, *grid)`` in, ``(1, 3, *grid)`` out, the velocity in
        voxels of the grid along its array axes.
    fixed, moving : torch.Tensor
        ``(*grid)`` normalised intensities on the same grid.
    affine : (4, 4) ndarray
        The grid's index -> LPS mm.

    Returns
    -------
    torch.Tensor
        ``(3, *grid)`` velocity in mm, components LPS x, y, z (differentiable).
    """
    voxels = net(torch.stack([fixed, moving])[None])[0]
    to_mm = torch.as_tensor(np.asarray(affine)[:3, :3], dtype=voxels.dtype,
                            device=voxels.device)
    return torch.einsum("ij,j...->i...", to_mm, voxels)


def model_grid(fixed: Volume, card: ModelCard) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid a registration card prescribes over the fixed scan's field of view: the
    card's orientation (array axes towards its letters) and spacing (mm)."""
    work = reorient(fixed, card.orientation)[0] if card.orientation else fixed
    if card.spacing is None:
        return work.affine, work.spatial_shape
    return spacing_grid(work.affine, work.spatial_shape, card.spacing)


def predict_field(net: nn.Module, card: ModelCard, fixed: Volume, moving: Volume,
                  linear: LinearTransform, device: str = "cpu"
                  ) -> tuple[np.ndarray, DisplacementField]:
    """The network's step of :func:`register_learned`: velocity and deformation of a pair.

    Parameters
    ----------
    net : nn.Module
        A registration network (in eval mode).
    card : ModelCard
        Its card (orientation and spacing of the model grid).
    fixed, moving : Volume
        Normalised intensities (as the engine normalises), each on its own grid.
    linear : LinearTransform
        The affine pre-alignment, fixed mm -> moving mm.
    device : str
        Torch device of the network.

    Returns
    -------
    velocity : (3, *model grid) ndarray
        Stationary velocity in mm (LPS components) on the model grid over the fixed scan.
    field : DisplacementField
        Its exponential (scaling and squaring): fixed mm -> fixed mm, applied before
        ``linear``.
    """
    grid_affine, grid_shape = model_grid(fixed, card)
    on_grid = [resample_to_grid(fixed, grid_affine, grid_shape, order=LINEAR).data,
               resample_through(moving, grid_affine, grid_shape, linear, order=LINEAR).data]
    torch_device = torch.device(device)
    pair = [torch.as_tensor(np.ascontiguousarray(a), device=torch_device) for a in on_grid]
    net = net.to(torch_device)
    with torch.no_grad():
        velocity = network_velocity(net, *pair, grid_affine).cpu().numpy()
    return velocity, exponentiate(velocity, grid_affine)


def _stage(progress: Callable[[int, int], None] | None, start: float, share: float
           ) -> Callable[[int, int], None] | None:
    """``progress(done, total)`` of one stage mapped onto its share of 0..1000."""
    if progress is None:
        return None
    return lambda done, total: progress(int(1000 * (start + share * done / max(total, 1))),
                                        1000)


def _check_cancel(cancel: Callable[[], bool] | None, partial: object) -> None:
    if cancel is not None and cancel():
        error = Cancelled("Registration cancelled.")
        error.partial = partial
        raise error


def register_learned(fixed: Volume, moving: Volume, *, model: str = DEFAULT_MODEL,
                     refine_iterations: int = 0, metric: str | None = None,
                     device: str = "cpu",
                     progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None,
                     callback: Callable[[Snapshot], None] | None = None) -> Result:
    """Register ``moving`` to ``fixed`` with a registration network (fixed mm -> moving mm).

    Parameters
    ----------
    fixed, moving : Volume
        3D scans on any grids (brain MR of any contrast for the shipped models).
    model : str
        A registration model: a name from :func:`~napari_medattn.models.registry.list_models`
        or a model folder.
    refine_iterations : int
        Classical deformable iterations started from the network's velocity, at the
        finest level (and twice as many at half resolution before it); 0 for the network
        alone.
    metric : str, optional
        Similarity of the refinement (``"mse"``, ``"ncc"``, ``"mi"``); by default the
        deformable metric of the modality-pair table for the two scans' contrasts
        (:func:`~napari_medattn.registration.defaults.contrast_of`): local NCC within
        one contrast, Mattes MI across contrasts or when a contrast is unknown.
    device : str
        Torch device of the network and the refinement (``"cpu"``, ``"cuda"``, ``"mps"``).
    progress : callable, optional
        ``progress(done, total)`` over the whole run.
    cancel : callable, optional
        Polled by the classical stages and between stages; when true the run raises
        :class:`~napari_medattn.errors.Cancelled` with the last transform as ``partial``.
    callback : callable, optional
        Receives a :class:`~napari_medattn.registration.engine.Snapshot` from the classical
        stages and one (stage ``"learned"``) with the network's result.

    Returns
    -------
    Result
        ``transform = compose(field, linear)``; ``field`` and ``velocity`` on the model grid
        (or, refined, on the engine's control grid); ``loss_before`` and ``loss_after`` are
        Mattes MI losses at 20,000 fixed voxels after the affine and after the deformation
        (refined: the refinement's metric before and after it).

    Raises
    ------
    ModelError
        The model is unknown or is not a registration model.
    GeometryError
        A negative ``refine_iterations``.
    DimensionError, GeometryError, RegistrationError
        As :func:`~napari_medattn.registration.engine.register` (4D/2D input, NaN, no
        overlap, divergence).
    """
    from napari_medattn.models.cache import model_cache

    start = time.perf_counter()
    if refine_iterations < 0:
        raise GeometryError(f"refine_iterations must be 0 or more, got {refine_iterations}.")
    held = model_cache.load(model)
    card = held.card
    if card.task != "registration":
        raise ModelError(f"The model {card.name!r} is a {card.task} model; choose a "
                         f"registration model such as {DEFAULT_MODEL!r}.")
    if card.orientation and np.asarray(fixed.data).ndim == 3:
        # Every stage sees the fixed scan in the card's array order (a view, same voxels,
        # exact affine): the affine stage samples fixed voxels, so without this a flipped
        # file would give a (slightly) different pre-alignment.
        fixed = reorient(fixed, card.orientation)[0]
    affine_run = register(fixed, moving, Settings(method="affine", metric="mi", device=device),
                          progress=_stage(progress, 0.0, _SHARES[0]), cancel=cancel,
                          callback=callback)
    linear = affine_run.linear
    _check_cancel(cancel, linear)
    normalised = [Volume(normalise_intensities(np.asarray(v.data, np.float32)), v.affine)
                  for v in (fixed, moving)]
    with held.lease(cancel):
        velocity, field = predict_field(held.module, card, *normalised, linear, device)
    transform = compose(field, linear)
    loss_before, loss_after = _mi_losses(*normalised, linear, transform)
    history = [*affine_run.history, ("learned", 0, len(affine_run.history) + 1, loss_after)]
    if progress is not None:
        progress(int(1000 * (_SHARES[0] + _SHARES[1])), 1000)
    if callback is not None:
        callback(Snapshot("learned", 0, len(history), loss_after, transform))
    if refine_iterations == 0:
        if progress is not None:
            progress(1000, 1000)
        return Result(transform, linear, field, velocity, loss_before, loss_after, history,
                      time.perf_counter() - start)
    _check_cancel(cancel, transform)
    on_fixed = resample_to_grid(Volume(velocity, field.affine), fixed.affine,
                                fixed.spatial_shape, order=LINEAR).data
    settings = refine_settings(fixed, moving, refine_iterations, metric, device)
    refined = register(fixed, moving, settings, initial=linear, initial_velocity=on_fixed,
                       progress=_stage(progress, sum(_SHARES[:2]), _SHARES[2]),
                       cancel=cancel, callback=callback)
    return Result(refined.transform, linear, refined.field, refined.velocity,
                  refined.loss_before, refined.loss_after, history + refined.history,
                  time.perf_counter() - start)


def refine_settings(fixed: Volume, moving: Volume, iterations: int,
                    metric: str | None = None, device: str = "cpu") -> Settings:
    """The refinement's engine settings: the modality-pair table's deformable row
    (metric unless ``metric`` is given, regulariser, smoothness), two levels (half and
    full resolution, ``2 iterations`` and ``iterations`` Adam steps) and
    :data:`REFINE_WEIGHT_FACTOR` times the table's regularisation weight."""
    table = defaults_for(contrast_of(fixed), contrast_of(moving), "deformable")
    return dataclasses.replace(table, metric=metric or table.metric, levels=(2, 1),
                               deformable_iterations=(2 * iterations, iterations),
                               weight=REFINE_WEIGHT_FACTOR * table.weight, device=device)


def _mi_losses(fixed: Volume, moving: Volume, linear: LinearTransform, transform,
               samples: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Mattes MI losses of the (normalised) moving scan after ``linear`` and after
    ``transform`` at ``samples`` fixed voxels drawn with ``seed`` (as the engine's linear
    stage samples; every voxel would cost seconds); voxels whose moving point falls outside
    the moving scan do not count."""
    rng = np.random.default_rng(seed)
    data = np.asarray(fixed.data)
    chosen = rng.choice(data.size, size=min(samples, data.size), replace=False)
    index = np.stack(np.unravel_index(chosen, data.shape), -1).astype(np.float64)
    points = index @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    values = torch.as_tensor(data.reshape(-1)[chosen], dtype=torch.float32)
    losses = []
    for through in (linear, transform):
        moved = torch.as_tensor(sample_points(moving, through(points), cval=np.nan))
        inside = torch.isfinite(moved)
        losses.append(float(similarity.loss("mi", values, torch.nan_to_num(moved),
                                            inside.to(values.dtype))))
    return losses[0], losses[1]
