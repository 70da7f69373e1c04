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
from napari_medattn.inference.memory import (
    DEFAULT_ACTIVATION_BYTES_PER_VOXEL,
    available_ram,
    plan_inference,
    slab_planes,
)
from napari_medattn.inference.stitching import OutputMaps, SlabAccumulator
from napari_medattn.inference.tta import UNCERTAINTY_KINDS, flip_members, predict_members
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
    overlap: float = 0.5,
    batch_size: int = 4,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    skip_empty: bool = True,
    foreground: np.ndarray | None = None,
    activation: str = "softmax",
    num_classes: int | None = None,
    keep_probabilities: Sequence[int] | str = (),
    tta: bool | Sequence[Sequence[int]] = False,
    uncertainty: str | None = None,
    attention_maps: Sequence[str] = (),
    stream: bool = True,
    device: str | torch.device = "auto",
    use_autocast: bool = True,
    pad_value: float = 0.0,
    memory_check: bool = True,
    activation_bytes_per_voxel: int = DEFAULT_ACTIVATION_BYTES_PER_VOXEL,
    free_ram: int | None = None,
    free_gpu: int | None = None,
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
    overlap : float
        Fraction of a window shared with its neighbour along each axis, in [0, 1).
    batch_size : int
        Windows per forward pass (may be reduced by the memory plan).
    blend : {"gaussian", "constant"}
        Weighting of a window's voxels when blending.
    sigma_scale : float
        Gaussian standard deviation as a fraction of the window size.
    skip_empty : bool
        Do not run windows without foreground; they predict background.
    foreground : ndarray of bool, optional
        Spatial mask of the voxels that count as foreground for ``skip_empty`` (default:
        voxels where some channel is above the input's minimum).
    activation : {"softmax", "none"}
        Applied to the predictor output over the class axis; ``"none"`` when the
        predictor already returns probabilities.
    num_classes : int, optional
        Classes predicted; found from the first batch when not given (given, it makes
        the memory estimate exact and sizes the outputs when every window is empty).
    keep_probabilities : sequence of int or "all"
        Classes whose blended probability is returned for the whole volume.
    tta : bool or sequence of sequences of int
        Test-time flips (see :func:`.tta.flip_members`).
    uncertainty : {None, "variance", "entropy"}
        Uncertainty map to return (see :mod:`.tta`); ``"variance"`` needs ``tta``.
    attention_maps : sequence of str
        Names of spatial attention maps the network records (see
        :func:`napari_medattn.models.capture_attention` and :func:`attention_map_names`)
        to return for the whole volume; captured on the unflipped forward pass.
    stream : bool
        Finalise slab by slab (True) or keep the whole volume's sums until the end.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"`` (see :func:`.resolve_device`).
    use_autocast : bool
        Run the forward pass in reduced precision where it is fast: GPUs, and CPUs that
        compute bfloat16 natively (AVX512-BF16/AMX; faster, not bitwise float32; see
        :func:`.devices.autocast_dtype`); False: float32 everywhere. Blending always runs
        in float32.
    pad_value : float
        Input value used to pad a volume smaller than a window.
    memory_check : bool
        Plan the job against free memory first (see :func:`.plan_inference`).
    activation_bytes_per_voxel : int
        Peak activation bytes per window voxel of the network, for the memory plan.
    free_ram, free_gpu : int, optional
        Bytes of free RAM / GPU memory to plan against (default: measured now).
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
    dims = len(patch)
    if dims not in (2, 3) or min(patch) < 1:
        raise ModelError(f"The patch size must be 2 or 3 positive integers, got {patch_size}.")
    if not 0 <= overlap < 1:
        raise ModelError(f"The overlap must be in [0, 1), got {overlap}.")
    if batch_size < 1:
        raise ModelError(f"The batch size must be at least 1, got {batch_size}.")
    if activation not in ("softmax", "none"):
        raise ModelError(f"Unknown activation {activation!r}; choose 'softmax' or 'none'.")
    if uncertainty is not None and uncertainty not in UNCERTAINTY_KINDS:
        raise ModelError(f"Unknown uncertainty {uncertainty!r}; choose one of "
                         f"{', '.join(UNCERTAINTY_KINDS)}.")
    members = flip_members(dims, tta)
    attention_maps = tuple(attention_maps)
    if attention_maps and not isinstance(predictor, nn.Module):
        raise ModelError("Attention maps can only be captured from a torch module.")
    if uncertainty == "variance" and len(members) < 2:
        raise ModelError("Variance uncertainty needs test-time augmentation (tta=True).")
    if keep_probabilities != "all":
        keep_probabilities = tuple(int(c) for c in keep_probabilities)
        if num_classes is not None and any(not 0 <= c < num_classes for c in keep_probabilities):
            raise ModelError(f"Probabilities asked for classes {keep_probabilities}, but the "
                             f"model has {num_classes} classes.")
    weights_cpu = importance_map(patch, blend, sigma_scale)

    x = _as_channels_first(inputs, dims)
    shape = tuple(x.shape[1:])
    if skip_empty and foreground is None:
        foreground = (x > x.min()).any(dim=0).numpy()
    pad_before = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    if any(p > s for s, p in zip(shape, patch)):
        pad = []
        for s, p, before in reversed(list(zip(shape, patch, pad_before))):
            pad += [before, max(p - s, 0) - before]
        x = torch.nn.functional.pad(x, pad, mode="constant", value=pad_value)
    padded = tuple(x.shape[1:])
    starts = window_starts(padded, patch, overlap)
    if skip_empty:
        mask = _foreground_mask(x, foreground, shape, pad_before)

    choice = resolve_device(device)
    compute = choice.device
    notes = [choice.note] if choice.note else []
    stitch = compute
    if memory_check:
        kept = (num_classes or 2) if keep_probabilities == "all" else len(keep_probabilities)
        model_bytes = (sum(p.numel() * p.element_size() for p in predictor.parameters())
                       if isinstance(predictor, nn.Module) else 0)
        plan = plan_inference(
            padded, patch, in_channels=x.shape[0], num_classes=num_classes or 2,
            batch_size=batch_size, on_gpu=compute.type != "cpu",
            free_ram=available_ram() if free_ram is None else free_ram,
            free_gpu=free_gpu_memory(compute) if free_gpu is None else free_gpu,
            overlap=overlap, kept_probabilities=kept, uncertainty=uncertainty is not None,
            attention_maps=len(attention_maps),
            tta_members=len(members), stream=stream, model_bytes=model_bytes,
            activation_bytes_per_voxel=activation_bytes_per_voxel)
        batch_size = plan.batch_size
        stitch = compute if plan.stitch_on_gpu else torch.device("cpu")
        notes += plan.notes
    if isinstance(predictor, nn.Module):
        predictor.to(compute).eval()
    weights = weights_cpu.to(compute)

    outputs = OutputMaps(shape, pad_before, keep_probabilities, uncertainty, attention_maps)
    capacity = slab_planes(padded, patch, overlap, batch_size) if stream else padded[0]
    acc = SlabAccumulator(padded[1:], capacity, stitch, outputs)
    if num_classes is not None:
        acc.ensure_classes(num_classes)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(compute, use_autocast):
            out = predictor(batch)
        if not isinstance(out, torch.Tensor) or out.shape[0] != batch.shape[0] \
                or tuple(out.shape[2:]) != patch:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"The network returned {got} for a window batch of shape "
                             f"{tuple(batch.shape)}; it must return (batch, classes, *window).")
        return out

    def window_slices(start):
        return (slice(None), *(slice(s, s + p) for s, p in zip(start, patch)))

    def forward_capturing(batch: torch.Tensor, captured: dict) -> torch.Tensor:
        """The forward pass; the first (unflipped) one of a batch records attention."""
        if captured or not attention_maps:
            return forward(batch)
        with capture_attention(predictor) as maps:
            out = forward(batch)
        for name in attention_maps:
            if name not in maps or maps[name].kind is not MapKind.SPATIAL:
                spatial = ", ".join(maps.of_kind(MapKind.SPATIAL)) or "none"
                raise ModelError(f"The network records no spatial attention map {name!r} "
                                 f"(it records: {spatial}).")
            # Heads are averaged: one value per voxel, on the window's grid.
            captured[name] = maps.on_input_grid(name).mean(dim=1)
        return out

    def run_batch(pending: list[tuple[int, ...]]) -> None:
        batch = torch.stack([x[window_slices(s)] for s in pending]).to(compute)
        captured: dict[str, torch.Tensor] = {}
        probs, variance = predict_members(lambda b: forward_capturing(b, captured), batch,
                                          members, activation, uncertainty == "variance")
        if num_classes is not None and probs.shape[1] != num_classes:
            raise ModelError(f"The network predicts {probs.shape[1]} classes but "
                             f"{num_classes} were expected.")
        if acc.classes is None and keep_probabilities != "all" and any(
                c >= probs.shape[1] for c in keep_probabilities):
            raise ModelError(f"Probabilities asked for classes {keep_probabilities}, but the "
                             f"network predicts {probs.shape[1]} classes.")
        acc.ensure_classes(probs.shape[1])
        if acc.classes.shape[0] != probs.shape[1]:
            raise ModelError("The network returned a different number of classes for "
                             "different windows.")
        weighted = (probs * weights).to(stitch)
        scalars = {f"attention:{name}": (value * weights_cpu).to(stitch)
                   for name, value in captured.items()}
        if variance is not None:
            scalars["variance"] = (variance * weights).to(stitch)
        w = weights.to(stitch)
        for i, start in enumerate(pending):
            acc.extend_to(start[0] + patch[0])
            acc.add(start, weighted[i], w, {key: value[i] for key, value in scalars.items()})

    total = len(starts)
    predicted = 0
    reported = 0
    pending: list[tuple[int, ...]] = []
    w_stitch = weights_cpu.to(stitch)

    def flush(handled: int) -> None:
        nonlocal pending, predicted, reported
        check_cancel(cancel)
        run_batch(pending)
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
            if skip_empty and not mask[window_slices(start)[1:]].any():
                acc.extend_to(start[0] + patch[0])
                acc.add_background(start, w_stitch)
            else:
                pending.append(start)
            if len(pending) == batch_size:
                flush(index + 1)
            if stream:
                # Planes before the first window still to be added are final.
                last = index == total - 1
                next_start = pending[0][0] if pending else (
                    starts[index + 1][0] if not last else padded[0])
                acc.finalise(next_start)
        if pending:
            flush(total)
        if progress is not None and reported != total:
            progress(total, total)
        acc.finalise(padded[0])

    return InferenceResult(
        labels=outputs.labels,
        probabilities=outputs.probabilities,
        uncertainty=outputs.uncertainty,
        attention=outputs.attention,
        num_classes=acc.classes.shape[0] if acc.classes is not None else num_classes,
        windows=total,
        windows_predicted=predicted,
        device=str(compute),
        precision=precision_name(compute, use_autocast),
        notes=tuple(notes),
    )
