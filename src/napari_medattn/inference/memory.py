"""Pre-flight memory estimate and re-planning of a sliding-window job.

Before any window runs, :func:`plan_inference` adds up what the job will hold (the input,
the outputs kept for the whole volume, the stitching buffers of the streamed slab, the
network and its activations for one batch of windows), compares it with the free RAM and
GPU memory, and either returns a plan that fits (a smaller batch, stitching moved to the
CPU) or refuses with the numbers. Sizes are in bytes throughout.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from napari_medattn.errors import InsufficientMemoryError

if TYPE_CHECKING:  # window_options imports this module's default activation size
    from napari_medattn.inference.window_options import OutputRequest, WindowOptions

FLOAT_BYTES = 4
#: Peak activation memory of one input voxel of one window during a no-grad forward
#: pass, in bytes. A 3D U-Net with 32 base features keeps about three float32 feature
#: maps of 32-64 channels alive at full resolution (~0.4-0.8 kB); 1 kB leaves a margin.
DEFAULT_ACTIVATION_BYTES_PER_VOXEL = 1024
GIB = 1024**3
#: Finalising divides the buffer in chunks of planes holding at most this many floats
#: (all classes together), so its temporary stays small.
FINALISE_CHUNK_FLOATS = 1 << 24


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a job holds at its peak, on the host (RAM) and on the compute device (GPU).

    ``parts`` names each contribution (``"input"``, ``"outputs"``, ``"stitching"``,
    ``"network"``) with the device it lives on, for messages.
    """

    ram_bytes: int
    gpu_bytes: int
    parts: dict[str, tuple[str, int]]


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """A job that fits: the batch size and where the blending buffers live."""

    batch_size: int
    stitch_on_gpu: bool
    estimate: MemoryEstimate
    notes: tuple[str, ...] = ()


def slab_planes(shape: Sequence[int], patch_size: Sequence[int], overlap: float,
                batch_size: int) -> int:
    """Planes along axis 0 that the streamed blending buffer holds at most.

    Planes before the first window not yet added are final, so the buffer spans from
    that window's row to the end of the last window of the batch being added. A batch
    of ``batch_size`` consecutive windows reaches at most ``ceil(batch_size / per_row)``
    rows further (``per_row`` windows share an axis-0 start), each a step further along
    axis 0; the engine runs a batch early rather than exceed this.
    """
    interval = [max(1, int(p * (1 - overlap))) if p < s else p for s, p in zip(shape, patch_size)]
    per_row = 1
    for s, p, i in zip(shape[1:], patch_size[1:], interval[1:]):
        per_row *= _windows_along(s, p, i)
    rows = math.ceil(batch_size / per_row)
    return min(max(shape[0], patch_size[0]), patch_size[0] + interval[0] * rows)


def _windows_along(size: int, patch: int, interval: int) -> int:
    if patch >= size:
        return 1
    return math.ceil((size - patch) / interval) + 1


def estimate_memory(
    shape: Sequence[int],
    patch_size: Sequence[int],
    *,
    in_channels: int,
    num_classes: int,
    windows: WindowOptions,
    outputs: OutputRequest,
    tta_members: int = 1,
    on_gpu: bool = False,
    stitch_on_gpu: bool = False,
    model_bytes: int = 0,
    activation_bytes_per_voxel: int = DEFAULT_ACTIVATION_BYTES_PER_VOXEL,
) -> MemoryEstimate:
    """Peak bytes of a sliding-window job.

    Parameters
    ----------
    shape, patch_size : sequence of int
        Spatial size of the volume and of one window, in voxels.
    in_channels, num_classes : int
        Input channels and predicted classes.
    windows : WindowOptions
        Its ``batch_size`` (windows per forward pass), ``overlap`` and ``stream`` (stitch
        slab by slab, or the whole volume at once) count.
    outputs : OutputRequest
        What is returned for the whole volume: each kept probability, the uncertainty map
        and each attention map is one float map (and, but for probabilities, one buffer).
    tta_members : int
        Forward passes per window (test-time augmentation).
    on_gpu, stitch_on_gpu : bool
        Whether the network and the blending buffers live on the GPU.
    model_bytes : int
        Size of the network parameters, in bytes.
    activation_bytes_per_voxel : int
        Peak activation bytes per input voxel of one window in the forward pass.
    """
    batch_size = windows.batch_size
    keep = outputs.keep_probabilities
    kept_probabilities = num_classes if keep == "all" else len(keep)
    uncertainty = outputs.uncertainty is not None
    attention_maps = len(outputs.attention_maps)
    voxels = math.prod(shape)
    window_voxels = math.prod(patch_size)
    rest = math.prod(shape[1:])
    planes = (slab_planes(shape, patch_size, windows.overlap, batch_size) if windows.stream
              else max(shape[0], patch_size[0]))
    # Per-class accumulators, the weight sum, the background weight of skipped windows,
    # and the variance accumulator; finalising holds one more chunk of class planes.
    buffer_maps = num_classes + 2 + (1 if uncertainty else 0) + attention_maps
    finalise_chunk = min(planes * rest, max(rest, FINALISE_CHUNK_FLOATS // num_classes))
    stitching = (buffer_maps * planes * rest + num_classes * finalise_chunk) * FLOAT_BYTES
    label_bytes = 1 if num_classes <= 256 else 2
    float_maps = kept_probabilities + int(uncertainty) + attention_maps
    outputs = voxels * label_bytes + float_maps * voxels * FLOAT_BYTES
    inputs = voxels * in_channels * FLOAT_BYTES
    # The window batch in and out (members of TTA are held together to form the mean).
    windows = batch_size * window_voxels * FLOAT_BYTES * (in_channels + num_classes * (tta_members + 2))
    network = model_bytes + windows + batch_size * window_voxels * activation_bytes_per_voxel
    compute_place = "GPU" if on_gpu else "RAM"
    stitch_place = "GPU" if (on_gpu and stitch_on_gpu) else "RAM"
    parts = {
        "input": ("RAM", inputs),
        "outputs": ("RAM", outputs),
        "stitching": (stitch_place, stitching),
        "network": (compute_place, network),
    }
    ram = sum(size for place, size in parts.values() if place == "RAM")
    gpu = sum(size for place, size in parts.values() if place == "GPU")
    return MemoryEstimate(ram_bytes=int(ram), gpu_bytes=int(gpu), parts=parts)


def available_ram() -> int:
    """Bytes of RAM the operating system can give this process now."""
    try:
        import psutil  # napari depends on it; kept optional for the library alone

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def plan_inference(
    shape: Sequence[int],
    patch_size: Sequence[int],
    *,
    in_channels: int,
    num_classes: int,
    windows: WindowOptions,
    on_gpu: bool,
    free_ram: int,
    free_gpu: int | None,
    **estimate_options,
) -> MemoryPlan:
    """Fit a job into the free memory, re-planning it if needed.

    Tries, in order: the job as asked (blending on the GPU when the network runs there);
    halving the batch down to one window; moving the blending buffers to RAM. Raises
    when nothing fits.

    Parameters
    ----------
    windows : WindowOptions
        As asked; the plan may reduce its ``batch_size``.
    free_ram : int
        Bytes of RAM available (see :func:`available_ram`).
    free_gpu : int or None
        Bytes free on the GPU (None when the job runs on the CPU).
    estimate_options
        Passed to :func:`estimate_memory` (``outputs``, ``tta_members``, ...).

    Raises
    ------
    InsufficientMemoryError
        With the estimated and the free bytes, when no plan fits.
    """
    notes: list[str] = []
    batch_size = windows.batch_size
    stitch_options = (True, False) if on_gpu else (False,)
    last = None
    for stitch_on_gpu in stitch_options:
        batch = batch_size
        while True:
            est = estimate_memory(shape, patch_size, in_channels=in_channels,
                                  num_classes=num_classes,
                                  windows=dataclasses.replace(windows, batch_size=batch),
                                  on_gpu=on_gpu, stitch_on_gpu=stitch_on_gpu,
                                  **estimate_options)
            last = est
            gpu_ok = free_gpu is None or est.gpu_bytes <= free_gpu
            if est.ram_bytes <= free_ram and gpu_ok:
                if batch != batch_size:
                    notes.append(f"Batch reduced from {batch_size} to {batch} windows to fit "
                                 f"in memory.")
                if on_gpu and not stitch_on_gpu:
                    notes.append("Blending moved to the CPU to fit in GPU memory.")
                return MemoryPlan(batch, stitch_on_gpu and on_gpu, est, tuple(notes))
            if batch == 1:
                break
            batch = max(1, batch // 2)
    assert last is not None
    raise InsufficientMemoryError(_refusal(last, free_ram, free_gpu))


def _refusal(est: MemoryEstimate, free_ram: int, free_gpu: int | None) -> str:
    def gb(n: int) -> str:
        return f"{n / GIB:.2f} GB"

    detail = ", ".join(f"{name} {gb(size)} ({place})" for name, (place, size) in est.parts.items())
    if est.ram_bytes > free_ram:
        head = f"needs about {gb(est.ram_bytes)} of RAM but only {gb(free_ram)} is free"
    else:
        head = f"needs about {gb(est.gpu_bytes)} of GPU memory but only {gb(free_gpu or 0)} is free"
    return (f"This segmentation {head} even with one window per batch ({detail}); use a smaller "
            f"volume, a coarser spacing or the CPU.")
