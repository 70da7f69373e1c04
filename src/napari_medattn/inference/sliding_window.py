"""The one sliding-window engine of the package: blended, streamed, cancellable.

Method
------
Windows of ``patch_size`` are laid on the volume on MONAI's grid (step
``int(patch * (1 - overlap))``, the last window flush with the border, a volume smaller
than a window padded symmetrically). Each window's class probabilities are weighted by an
importance map (a Gaussian of ``sigma_scale * patch`` per axis, or constant) and summed;
a voxel's probability is that sum divided by the sum of the weights over the windows
covering it. This is what ``monai.inferers.sliding_window_inference`` computes.

Streaming. Windows are visited in row-major order of their start, so along axis 0 they
come in rows of equal start ``s_0 < s_1 < ...``. Once every window starting at or before
``z`` has been added, no later window touches plane ``z`` (all later windows start after
it), so the weighted sums of planes below the next window's start are final: they are
divided, turned into the argmax and the requested class probabilities, written out and
dropped. The blending buffer therefore holds only a slab of about ``patch[0] + step``
planes, every voxel receives exactly the same contributions in the same order as when
the whole volume is buffered, and the result is identical, not approximate.

Windows that hold no foreground voxel (a mask the caller gives, e.g. CT above -500 HU;
by default every voxel at the input's minimum) are not run through the network: they
contribute certainty of class 0 (background) with their weights, kept in a buffer of
their own so that the order of summation stays the same however batches are cut.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medattn.errors import Cancelled, DimensionError, ModelError
from napari_medattn.inference.devices import (
    autocast,
    free_gpu_memory,
    precision_name,
    resolve_device,
)
from napari_medattn.inference.memory import available_ram, plan_inference, slab_planes
from napari_medattn.inference.stitching import OutputMaps, SlabAccumulator
from napari_medattn.inference.tta import flip_members, predict_members
from napari_medattn.inference.window_options import MemoryBudget, OutputRequest, WindowOptions
from napari_medattn.models.capture import MapKind, capture_attention

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool] | threading.Event



@dataclasses.dataclass
class InferenceResult:
    """What a sliding-window run returns, on the input's grid.

    Attributes
    ----------
    labels : ndarray of uint8 or uint16
        Argmax class per voxel.
    probabilities : dict of int to ndarray of float32
        Blended probability of each requested class, in [0, 1].
    uncertainty : ndarray of float32 or None
        The requested uncertainty map in [0, 1] (see :mod:`.tta`).
    attention : dict of str to ndarray of float32
        Each requested spatial attention map, averaged over heads, blended like the
        probabilities (skipped windows count as zero attention).
    num_classes : int or None
        Classes the network predicts (None when every window was skipped and the caller
        did not say).
    windows, windows_predicted : int
        Windows on the grid, and those run through the network (the rest were empty).
    device : str
        Device the network ran on.
    precision : str
        Number format of the forward pass: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    notes : tuple of str
        Sentences for the user: device fallback, re-planned batch, ...
    """

    labels: np.ndarray
    probabilities: dict[int, np.ndarray]
    uncertainty: np.ndarray | None
    attention: dict[str, np.ndarray]
    num_classes: int | None
    windows: int
    windows_predicted: int
    device: str
    precision: str = "float32"
    notes: tuple[str, ...] = ()


def window_starts(shape: Sequence[int], patch_size: Sequence[int],
                  overlap: float) -> list[tuple[int, ...]]:
    """Start index of every window, in row-major order (MONAI's ``dense_patch_slices``).

    ``shape`` must be at least ``patch_size`` along every axis (pad first).
    """
    per_axis = []
    for size, patch in zip(shape, patch_size):
        step = patch if patch == size else max(1, int(patch * (1 - overlap)))
        starts = []
        index = 0
        while True:
            start = index * step
            # The last window is moved back to end flush with the border.
            starts.append(start - max(start + patch - size, 0))
            if start + patch >= size:
                break
            index += 1
        per_axis.append(starts)
    grids = np.meshgrid(*per_axis, indexing="ij")
    return [tuple(int(v) for v in row) for row in np.stack([g.ravel() for g in grids], 1)]


def importance_map(patch_size: Sequence[int], blend: str = "gaussian",
                   sigma_scale: float = 0.125) -> torch.Tensor:
    """Weight of each voxel of a window when blending, float32 of shape ``patch_size``.

    ``"gaussian"``: a separable Gaussian centred in the window with standard deviation
    ``sigma_scale * patch_size`` voxels per axis, clipped below at its smallest value
    (and at 1e-3) so no voxel has zero weight. ``"constant"``: ones.
    """
    if blend == "constant":
        return torch.ones(tuple(patch_size), dtype=torch.float32)
    if blend != "gaussian":
        raise ModelError(f"Unknown blending {blend!r}; choose 'gaussian' or 'constant'.")
    weights = None
    for axis, size in enumerate(patch_size):
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32)
        g = torch.exp(x**2 / (-2 * (sigma_scale * size) ** 2))
        weights = g if axis == 0 else weights.unsqueeze(-1) * g[(None,) * axis]
    floor = max(float(weights.min()), 1e-3)
    return weights.clamp(min=floor)


def attention_map_names(model: nn.Module, patch_size: Sequence[int],
                        in_channels: int = 1) -> list[str]:
    """Names of the spatial attention maps ``model`` records, from one blank window.

    Runs a single forward pass on zeros of one window (on the model's device), so a GUI
    can offer the maps before a run.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    blank = torch.zeros((1, in_channels, *patch_size), device=device)
    with torch.inference_mode(), capture_attention(model) as maps:
        model.eval()(blank)
    return sorted(maps.of_kind(MapKind.SPATIAL))


def _foreground_mask(x: torch.Tensor, foreground: np.ndarray, shape: tuple,
                     pad_before: Sequence[int]) -> np.ndarray:
    """The foreground mask on the padded grid (padding is background)."""
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.shape != shape:
        raise DimensionError(f"The foreground mask has shape {foreground.shape}, the input "
                             f"{shape}.")
    mask = np.zeros(tuple(x.shape[1:]), dtype=bool)
    mask[tuple(slice(b, b + s) for b, s in zip(pad_before, shape))] = foreground
    return mask


def _as_channels_first(inputs: Any, spatial_dims: int) -> torch.Tensor:
    data = getattr(inputs, "data", inputs) if not isinstance(inputs, torch.Tensor) else inputs
    if isinstance(data, torch.Tensor):
        tensor = data.detach().to("cpu", torch.float32)
    else:
        # Copies only when needed (another dtype, or a flipped/permuted view).
        tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if tensor.ndim == spatial_dims:
        tensor = tensor[None]
    if tensor.ndim != spatial_dims + 1:
        raise DimensionError(
            f"The input has {tensor.ndim} dimensions; a {spatial_dims}D window needs "
            f"{spatial_dims} spatial dimensions and optionally one channel axis first.")
    if not bool(torch.isfinite(tensor).all()):
        raise DimensionError("The input contains NaN or infinite values; fix or mask them "
                             "before segmenting.")
    return tensor


def check_cancel(cancel: CancelCheck | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` (a callable or a threading.Event) says so."""
    if cancel is None:
        return
    cancelled = cancel.is_set() if isinstance(cancel, threading.Event) else cancel()
    if cancelled:
        raise Cancelled("Inference was cancelled.")


def sliding_window_inference(
    inputs: Any,
    predictor: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    patch_size: Sequence[int],
    *,
    windows: WindowOptions = WindowOptions(),
    outputs: OutputRequest = OutputRequest(),
    memory: MemoryBudget = MemoryBudget(),
    foreground: np.ndarray | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "auto",
    use_autocast: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> InferenceResult:
    """Segment a volume window by window, blending overlapping windows.

    See the module docstring for the method and the proof that streaming is exact.

    Parameters
    ----------
    inputs : ndarray, torch.Tensor or Volume
        Intensities already normalised for the network: spatial ``(*S)`` or
        channels-first ``(C_in, *S)``, with ``len(S) == len(patch_size)``.
    predictor : nn.Module or callable
        Maps a float32 batch ``(B, C_in, *patch_size)`` to ``(B, C, *patch_size)`` class
        scores. A module is moved to the device and put in eval mode.
    patch_size : sequence of int
        Window size in voxels per spatial axis.
    windows : WindowOptions
        Overlap, batch size, blending, skipping of empty windows, activation, padding and
        streaming.
    outputs : OutputRequest
        Class probabilities, test-time flips, uncertainty and attention maps to return.
    memory : MemoryBudget
        The memory to plan against.
    foreground : ndarray of bool, optional
        Spatial mask of the voxels that count as foreground for ``windows.skip_empty``
        (default: voxels where some channel is above the input's minimum).
    num_classes : int, optional
        Classes predicted; found from the first batch when not given (given, it makes
        the memory estimate exact and sizes the outputs when every window is empty).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"`` (see :func:`.resolve_device`).
    use_autocast : bool
        Run the forward pass in reduced precision where it is fast: GPUs, and CPUs that
        compute bfloat16 natively (AVX512-BF16/AMX; faster, not bitwise float32; see
        :func:`.devices.autocast_dtype`); False: float32 everywhere. Blending always runs
        in float32.
    progress : callable, optional
        Called after each batch as ``progress(windows_done, windows_total)``.
    cancel : callable or threading.Event, optional
        Checked before each batch; when it returns True (is set), :class:`Cancelled`
        is raised and nothing is returned.

    Returns
    -------
    InferenceResult
        Labels, requested probabilities and uncertainty on the input's grid.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise ModelError(f"The patch size must be 2 or 3 positive integers, got {patch_size}.")
    members = flip_members(len(patch), outputs.tta)
    if outputs.attention_maps and not isinstance(predictor, nn.Module):
        raise ModelError("Attention maps can only be captured from a torch module.")
    if outputs.uncertainty == "variance" and len(members) < 2:
        raise ModelError("Variance uncertainty needs test-time augmentation (tta=True).")
    keep = outputs.keep_probabilities
    if keep != "all" and num_classes is not None and any(not 0 <= c < num_classes
                                                         for c in keep):
        raise ModelError(f"Probabilities asked for classes {keep}, but the model has "
                         f"{num_classes} classes.")
    run = _Run(inputs, predictor, patch, windows, outputs, members, foreground)
    choice = resolve_device(device)
    notes = [choice.note] if choice.note else []
    batch_size, stitch = windows.batch_size, choice.device
    if memory.check:
        plan = run.plan(choice.device, memory, num_classes)
        batch_size = plan.batch_size
        stitch = choice.device if plan.stitch_on_gpu else torch.device("cpu")
        notes += plan.notes
    run.place(choice.device, stitch, use_autocast, batch_size, num_classes)
    predicted = run.loop(batch_size, progress, cancel)
    classes = run.acc.classes
    return InferenceResult(
        labels=run.maps.labels,
        probabilities=run.maps.probabilities,
        uncertainty=run.maps.uncertainty,
        attention=run.maps.attention,
        num_classes=classes.shape[0] if classes is not None else num_classes,
        windows=len(run.starts),
        windows_predicted=predicted,
        device=str(choice.device),
        precision=precision_name(choice.device, use_autocast),
        notes=tuple(notes),
    )


class _Run:
    """One sliding-window run: the padded input, its windows and the blending state."""

    def __init__(self, inputs: Any, predictor: Any, patch: tuple[int, ...],
                 windows: WindowOptions, outputs: OutputRequest,
                 members: list, foreground: np.ndarray | None) -> None:
        self.predictor, self.patch, self.options, self.request = (predictor, patch, windows,
                                                                  outputs)
        self.members = members
        self.weights_cpu = importance_map(patch, windows.blend, windows.sigma_scale)
        x = _as_channels_first(inputs, len(patch))
        self.shape = tuple(x.shape[1:])
        if windows.skip_empty and foreground is None:
            foreground = (x > x.min()).any(dim=0).numpy()
        self.pad_before = [max(p - s, 0) // 2 for s, p in zip(self.shape, patch)]
        if any(p > s for s, p in zip(self.shape, patch)):
            pad = []
            for s, p, before in reversed(list(zip(self.shape, patch, self.pad_before))):
                pad += [before, max(p - s, 0) - before]
            x = torch.nn.functional.pad(x, pad, mode="constant", value=windows.pad_value)
        self.x = x
        self.padded = tuple(x.shape[1:])
        self.starts = window_starts(self.padded, patch, windows.overlap)
        self.mask = (_foreground_mask(x, foreground, self.shape, self.pad_before)
                     if windows.skip_empty else None)

    def plan(self, compute: torch.device, memory: MemoryBudget, num_classes: int | None):
        """The memory plan of this run on ``compute`` (see :func:`.plan_inference`)."""
        model_bytes = (sum(p.numel() * p.element_size() for p in self.predictor.parameters())
                       if isinstance(self.predictor, nn.Module) else 0)
        return plan_inference(
            self.padded, self.patch, in_channels=self.x.shape[0],
            num_classes=num_classes or 2, windows=self.options, on_gpu=compute.type != "cpu",
            free_ram=available_ram() if memory.free_ram is None else memory.free_ram,
            free_gpu=free_gpu_memory(compute) if memory.free_gpu is None else memory.free_gpu,
            outputs=self.request, tta_members=len(self.members), model_bytes=model_bytes,
            activation_bytes_per_voxel=memory.activation_bytes_per_voxel)

    def place(self, compute: torch.device, stitch: torch.device, use_autocast: bool,
              batch_size: int, num_classes: int | None) -> None:
        """Move the network and weights to ``compute``; make the blending buffers."""
        self.compute, self.stitch, self.use_autocast = compute, stitch, use_autocast
        self.num_classes = num_classes
        if isinstance(self.predictor, nn.Module):
            self.predictor.to(compute).eval()
        self.weights = self.weights_cpu.to(compute)
        request = self.request
        self.maps = OutputMaps(self.shape, self.pad_before, request.keep_probabilities,
                               request.uncertainty, request.attention_maps)
        capacity = (slab_planes(self.padded, self.patch, self.options.overlap, batch_size)
                    if self.options.stream else self.padded[0])
        self.acc = SlabAccumulator(self.padded[1:], capacity, stitch, self.maps)
        if num_classes is not None:
            self.acc.ensure_classes(num_classes)

    def window(self, start: tuple[int, ...]) -> tuple[slice, ...]:
        return (slice(None), *(slice(s, s + p) for s, p in zip(start, self.patch)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with autocast(self.compute, self.use_autocast):
            out = self.predictor(batch)
        if not isinstance(out, torch.Tensor) or out.shape[0] != batch.shape[0] \
                or tuple(out.shape[2:]) != self.patch:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"The network returned {got} for a window batch of shape "
                             f"{tuple(batch.shape)}; it must return (batch, classes, *window).")
        return out

    def forward_capturing(self, batch: torch.Tensor, captured: dict) -> torch.Tensor:
        """The forward pass; the first (unflipped) one of a batch records attention."""
        if captured or not self.request.attention_maps:
            return self.forward(batch)
        with capture_attention(self.predictor) as maps:
            out = self.forward(batch)
        for name in self.request.attention_maps:
            if name not in maps or maps[name].kind is not MapKind.SPATIAL:
                spatial = ", ".join(maps.of_kind(MapKind.SPATIAL)) or "none"
                raise ModelError(f"The network records no spatial attention map {name!r} "
                                 f"(it records: {spatial}).")
            # Heads are averaged: one value per voxel, on the window's grid.
            captured[name] = maps.on_input_grid(name).mean(dim=1)
        return out

    def run_batch(self, pending: list[tuple[int, ...]]) -> None:
        batch = torch.stack([self.x[self.window(s)] for s in pending]).to(self.compute)
        captured: dict[str, torch.Tensor] = {}
        probs, variance = predict_members(lambda b: self.forward_capturing(b, captured), batch,
                                          self.members, self.options.activation,
                                          self.request.uncertainty == "variance")
        self._check_classes(probs.shape[1])
        acc, stitch = self.acc, self.stitch
        weighted = (probs * self.weights).to(stitch)
        scalars = {f"attention:{name}": (value * self.weights_cpu).to(stitch)
                   for name, value in captured.items()}
        if variance is not None:
            scalars["variance"] = (variance * self.weights).to(stitch)
        w = self.weights.to(stitch)
        for i, start in enumerate(pending):
            acc.extend_to(start[0] + self.patch[0])
            acc.add(start, weighted[i], w, {key: value[i] for key, value in scalars.items()})

    def _check_classes(self, predicted: int) -> None:
        keep = self.request.keep_probabilities
        if self.num_classes is not None and predicted != self.num_classes:
            raise ModelError(f"The network predicts {predicted} classes but "
                             f"{self.num_classes} were expected.")
        if self.acc.classes is None and keep != "all" and any(c >= predicted for c in keep):
            raise ModelError(f"Probabilities asked for classes {keep}, but the network "
                             f"predicts {predicted} classes.")
        self.acc.ensure_classes(predicted)
        if self.acc.classes.shape[0] != predicted:
            raise ModelError("The network returned a different number of classes for "
                             "different windows.")

    def loop(self, batch_size: int, progress: ProgressCallback | None,
             cancel: CancelCheck | None) -> int:
        """Visit every window in order, batching the non-empty ones; returns how many
        ran through the network."""
        acc, starts, patch = self.acc, self.starts, self.patch
        total, predicted, reported = len(starts), 0, 0
        pending: list[tuple[int, ...]] = []
        w_stitch = self.weights_cpu.to(self.stitch)

        def flush(handled: int) -> None:
            nonlocal pending, predicted, reported
            check_cancel(cancel)
            self.run_batch(pending)
            predicted += len(pending)
            pending = []
            if progress is not None:
                progress(handled, total)
                reported = handled

        with torch.inference_mode():
            for index, start in enumerate(starts):
                if pending and not acc.fits(start[0] + patch[0]):
                    # Skipped windows between the batched ones would push the slab past its
                    # capacity: run the (smaller) batch now so its planes can be finalised.
                    flush(index)
                    acc.finalise(start[0])
                if self.mask is not None and not self.mask[self.window(start)[1:]].any():
                    acc.extend_to(start[0] + patch[0])
                    acc.add_background(start, w_stitch)
                else:
                    pending.append(start)
                if len(pending) == batch_size:
                    flush(index + 1)
                if self.options.stream:
                    # Planes before the first window still to be added are final.
                    last = index == total - 1
                    next_start = pending[0][0] if pending else (
                        starts[index + 1][0] if not last else self.padded[0])
                    acc.finalise(next_start)
            if pending:
                flush(total)
            if progress is not None and reported != total:
                progress(total, total)
            acc.finalise(self.padded[0])
        return predicted
