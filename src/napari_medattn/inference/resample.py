"""The package's one resampler: a volume onto another grid, with the exact output affine.

A grid is a shape plus an affine (array index -> LPS mm). Resampling evaluates the
source at the patient point of every target voxel: target index ``j`` reads source index
``inv(A_src) @ A_dst @ j``, so the result's affine is the target affine itself and every
voxel keeps its physical place. Labels use nearest neighbour (their integer values and
dtype are kept), intensities and probabilities trilinear interpolation. The target of
:func:`spacing_grid` keeps the directions and the centre of the field of view, so
resampling there and back (:func:`resample_to_grid` onto the source grid) returns the
source geometry bit for bit.

Two paths, chosen from the index mapping, both compiled loops run over slabs of output
planes on all the threads torch is allowed (:mod:`.resample_kernels`): grids whose axes
are parallel in any order and direction (the mapping is a permuted diagonal scaling plus
a shift: resampling to another voxel size and back, as inference does; a RAS NIfTI onto
an LPS CT) go through a separable path, one lookup (nearest) or one two-tap pass
(linear) per axis on a strided view of the source; other (oblique) grids through a
trilinear loop. The separable path computes the source coordinates as scipy's
``zoom_shift`` does (``(j + offset / zoom) * zoom``), the oblique one as scipy's general
``affine_transform``, so labels and border decisions are scipy's and intensities equal
scipy's and SimpleITK's up to float32 rounding (both tested).

Values outside the source follow ``mode``: ``"nearest"`` repeats the border voxel;
``"constant"`` gives ``cval`` beyond the outermost voxel centres (scipy's rule, which
registration uses); ``"itk"`` gives ``cval`` from half a voxel past them on and repeats
the border voxel within that half voxel (ITK's resampler, which fusion matches).

Registration results need two more ways in, here so that there is still one resampler:
:func:`sample_points` (values at arbitrary mm points) and :func:`resample_through`
(onto a grid through a transform fixed mm -> source mm; linear transforms go through
:func:`resample_to_grid` exactly, others are evaluated point by point in slabs).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from napari_medattn.errors import GeometryError
from napari_medattn.io.volume import Volume

NEAREST = 0
LINEAR = 1
#: Ways to treat target voxels outside the source (see the module's text).
MODES = ("nearest", "constant", "itk")


def spacing_grid(affine: np.ndarray, shape: tuple[int, ...],
                 spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid with the same directions and field-of-view centre at a new voxel size.

    Parameters
    ----------
    affine : (4, 4) ndarray
        Source index -> LPS mm.
    shape : tuple of int
        Source spatial shape (3 axes).
    spacing : tuple of float
        Target voxel size in mm per array axis.

    Returns
    -------
    affine : (4, 4) ndarray
        Target index -> LPS mm; column ``d`` has length ``spacing[d]``.
    shape : tuple of int
        ``round(shape * source spacing / spacing)``, at least 1.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise GeometryError(f"The target spacing must be three positive sizes in mm, got "
                            f"{spacing.tolist()}.")
    source_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    extent = np.asarray(shape, dtype=np.float64) * source_spacing
    new_shape = tuple(int(max(1, round(e))) for e in extent / spacing)
    ratio = spacing / source_spacing
    # Target index j sits at source index c_src + (j - c_dst) * ratio (centres aligned).
    centre_src = (np.asarray(shape) - 1) / 2.0
    centre_dst = (np.asarray(new_shape) - 1) / 2.0
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(ratio)
    index_map[:3, 3] = centre_src - centre_dst * ratio
    return affine @ index_map, new_shape


def resample_to_grid(volume: Volume, affine: np.ndarray, shape: tuple[int, ...], *,
                     order: int = LINEAR, mode: str = "nearest", cval: float = 0.0) -> Volume:
    """Resample ``volume`` onto the grid ``(affine, shape)``.

    Parameters
    ----------
    volume : Volume
        Source, 3D or 4D (frames first; each frame is resampled alike).
    affine : (4, 4) ndarray
        Target index -> LPS mm.
    shape : tuple of int
        Target spatial shape.
    order : int
        0 (nearest: labels, dtype kept) or 1 (linear: intensities, float32 output).
    mode : {"nearest", "constant", "itk"}
        Values outside the source: repeat the border, ``cval`` beyond the outermost voxel
        centres (scipy), or ``cval`` beyond half a voxel past them (ITK's resampler).
    cval : float
        Fill value for ``mode="constant"`` and ``"itk"``, in the volume's units.

    Returns
    -------
    Volume
        ``affine`` exactly, the source modality and meta.
    """
    _check(order, mode)
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    mapping = np.linalg.solve(volume.affine, affine)  # target index -> source index
    data = np.asarray(volume.data)
    if not data.dtype.isnative:  # big-endian NIfTI data: the compiled loops read native
        data = data.astype(data.dtype.newbyteorder("="))
    out_dtype = data.dtype if order == NEAREST else np.float32
    axes = parallel_axes(mapping)
    frames = data[None] if data.ndim == 3 else data
    out = np.empty((frames.shape[0], *shape), dtype=out_dtype)
    for f, frame in enumerate(frames):
        if axes is None:
            _oblique_resample(frame, mapping, order, mode, cval, out[f])
        else:
            view = frame.transpose(axes)
            zoom = mapping[axes, [0, 1, 2]]
            _separable_resample(view, zoom, mapping[axes, 3], order, mode, cval, out[f])
    result = out[0] if data.ndim == 3 else out
    return Volume(data=result, affine=affine.copy(), modality=volume.modality,
                  meta=dict(volume.meta))


def parallel_axes(mapping: np.ndarray) -> tuple[int, int, int] | None:
    """The source axis along each target axis when the grids are parallel, else None.

    Parameters
    ----------
    mapping : (4, 4) ndarray
        Target index -> source index.

    Returns
    -------
    tuple of int or None
        ``axes[d]`` is the source axis that target axis ``d`` runs along (in either
        direction); None when some target axis is oblique to the source's.
    """
    linear = np.asarray(mapping, dtype=np.float64)[:3, :3]
    axes = np.argmax(np.abs(linear), axis=0)
    if sorted(axes.tolist()) != [0, 1, 2]:
        return None
    off_axis = np.ones((3, 3), bool)
    off_axis[axes, np.arange(3)] = False
    # Exactly zero: a mapping off by rounding is oblique for scipy too, and the two
    # paths must agree on what they call parallel.
    if np.any(linear[off_axis] != 0.0):
        return None
    return tuple(int(a) for a in axes)


def _check(order: int, mode: str) -> None:
    if order not in (NEAREST, LINEAR):
        raise GeometryError(f"Resampling order must be 0 (nearest) or 1 (linear), got {order}.")
    if mode not in MODES:
        raise GeometryError(f"The border mode must be one of {', '.join(MODES)}, got {mode!r}.")


def _border(mode: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per source axis, the coordinates below ``low`` or above ``high`` that are outside."""
    n = np.asarray(shape, dtype=np.float64)
    if mode == "nearest":
        return np.full(3, -np.inf), np.full(3, np.inf)
    if mode == "constant":
        return np.zeros(3), n - 1.0
    # ITK: inside is [-0.5, n - 0.5), half-open; the largest double below n - 0.5 makes
    # the upper bound inclusive like the others.
    return np.full(3, -0.5), np.nextafter(n - 0.5, -np.inf)


def _threads() -> int:
    """Threads for the loops: torch's setting where torch is loaded (the widgets' Job
    helper lowers it to leave the GUI a core), else the CPUs this process may use."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, int(torch.get_num_threads()))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _in_slabs(run, planes: int) -> None:
    """Call ``run(start, stop)`` over slabs of output planes, on a thread pool."""
    threads = min(_threads(), planes)
    # A few slabs per thread evens out slabs that cost more (more of them inside); at most
    # 32 planes each bounds the separable path's working copy to a slab's source planes.
    count = min(planes, max(4 * threads, -(-planes // 32)))
    bounds = np.linspace(0, planes, count + 1).round().astype(int)
    if threads <= 1:
        for a, b in zip(bounds[:-1], bounds[1:]):
            run(int(a), int(b))
        return
    with ThreadPoolExecutor(threads) as pool:
        jobs = [pool.submit(run, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])
                if b > a]
        for job in jobs:
            job.result()


def _oblique_resample(frame: np.ndarray, mapping: np.ndarray, order: int, mode: str,
                      cval: float, out: np.ndarray) -> None:
    """Resample ``frame`` into ``out`` through a general index mapping (compiled loop).

    The source is copied once (float32 for linear) with its axes ordered like the
    target's nearest ones, so that a row of output voxels walks along the source's
    contiguous axis and its neighbours stay in cache.
    """
    from napari_medattn.inference import resample_kernels as kernels

    axes = np.argmax(np.abs(mapping[:3, :3]), axis=0)
    if sorted(axes.tolist()) != [0, 1, 2]:
        axes = np.arange(3)
    dtype = np.float32 if order == LINEAR else frame.dtype
    source = np.ascontiguousarray(frame.transpose(axes), dtype=dtype)
    matrix = np.ascontiguousarray(mapping[axes, :3])
    offset = np.ascontiguousarray(mapping[axes, 3])
    low, high = _border(mode, source.shape)
    if order == LINEAR:
        flat, fill = source.ravel(), np.float32(cval)

        def run(start: int, stop: int) -> None:
            kernels.affine_linear(flat, *source.shape, matrix, offset, low, high, fill,
                                  start, stop, out[start:stop])
    else:
        fill = out.dtype.type(cval)

        def run(start: int, stop: int) -> None:
            kernels.affine_nearest(source, matrix, offset, low, high, fill, start, stop,
                                   out[start:stop])
    _in_slabs(run, out.shape[0])


def _separable_resample(view: np.ndarray, zoom: np.ndarray, offset: np.ndarray, order: int,
                        mode: str, cval: float, out: np.ndarray) -> None:
    """Resample ``view`` into ``out`` for a diagonal index mapping (compiled loops).

    ``view`` is the source with its axes along the target's (any strides, any direction);
    target index ``j`` reads source coordinate ``zoom * j + offset`` on each axis. Nearest
    neighbour takes ``floor(c + 0.5)`` (values and dtype kept); linear blends
    ``floor(c)`` and ``floor(c) + 1`` with weights ``1 - t`` and ``t``, in float32,
    reading the source dtype directly (no float copy of a full CT).
    """
    from napari_medattn.inference import resample_kernels as kernels

    low, high = _border(mode, view.shape)
    tables, outside = [], []
    for d in range(3):
        size, length = out.shape[d], view.shape[d]
        # scipy's zoom_shift arithmetic, so both agree on every border decision.
        c = (np.arange(size, dtype=np.float64) + offset[d] / zoom[d]) * zoom[d]
        outside.append(np.flatnonzero((c < low[d]) | (c > high[d])))
        c = np.clip(c, 0.0, length - 1.0)
        if order == NEAREST:
            tables.append([np.minimum(np.floor(c + 0.5), length - 1).astype(np.intp)])
        else:
            lower = np.floor(c).astype(np.intp)
            tables.append([lower, np.minimum(lower + 1, length - 1),
                           (c - lower).astype(np.float32)])
    kernel = kernels.separable_nearest if order == NEAREST else kernels.separable_linear
    arguments = [array for table in tables for array in table]

    def run(start: int, stop: int) -> None:
        kernel(view, *arguments, start, stop, out[start:stop])

    _in_slabs(run, out.shape[0])
    for d, index in enumerate(outside):
        if index.size:
            where = [slice(None)] * 3
            where[d] = index
            out[tuple(where)] = cval


def resample_to_spacing(volume: Volume, spacing: tuple[float, ...], *,
                        order: int = LINEAR) -> Volume:
    """Resample to voxel size ``spacing`` (mm per array axis), see :func:`spacing_grid`."""
    affine, shape = spacing_grid(volume.affine, volume.spatial_shape, spacing)
    return resample_to_grid(volume, affine, shape, order=order)


def sample_points(volume: Volume, points: np.ndarray, *, order: int = LINEAR,
                  mode: str = "constant", cval: float = 0.0) -> np.ndarray:
    """Sample ``volume`` at arbitrary patient points.

    Parameters
    ----------
    volume : Volume
        Source, 3D or 4D (frames first; each frame is sampled alike).
    points : (..., 3) ndarray
        LPS positions in mm.
    order : int
        0 (nearest: labels, dtype kept) or 1 (linear, float32 output).
    mode : {"constant", "nearest", "itk"}
        Values outside the source, as for :func:`resample_to_grid`.
    cval : float
        Fill value for ``mode="constant"`` and ``"itk"``, in the volume's units.

    Returns
    -------
    ndarray
        Shape ``points.shape[:-1]``, with the frames first for a 4D volume.
    """
    _check(order, mode)
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise GeometryError(f"Points must have 3 coordinates in mm, got shape {points.shape}.")
    to_index = np.linalg.inv(volume.affine)
    index = (points.reshape(-1, 3) @ to_index[:3, :3].T + to_index[:3, 3]).T
    data = np.asarray(volume.data)
    frames = data[None] if data.ndim == 3 else data
    out_dtype = data.dtype if order == NEAREST else np.float32
    out = np.empty((frames.shape[0], index.shape[1]), dtype=out_dtype)
    for f, frame in enumerate(frames):
        if order == LINEAR and frame.dtype != np.float32:
            frame = frame.astype(np.float32)
        ndimage.map_coordinates(frame, index, output=out[f], order=order,
                                mode="nearest" if mode == "itk" else mode, cval=cval,
                                prefilter=False)
    if mode == "itk":
        low, high = _border(mode, frames.shape[1:])
        outside = np.any((index < low[:, None]) | (index > high[:, None]), axis=0)
        out[:, outside] = cval
    out = out.reshape((frames.shape[0], *points.shape[:-1]))
    return out[0] if data.ndim == 3 else out


def resample_through(volume: Volume, affine: np.ndarray, shape: tuple[int, ...], transform,
                     *, order: int = LINEAR, mode: str = "constant", cval: float = 0.0,
                     slab_voxels: int = 2_000_000) -> Volume:
    """Resample ``volume`` onto the grid ``(affine, shape)`` through a spatial transform.

    Target voxel ``j`` takes the source value at ``transform(affine @ j)``: the transform
    maps target (fixed) mm to source (moving) mm, the direction registration results
    and ITK's resampler use.

    Parameters
    ----------
    volume : Volume
        Source (moving), 3D or 4D.
    affine : (4, 4) ndarray
        Target index -> LPS mm.
    shape : tuple of int
        Target spatial shape.
    transform : callable or object with ``matrix``
        ``transform(points)`` maps ``(N, 3)`` target mm to ``(N, 3)`` source mm. An object
        with a 4x4 ``matrix`` attribute (a linear transform) goes through
        :func:`resample_to_grid` exactly, without evaluating points.
    order, mode, cval
        As for :func:`sample_points`.
    slab_voxels : int
        Target voxels evaluated at once (bounds the memory of the point arrays).

    Returns
    -------
    Volume
        On the target grid (``affine`` exactly), the source modality and meta.
    """
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    matrix = getattr(transform, "matrix", None)
    if matrix is not None:
        # Target index -> source mm is one affine map: the exact linear path.
        moved = resample_to_grid(volume, np.asarray(matrix) @ affine, shape, order=order,
                                 mode=mode, cval=cval)
        return Volume(data=moved.data, affine=affine.copy(), modality=volume.modality,
                      meta=dict(volume.meta))
    data = np.asarray(volume.data)
    lead = data.shape[:-3]
    out_dtype = data.dtype if order == NEAREST else np.float32
    out = np.empty((*lead, *shape), dtype=out_dtype)
    plane = int(np.prod(shape[1:]))
    step = max(1, slab_voxels // max(plane, 1))
    rest = np.stack(np.meshgrid(*[np.arange(n) for n in shape[1:]], indexing="ij"), -1)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        first = np.broadcast_to(np.arange(start, stop)[:, None, None, None],
                                (stop - start, *shape[1:], 1))
        index = np.concatenate([first, np.broadcast_to(rest, (stop - start, *rest.shape))], -1)
        points = index @ affine[:3, :3].T + affine[:3, 3]
        mapped = np.asarray(transform(points.reshape(-1, 3))).reshape(points.shape)
        out[..., start:stop, :, :] = sample_points(volume, mapped, order=order, mode=mode,
                                                   cval=cval)
    return Volume(data=out, affine=affine.copy(), modality=volume.modality,
                  meta=dict(volume.meta))
