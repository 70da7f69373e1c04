"""Reading DICOM pixels into one preallocated array, then rescaling to physical units.

Uncompressed little- or big-endian pixel data are read with ``readinto`` straight into
their slice of the output array (the header pass recorded where they sit in the file), so
a 300-slice CT is one allocation and no per-slice temporaries. Compressed transfer
syntaxes (JPEG 2000, JPEG lossless/baseline, JPEG-LS, RLE, deflate) go through pydicom's
decoders (pylibjpeg plugins where installed).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom

from napari_medattn.errors import ReadError


@dataclasses.dataclass
class PixelSource:
    """Where one file's pixels are and how they are stored."""

    path: str
    frames: int
    rows: int
    columns: int
    dtype: np.dtype  # stored dtype, native byte order
    offset: int | None  # byte offset of uncompressed PixelData, None when decoded by pydicom
    big_endian: bool = False


def stored_dtype(bits_allocated: int, signed: bool, float_bits: int = 0) -> np.dtype:
    """The numpy dtype pydicom decodes a stored pixel to."""
    if float_bits:
        return np.dtype(np.float32 if float_bits == 32 else np.float64)
    if bits_allocated == 1:
        return np.dtype(np.uint8)  # bit-packed (SEG): pydicom unpacks to uint8
    if bits_allocated not in (8, 16, 32):
        raise ReadError(f"{bits_allocated} bits per pixel are not supported.")
    return np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")


def worker_count() -> int:
    """Threads for file I/O: reads and decoders release the GIL, parsing does not."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def read_pixels(out: np.ndarray, jobs: list[tuple[PixelSource, list[tuple[int, int]]]]) -> None:
    """Fill ``out[index]`` with frame ``frame`` of each source, for ``(frame, index)`` pairs.

    Parameters
    ----------
    out : (n, rows, columns) ndarray
        Preallocated, C-contiguous, in the stored dtype.
    jobs : list
        For each file, its :class:`PixelSource` and the ``(frame, index)`` pairs to copy.

    Raises
    ------
    ReadError
        A file is truncated or its compressed data cannot be decoded.
    """
    with ThreadPoolExecutor(worker_count()) as pool:
        for future in [pool.submit(_read_file, out, source, pairs) for source, pairs in jobs]:
            future.result()


def _read_file(out: np.ndarray, source: PixelSource, pairs: list[tuple[int, int]]) -> None:
    name = os.path.basename(source.path)
    if source.offset is not None:
        frame_bytes = source.rows * source.columns * source.dtype.itemsize
        with open(source.path, "rb") as handle:
            for frame, index in pairs:
                handle.seek(source.offset + frame * frame_bytes)
                target = out[index]
                if target.dtype != source.dtype:
                    buffer = np.empty(target.shape, source.dtype)
                    got = handle.readinto(memoryview(buffer).cast("B"))
                else:
                    buffer = target
                    got = handle.readinto(memoryview(target).cast("B"))
                if got != frame_bytes:
                    raise ReadError(f"{name} is truncated: its pixel data end early.")
                if source.big_endian:
                    buffer.byteswap(inplace=True)
                if buffer is not target:
                    target[...] = buffer
        return
    try:
        dataset = pydicom.dcmread(source.path, force=True)  # files without a preamble too
        pixels = dataset.pixel_array
    except Exception as error:  # decoders raise many types; the user needs the file and why
        raise ReadError(f"The pixel data of {name} cannot be decoded ({first_line(error)}).") \
            from None
    pixels = pixels.reshape(source.frames, source.rows, source.columns)
    for frame, index in pairs:
        out[index] = pixels[frame]


def rescale(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply per-frame Rescale Slope/Intercept, exactly and in place when possible.

    Integer data with unit slope and whole intercepts stay integer (int16 when the
    result fits, e.g. CT in HU; else int32); otherwise the result is float32.

    Parameters
    ----------
    raw : (n, rows, columns) ndarray
        Stored values.
    slopes, intercepts : (n,) ndarray
        Per frame.
    """
    slopes = np.asarray(slopes, dtype=np.float64)
    intercepts = np.asarray(intercepts, dtype=np.float64)
    identity = np.all(slopes == 1.0) and np.all(intercepts == 0.0)
    if identity:
        return raw
    integral = (np.issubdtype(raw.dtype, np.integer) and np.all(slopes == 1.0)
                and np.all(intercepts == np.round(intercepts)))
    if integral:
        low = int(raw.min()) + int(intercepts.min())
        high = int(raw.max()) + int(intercepts.max())
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                out = raw.astype(dtype, copy=False)
                if np.all(intercepts == intercepts[0]):
                    out += dtype(intercepts[0])
                else:
                    out += intercepts.astype(dtype)[:, None, None]
                return out
    out = raw.astype(np.float32)
    out *= slopes.astype(np.float32)[:, None, None]
    out += intercepts.astype(np.float32)[:, None, None]
    return out


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-sentence user errors."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__).rstrip(".")
