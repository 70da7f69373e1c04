"""The optimisation loops of :func:`napari_medattn.registration.engine.register`.

A :class:`Run` holds the two pyramids as tensors and runs the linear stage (L-BFGS over
rigid / similarity / affine parameters, level by level) and the deformable stage (Adam
over a stationary velocity field on the fixed grid). Parameters are scaled so that one
unit moves a point about 1 mm: rotations and linear terms are divided by the fixed field
of view's radius. On CPU the linear stage's MSE and Mattes MI (value and gradient) run
in the compiled kernels of :mod:`.linear_kernels`; elsewhere in torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from napari_medattn.inference.resample import spacing_grid
from napari_medattn.errors import Cancelled, GeometryError, RegistrationError
from napari_medattn.registration import linear_kernels, similarity
from napari_medattn.registration.initialise import fov_centre
from napari_medattn.registration.sampling import (
    exponentiate,
    forward_differences,
    gaussian_smooth,
    grid_points,
    mm_to_normalised,
    sample,
    sample_with_gradient,
)
from napari_medattn.registration.transforms import DisplacementField, LinearTransform, compose

#: Parameters of each linear kind: translation (3), then rotation (3) [+ log scale (1)]
#: or the 9 entries of the linear part.
PARAMETERS = {"rigid": 6, "similarity": 7, "affine": 12}
#: Least fraction of the fixed field of view that must land in the moving one.
MIN_OVERLAP = 0.05
#: Adam iterations without a relative improvement of ``tolerance`` before a level stops.
PATIENCE = 15


class Run:
    """One registration run over prepared pyramids (see :func:`engine.register`)."""

    def __init__(self, fixed_levels, moving_levels, mask_levels, settings,
                 progress: Callable | None, cancel: Callable | None,
                 callback: Callable | None) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        self.fixed_levels = fixed_levels
        self.moving_levels = moving_levels
        self.mask_levels = mask_levels
        self.progress, self.cancel, self.callback = progress, cancel, callback
        self.history: list[tuple[str, int, int, float]] = []
        self.evaluations = 0
        linear_evaluations = int(1.25 * settings.iterations) * len(fixed_levels)
        deformable = sum(settings.deformable_iterations) if settings.method == "deformable" else 0
        self.total = linear_evaluations + deformable
        finest = fixed_levels[-1]
        self.centre = fov_centre(finest.affine, finest.data.shape)
        extent = np.linalg.norm(finest.affine[:3, :3], axis=0) * np.asarray(finest.data.shape)
        self.radius = float(np.linalg.norm(extent) / 4)
        self.last_transform: object = None
        #: Whether the linear stage runs the compiled CPU kernels (MSE, Mattes MI).
        self.compiled = self.device.type == "cpu"

    # -- shared pieces -------------------------------------------------------------------

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32,
                               device=self.device)

    def _level(self, index: int, subsample: bool, gradient: bool = False):
        """Fixed points and values, their weights, and the moving image of one level
        (with its gradient in mm as channels 1-3 when ``gradient``)."""
        fixed, moving = self.fixed_levels[index], self.moving_levels[index]
        points = grid_points(fixed.affine, fixed.data.shape, self.device)
        values = self._tensor(fixed.data)
        weight = (self._tensor(self.mask_levels[index]) if self.mask_levels is not None
                  else torch.ones_like(values))
        if subsample and values.numel() > self.settings.samples:
            generator = torch.Generator().manual_seed(self.settings.seed + index)
            chosen = torch.randperm(values.numel(), generator=generator)[:self.settings.samples]
            chosen = chosen.to(self.device)
            points = points.reshape(-1, 3)[chosen]
            values, weight = values.reshape(-1)[chosen], weight.reshape(-1)[chosen]
        if gradient:  # the closed-form path: image and slopes, mm -> index
            stack = np.concatenate([moving.data[None], forward_differences(moving.data)])
            return (points, values, weight, self._tensor(stack)[:, None],
                    self._tensor(np.linalg.inv(moving.affine)))
        image = self._tensor(moving.data)[None]
        to_normalised = self._tensor(mm_to_normalised(moving.affine, moving.data.shape))
        return points, values, weight, image, to_normalised

    def _loss(self, level, moving_points: torch.Tensor, metric: str | None = None
              ) -> torch.Tensor:
        to_normalised = level[4]
        grid = moving_points @ to_normalised[:3, :3].T + to_normalised[:3, 3]
        return self._loss_on_grid(level, grid, metric)

    def _loss_on_grid(self, level, grid: torch.Tensor, metric: str | None = None
                      ) -> torch.Tensor:
        """The metric of the moving image read at ``grid`` (its grid_sample coordinates,
        ``(..., 3)`` in the shape of the level's fixed values)."""
        _, values, weight, image, _ = level
        moved = F.grid_sample(image[None], grid.reshape(1, -1, 1, 1, 3), mode="bilinear",
                              padding_mode="zeros", align_corners=True).reshape(values.shape)
        inside = (grid.abs() <= 1.0).all(-1).to(values.dtype)
        return similarity.loss(metric or self.settings.metric, values, moved, weight * inside,
                               bins=self.settings.bins, radius=self.settings.radius)

    def _linear_level(self, index: int, metric: str) -> tuple:
        """The linear stage's data at a level, in the form :meth:`_linear_loss` takes.

        For the compiled kernels (CPU, MSE and Mattes MI): numpy sample points, values and
        weights, the C-ordered moving image and its mm -> index map. On other devices the
        torch level with the moving image's slopes; for local NCC the whole level."""
        if metric == "ncc":
            return self._level(index, subsample=False)
        if not self.compiled:
            return self._level(index, subsample=True, gradient=True)
        points, values, weight = (t.numpy() for t in self._level(index, subsample=True)[:3])
        moving = self.moving_levels[index]
        return (points.reshape(-1, 3), values.reshape(-1), weight.reshape(-1),
                np.ascontiguousarray(moving.data, dtype=np.float32),
                np.linalg.inv(moving.affine))

    def _linear_loss(self, level: tuple, matrix: np.ndarray, metric: str
                     ) -> tuple[float, np.ndarray]:
        """The loss of a 4x4 ``matrix`` (float64) and its gradient with respect to the
        matrix, on a level from :meth:`_linear_level`.

        MSE and Mattes MI take the closed form: on CPU the compiled kernels of
        :mod:`.linear_kernels` (a torch evaluation here is dozens of small operations
        whose overhead sets the time), elsewhere :func:`similarity.loss_and_gradient`
        chained through the exact slopes of the trilinear interpolation, so L-BFGS's line
        search sees the true gradient either way; local NCC, which needs whole volumes,
        goes through autograd."""
        if metric == "ncc":
            leaf = self._tensor(matrix).requires_grad_(True)
            loss = self._loss(level, level[0] @ leaf[:3, :3].T + leaf[:3, 3], metric)
            gradient, = torch.autograd.grad(loss, leaf)
            return float(loss.detach()), gradient.double().cpu().numpy()
        if self.compiled:
            return linear_kernels.loss_and_gradient(metric, *level, matrix,
                                                    bins=self.settings.bins)
        points, values, weight, stack, to_index = level
        points = points.reshape(-1, 3)
        tensor = self._tensor(matrix)
        moved, slopes, inside = sample_with_gradient(
            stack, to_index, points @ tensor[:3, :3].T + tensor[:3, 3])
        loss, slope = similarity.loss_and_gradient(metric, values.reshape(-1), moved,
                                                   weight.reshape(-1) * inside,
                                                   bins=self.settings.bins)
        along = slope[:, None] * slopes  # dloss / d(moved point), (N, 3)
        gradient = np.zeros((4, 4))
        gradient[:3, :3] = (along.T @ points).double().cpu().numpy()
        gradient[:3, 3] = along.sum(0).double().cpu().numpy()
        return float(loss), gradient

    def _tick(self, stage: str, level: int, loss: float, transform: Callable[[], object]
              ) -> None:
        """Record an evaluation; every ``preview_every`` report, preview and poll cancel."""
        if not np.isfinite(loss):
            raise RegistrationError(f"The registration diverged (the {stage} metric became "
                                    f"{loss}); try another metric or fewer levels.")
        self.evaluations += 1
        self.history.append((stage, level, self.evaluations, loss))
        if self.evaluations % self.settings.preview_every:
            return
        if self.callback is not None or self.cancel is not None:
            # Only a preview or a cancel needs it (building it is a tenth of a linear
            # evaluation).
            self.last_transform = transform()
        if self.progress is not None:
            self.progress(min(self.evaluations, self.total), self.total)
        if self.callback is not None:
            from napari_medattn.registration.engine import Snapshot

            self.callback(Snapshot(stage, level, self.evaluations, loss, self.last_transform))
        if self.cancel is not None and self.cancel():
            error = Cancelled("Registration cancelled.")
            error.partial = self.last_transform
            raise error

    def check_overlap(self, initial: LinearTransform) -> None:
        """Refuse to start when the initial transform sends (almost) no fixed voxel into the
        moving image."""
        points, _, _, _, to_normalised = self._level(0, subsample=False)
        matrix = self._tensor(initial.matrix)
        moved = points.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
        grid = moved @ to_normalised[:3, :3].T + to_normalised[:3, 3]
        fraction = float((grid.abs() <= 1.0).all(-1).float().mean())
        if fraction < MIN_OVERLAP:
            raise GeometryError(
                f"The scans do not overlap in patient space ({100 * fraction:.1f} % of the "
                f"fixed field of view falls in the moving one after initialisation); check "
                f"the files or initialise by geometric centres.")

    # -- linear stage --------------------------------------------------------------------

    def _matrix(self, params: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``M(params)`` about the fixed centre (see module docstring) and, for the chain
        rule, the derivatives of its linear part ``(len(params) - 3, 3, 3)`` with respect
        to the non-translation parameters.

        In numpy float64 with closed-form derivatives: the autograd graph through a 3x3
        matrix exponential cost about a fifth of each linear-stage evaluation."""
        scale = self.radius
        if kind == "affine":
            linear = np.eye(3) + params[3:12].reshape(3, 3) / scale
            derivatives = np.eye(9).reshape(9, 3, 3) / scale
        else:
            w = params[3:6] / scale
            rotation = _rotation(w)
            derivatives = _rotation_derivatives(w, rotation) / scale
            linear = rotation
            if kind == "similarity":
                factor = np.exp(params[6] / scale)
                linear = rotation * factor
                derivatives = np.concatenate([derivatives * factor, linear[None] / scale])
        matrix = np.eye(4)
        matrix[:3, :3] = linear
        matrix[:3, 3] = self.centre - linear @ self.centre + params[:3]
        return matrix, derivatives

    def _parameter_gradient(self, start: np.ndarray, derivatives: np.ndarray,
                            gradient: np.ndarray) -> np.ndarray:
        """Chain rule from d loss / d (start @ M) (4x4) to the parameters."""
        local = start.T @ gradient  # d loss / d M
        along = local[:3, 3]  # the translation column
        linear = local[:3, :3] - np.outer(along, self.centre)  # offset = c - L c + t
        return np.concatenate([along, np.einsum("kij,ij->k", derivatives, linear)])

    def evaluate(self, transform, metric: str | None = None) -> float:
        """The metric of a transform at the finest level, on every fixed voxel."""
        level = self._level(len(self.fixed_levels) - 1, subsample=False)
        points = level[0].reshape(-1, 3).cpu().numpy()
        moved = self._tensor(transform(points)).reshape(level[0].shape)
        with torch.no_grad():
            return float(self._loss(level, moved, metric))

    def linear_stage(self, initial: LinearTransform, kind: str, metric: str
                     ) -> tuple[LinearTransform, float, float]:
        """Optimise a linear transform level by level with ``metric``; returns it and the
        finest-level metric before and after."""
        start = initial.matrix
        params = torch.zeros(PARAMETERS[kind], dtype=torch.float64, device=self.device)
        finest = len(self.fixed_levels) - 1

        def current() -> LinearTransform:
            return LinearTransform(start @ self._matrix(params.cpu().numpy(), kind)[0], kind)

        def at(level, matrix: np.ndarray) -> tuple[float, np.ndarray]:
            return self._linear_loss(level, matrix, metric)

        for index in range(len(self.fixed_levels)):
            level = self._linear_level(index, metric)
            if index == finest:
                loss_before = at(level, start)[0]
            optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=self.settings.iterations,
                                          tolerance_change=self.settings.tolerance,
                                          tolerance_grad=1e-9, history_size=20,
                                          line_search_fn="strong_wolfe")

            def closure(level=level, index=index):
                matrix, derivatives = self._matrix(params.cpu().numpy(), kind)
                loss, gradient = at(level, start @ matrix)
                params.grad = torch.as_tensor(self._parameter_gradient(
                    start, derivatives, gradient), device=self.device)
                self._tick(kind, index, loss, current)
                return loss

            optimizer.step(closure)
        result = current()
        # Before and after on the finest level's sample points (those the optimiser saw).
        loss_after = at(level, result.matrix)[0]
        if loss_after > loss_before + 1e-3 * abs(loss_before) + 1e-9:
            raise RegistrationError(
                f"The {kind} registration made the match worse (metric {loss_before:.4g} -> "
                f"{loss_after:.4g}); try another metric or initialisation.")
        return result, loss_before, loss_after

    # -- deformable stage ----------------------------------------------------------------

    def deformable_stage(self, linear: LinearTransform,
                         start: tuple[np.ndarray, np.ndarray] | None = None
                         ) -> tuple[np.ndarray, DisplacementField, float]:
        """Optimise a stationary velocity field on the fixed pyramid after ``linear``;
        returns the velocity, its exponential on the finest control grid and the final
        metric.

        ``start`` is an optional starting velocity ``(field (3, ...) mm, grid affine)``:
        the optimised velocity is then that field (resampled to each level's control
        grid, held fixed) plus a smooth correction that starts at zero."""
        settings = self.settings
        matrix = self._tensor(linear.matrix)
        param = previous = None
        if start is not None:
            base_field = self._tensor(start[0])
            base_to_normalised = self._tensor(mm_to_normalised(start[1], start[0].shape[1:]))
        for index, iterations in enumerate(settings.deformable_iterations):
            level = self._level(index, subsample=False)
            control_affine, control_shape = _control_grid(self.fixed_levels[index])
            control = grid_points(control_affine, control_shape, self.device)
            to_control = self._tensor(mm_to_normalised(control_affine, control_shape))
            spacing = np.linalg.norm(control_affine[:3, :3], axis=0)
            if param is None:
                initial = torch.zeros((3, *control_shape), device=self.device)
            else:
                initial = sample(param.detach(), previous, control, padding="border")
            param = initial.requires_grad_(True)
            previous = to_control
            base = (sample(base_field, base_to_normalised, control, padding="border")
                    if start is not None else torch.zeros_like(param))
            optimizer = torch.optim.Adam([param], lr=settings.learning_rate * float(spacing.min()))
            sigma = settings.smoothing_mm / spacing
            best, stale = np.inf, 0
            for _ in range(iterations):
                optimizer.zero_grad()
                velocity = base + gaussian_smooth(param, sigma)
                u = exponentiate(velocity, control, to_control, settings.steps)
                loss = self._deformed_loss(level, u, to_control, matrix) + \
                    settings.weight * _regulariser(settings.regularisation, velocity, spacing)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                self._tick("deformable", index, value,
                           lambda u=u, a=control_affine: compose(
                               DisplacementField(u.detach().cpu().numpy(), a), linear))
                stale = 0 if value < best - settings.tolerance * abs(best) else stale + 1
                best = min(best, value)
                if stale >= PATIENCE:
                    break
        with torch.no_grad():
            velocity = base + gaussian_smooth(param, sigma)
            u = exponentiate(velocity, control, to_control, settings.steps)
            loss_after = float(self._deformed_loss(level, u, to_control, matrix))
        field = DisplacementField(u.cpu().numpy(), control_affine)
        extent = float(np.linalg.norm(spacing * np.asarray(control_shape)))
        if np.abs(field.displacement).max() > extent:
            raise RegistrationError("The deformable registration diverged (displacements "
                                    "larger than the field of view); raise the "
                                    "regularisation weight.")
        return velocity.cpu().numpy(), field, loss_after

    def _deformed_loss(self, level, u: torch.Tensor, to_control: torch.Tensor,
                       matrix: torch.Tensor) -> torch.Tensor:
        """The similarity at a level's fixed voxels moved by the displacement ``u`` (on
        the control grid ``to_control``), then by the linear ``matrix``."""
        points, to_normalised = level[0], level[4]
        dense = sample(u, to_control, points, padding="border")
        # Straight to the moving image's grid_sample coordinates: one (N, 3) product
        # instead of two (a tenth of an iteration at the finest level).
        to_grid = to_normalised @ matrix
        grid = (points + dense.permute(1, 2, 3, 0)) @ to_grid[:3, :3].T + to_grid[:3, 3]
        return self._loss_on_grid(level, grid)


def _skew(v: np.ndarray) -> np.ndarray:
    """``[v]x``, the matrix of ``u -> v x u``."""
    x, y, z = v.tolist()  # Python floats: np.array builds from them several times faster
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _rotation(w: np.ndarray) -> np.ndarray:
    """``R = exp([w]x)`` by Rodrigues' formula, with Taylor coefficients near 0 (scipy's
    Rotation costs about twice as much per call, and the linear stage builds a matrix at
    every evaluation)."""
    norm2 = float(w @ w)
    skew = _skew(w)
    if norm2 < 1e-8:  # sin(t)/t and (1 - cos t)/t^2 to O(t^4)
        a, b = 1.0 - norm2 / 6.0, 0.5 - norm2 / 24.0
    else:
        angle = np.sqrt(norm2)
        a, b = np.sin(angle) / angle, (1.0 - np.cos(angle)) / norm2
    return np.eye(3) + a * skew + b * (skew @ skew)


def _rotation_derivatives(w: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``dR / dw_k`` ``(3, 3, 3)`` of ``R = exp([w]x)`` (Gallego and Yezzi 2015, eq. 9:
    ``(w_k [w]x + [w x ((I - R) e_k)]x) R / |w|^2``), all three at once."""
    norm2 = float(w @ w)
    if norm2 < 1e-16:
        return np.stack([_skew(e) for e in np.eye(3)])
    skew = _skew(w)
    c = skew - skew @ rotation  # column k: w x ((I - R) e_k)
    stack = w[:, None, None] * skew
    stack[:, 0, 1] -= c[2]
    stack[:, 0, 2] += c[1]
    stack[:, 1, 0] += c[2]
    stack[:, 1, 2] -= c[0]
    stack[:, 2, 0] -= c[1]
    stack[:, 2, 1] += c[0]
    return stack @ rotation / norm2


def _control_grid(level) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid the velocity lives on at a level: half the level's resolution when every
    axis keeps at least 16 voxels (the field is smooth at that scale, and its exponential,
    the costliest step, gets 8 times cheaper), else the level's own grid."""
    shape = level.data.shape
    if min(shape) < 32:
        return level.affine, shape
    spacing = np.linalg.norm(level.affine[:3, :3], axis=0)
    return spacing_grid(level.affine, shape, tuple(2 * spacing))


def _regulariser(name: str, velocity: torch.Tensor, spacing: np.ndarray) -> torch.Tensor:
    """Mean squared first (``"diffusion"``) or second (``"bending"``) derivatives of the
    velocity, in mm per mm (finite differences along each array axis)."""
    def diff(field, axis):
        return torch.diff(field, dim=axis + 1) / float(spacing[axis])

    total = velocity.new_zeros(())
    for a in range(3):
        first = diff(velocity, a)
        if name == "diffusion":
            total = total + (first ** 2).mean()
            continue
        for b in range(a, 3):
            second = diff(first, b)
            total = total + (1.0 if a == b else 2.0) * (second ** 2).mean()
    return total
