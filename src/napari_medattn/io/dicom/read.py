"""DICOM reading: files, folders (recursive), DICOMDIR; one Volume per series.

The work is done in two passes. The header pass reads every file with its pixel data
deferred (pydicom records where they sit), sorts out non-image objects, and groups the
image planes by SeriesInstanceUID. For each series the planes are ordered along the
slice normal and checked into one regular stack (:mod:`.geometry`); repeated
positions with equal counts become frames (time, echoes). The pixel pass then fills one
preallocated array (:mod:`.pixels`) and applies the rescale, and PET becomes SUVbw
when its tags allow (:mod:`napari_medattn.io.pet`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from napari_medattn.errors import MedAttnError, ReadError
from napari_medattn.io.dicom.files import (
    MEDIA_STORAGE_DIRECTORY,
    dicomdir_files,
    find_dicom_files,
    is_dicomdir,
)
from napari_medattn.io.dicom.geometry import (
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE_MM,
    check_same,
    slice_normal,
    stack_geometry,
)
from napari_medattn.io.dicom.pixels import (
    PixelSource,
    first_line,
    read_pixels,
    rescale,
    stored_dtype,
    worker_count,
)
from napari_medattn.io.dicom.seg import SEG_SOP_CLASSES, read_seg
from napari_medattn.io.nifti import is_nifti
from napari_medattn.io.pet import suv_bw_factor
from napari_medattn.io.volume import Volume

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, Float, DoubleFloat
# Elements larger than this are left on disk in the header pass (pixel data above all).
DEFER_SIZE = 1024
ASSUMED_GEOMETRY = ("has no patient position/orientation; it is shown on an assumed "
                    "axis-aligned grid")


@dataclasses.dataclass
class _Plane:
    """One 2D image: a single-frame file or one frame of a multi-frame file."""

    file: _File
    frame: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    spacing: np.ndarray | None
    thickness: float | None
    slope: float
    intercept: float
    order_key: tuple  # orders repeated positions into frames (time, echo, ...)


@dataclasses.dataclass
class _File:
    path: str
    header: Dataset
    pixels: PixelSource
    planes: list[_Plane] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _SegFile:
    """A DICOM-SEG met in the header pass: read as labels, never as an image series."""

    path: Path
    series: str  # the SeriesInstanceUID it references ("" when it names none)


def read_dicom(path: str | os.PathLike) -> list[Volume]:
    """Read every image series in a DICOM file, folder or DICOMDIR.

    Parameters
    ----------
    path : str or PathLike
        A DICOM file, a DICOMDIR, or a folder searched recursively.

    Returns
    -------
    list of Volume
        One per series, ordered by series number, each named
        ``"<SeriesDescription> <Modality> #<SeriesNumber>"``, then one label map per
        DICOM-SEG (:func:`~napari_medattn.io.dicom.seg.read_seg`: named, coloured
        segments, on the grid of the series it references when that series is read
        here too, else by its own frame positions). Non-image objects (SR, RT
        structure sets, ...) and unreadable files are listed in ``meta["skipped"]`` and in
        a warning on the first volume; a series that cannot be one regular volume is
        reported in the warnings of the others.

    Raises
    ------
    ReadError
        No image could be read (the message says what was found instead), or the only
        series is inconsistent (mixed matrix sizes or orientations).
    GeometryError
        The only series has missing slices or uneven spacing.
    """
    path = Path(path)
    notes: list[str] = []
    if path.is_dir():
        candidates, ignored = find_dicom_files(path)
        if ignored:
            notes.append(f"{ignored} non-DICOM file(s) ignored")
        single = False
    elif is_dicomdir(path):
        candidates, missing = dicomdir_files(path)
        if missing:
            notes.append(f"{missing} file(s) listed in the DICOMDIR are missing")
        single = False
    else:
        candidates = [(path, True)]
        single = True
    if not candidates:
        hint = ""
        if path.is_dir() and any(is_nifti(n) for _, _, names in os.walk(path)
                                 for n in names):
            hint = " (it has NIfTI files: open those files themselves)"
        raise ReadError(f"{path} holds no DICOM files{hint}.")

    files, segs, skipped = _scan(candidates, single)
    if not files and not segs:
        if skipped:
            raise ReadError(f"{path.name} holds no images, only: {'; '.join(skipped)}.")
        raise ReadError(f"{path.name} holds no DICOM images.")
    series: dict[str, list[_File]] = defaultdict(list)
    for file in files:
        series[str(file.header.get("SeriesInstanceUID", file.path))].append(file)

    volumes, failures = [], []
    for uid, members in series.items():
        try:
            volumes.append(_series_volume(uid, members, path))
        except MedAttnError as error:
            failures.append(error)
    volumes.sort(key=lambda v: (v.meta.get("series_number") is None,
                                v.meta.get("series_number") or 0, v.name))
    scans = {volume.meta["series_uid"]: volume for volume in volumes}
    for seg in segs:  # after the scans, so that napari draws the labels over them
        try:
            volumes.append(read_seg(seg.path, reference=scans.get(seg.series)))
        except MedAttnError as error:
            failures.append(error)
    if not volumes:
        if len(failures) == 1:
            raise failures[0]
        reasons = "; ".join(str(f).rstrip(".") for f in failures)
        raise ReadError(f"None of the {len(failures)} series in {path.name} could be read: "
                        f"{reasons}.")
    _unique_names(volumes)
    skipped = skipped + notes
    not_loaded = [str(failure) for failure in failures]
    for volume in volumes:
        volume.meta["skipped"] = list(skipped)
        volume.meta["not_loaded"] = list(not_loaded)
    # Said once, on the first volume, so the viewer does not repeat it per layer.
    if skipped:
        volumes[0].meta["warnings"].append("Skipped: " + "; ".join(skipped) + ".")
    volumes[0].meta["warnings"].extend(f"Not loaded: {text}" for text in not_loaded)
    return volumes


def _scan(candidates: list[tuple[Path, bool]], single: bool
          ) -> tuple[list[_File], list[_SegFile], list[str]]:
    """Header pass over all candidate files, in parallel: image files, SEGs, notes."""
    with ThreadPoolExecutor(worker_count()) as pool:
        results = list(pool.map(lambda c: _scan_file(*c), candidates))
    files, segs, non_image, unreadable, not_dicom = [], [], defaultdict(int), [], 0
    for (path, _), result in zip(candidates, results):
        if isinstance(result, _File):
            files.append(result)
        elif isinstance(result, _SegFile):
            segs.append(result)
        elif isinstance(result, tuple):
            non_image[result] += 1
        elif result is None:
            not_dicom += 1
        else:
            if single:
                raise ReadError(f"{path.name} is not a readable DICOM file ({result}).")
            unreadable.append(f"{path.name} ({result})")
    if single and not_dicom:
        raise ReadError(f"{candidates[0][0].name} is not a DICOM file.")
    skipped = [f"{count} {kind} object(s) without pixel data ({sop})" if kind != "colour"
               else f"{count} colour image(s) ({sop}), which are not volumes"
               for (kind, sop), count in sorted(non_image.items())]
    if unreadable:
        skipped.append(f"{len(unreadable)} unreadable file(s), e.g. {unreadable[0]}")
    if not_dicom:
        skipped.append(f"{not_dicom} non-DICOM file(s)")
    return files, segs, skipped


def _scan_file(path: Path, force: bool) -> _File | _SegFile | tuple[str, str] | str | None:
    """A :class:`_File`, a :class:`_SegFile`, ``(kind, SOP class)`` for a non-image, an
    error text, or None."""
    try:
        header = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=force)
    except InvalidDicomError:
        return None
    except Exception as error:  # truncated or corrupt: reported with the file name
        return first_line(error)
    sop = str(header.get("SOPClassUID", ""))
    if force and not sop:
        return None  # parsed as something, but not a DICOM object
    if sop == MEDIA_STORAGE_DIRECTORY:
        return ("DICOMDIR", "Media Storage Directory")
    if sop in SEG_SOP_CLASSES:
        referenced = header.get("ReferencedSeriesSequence")
        return _SegFile(path, str(referenced[0].get("SeriesInstanceUID", ""))
                        if referenced else "")
    sop_name = getattr(header.get("SOPClassUID"), "name", sop) or "unknown SOP class"
    modality = str(header.get("Modality", "")) or "unknown-modality"
    pixel_tag = next((tag for tag in PIXEL_TAGS if tag in header), None)
    if pixel_tag is None:
        return (modality, sop_name)
    if int(header.get("SamplesPerPixel", 1)) != 1:
        return ("colour", sop_name)
    try:
        file = _File(str(path), header, _pixel_source(path, header, pixel_tag))
        file.planes = _planes(file)
    except MedAttnError as error:
        return str(error)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as error:
        return f"bad header: {first_line(error)}"
    return file


def _pixel_source(path: Path, header: Dataset, pixel_tag: int) -> PixelSource:
    rows, columns = int(header.Rows), int(header.Columns)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    float_bits = {0x7FE00008: 32, 0x7FE00009: 64}.get(pixel_tag, 0)
    bits = int(header.get("BitsAllocated", 16))
    bits_stored = int(header.get("BitsStored", bits))
    signed = int(header.get("PixelRepresentation", 0)) == 1
    dtype = stored_dtype(bits, signed, float_bits)
    syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    element = header.get_item(pixel_tag, keep_deferred=True)
    offset = getattr(element, "value_tell", None)
    length = getattr(element, "length", None)
    # Fast path: plain uncompressed data whose stored bits need no sign extension.
    fast = (
        pixel_tag == 0x7FE00010
        and syntax is not None
        and not syntax.is_compressed
        and not syntax.is_deflated
        and bits in (8, 16, 32)
        and (bits_stored == bits or not signed)
        and offset is not None
        and length == rows * columns * frames * dtype.itemsize
        and getattr(element, "value", None) is None
    )
    return PixelSource(
        path=str(path), frames=frames, rows=rows, columns=columns, dtype=dtype,
        offset=offset if fast else None,
        big_endian=bool(fast and not syntax.is_little_endian),
    )


def _planes(file: _File) -> list[_Plane]:
    header = file.header
    shared = _item(header, "SharedFunctionalGroupsSequence")
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    frames = file.pixels.frames
    offsets = header.get("GridFrameOffsetVector")  # RT dose: frame positions along normal
    planes = []
    for frame in range(frames):
        groups = [per_frame[frame] if per_frame and frame < len(per_frame) else None, shared]
        position = _functional(groups, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _functional(groups, "PixelMeasuresSequence", "PixelSpacing")
        thickness = _functional(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")
        thickness = thickness or _functional(groups, "PixelMeasuresSequence", "SliceThickness")
        slope = _functional(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if position is None and (frames == 1 or offsets is not None):
            # The top-level position is the first frame's: it places a single frame, or
            # all frames together with the dose grid offsets.
            position = header.get("ImagePositionPatient")
        position = _vector(position, 3)
        orientation = _vector(orientation if orientation is not None
                              else header.get("ImageOrientationPatient"), 6)
        spacing = _vector(spacing if spacing is not None
                          else header.get("PixelSpacing", header.get("ImagerPixelSpacing")), 2)
        if offsets is not None and position is not None and orientation is not None:
            position = position + (float(offsets[frame]) - float(offsets[0])) \
                * slice_normal(orientation)
        if slope is None:
            slope = header.get("RescaleSlope", header.get("DoseGridScaling", 1.0))
        if intercept is None:
            intercept = header.get("RescaleIntercept", 0.0)
        thickness = thickness or header.get("SpacingBetweenSlices", header.get("SliceThickness"))
        content = _item(groups[0], "FrameContentSequence") if groups[0] is not None else None
        temporal = (content.get("TemporalPositionIndex") if content is not None else None)
        order_key = tuple(_sortable(v) for v in (
            temporal if temporal is not None else header.get("TemporalPositionIdentifier"),
            header.get("TriggerTime"), header.get("EchoNumbers"),
            header.get("AcquisitionNumber"), header.get("InstanceNumber"),
        )) + (file.path, frame)
        planes.append(_Plane(file, frame, position, orientation, spacing,
                             float(thickness) if thickness else None,
                             float(slope), float(intercept), order_key))
    return planes


def _series_volume(uid: str, files: list[_File], source: Path) -> Volume:
    header = files[0].header
    name = _series_name(header, uid)
    planes = [plane for file in files for plane in file.planes]
    check_same([(f.pixels.rows, f.pixels.columns) for f in files], "matrix sizes", name, 0)
    warnings: list[str] = []
    if all(p.orientation is None or p.position is None for p in planes):
        _assume_geometry(planes)
        warnings.append(f"Series {name} {ASSUMED_GEOMETRY}.")
    elif any(p.orientation is None or p.position is None for p in planes):
        raise ReadError(f"Series {name} has images with and without patient position; it "
                        f"cannot be one volume.")
    orientation = check_same([p.orientation for p in planes], "orientations", name,
                             ORIENTATION_TOLERANCE)
    if any(p.spacing is None or np.any(p.spacing <= 0) for p in planes):
        for plane in planes:
            plane.spacing = np.ones(2)
        warnings.append(f"Series {name} has no valid pixel spacing; 1 mm is assumed.")
    spacing = check_same([p.spacing for p in planes], "pixel spacings", name, 1e-4)

    # Repeated positions are frames (time points, echoes) of one stack.
    normal = slice_normal(orientation)
    planes.sort(key=lambda p: (float(p.position @ normal), p.order_key))
    groups: list[list[_Plane]] = []
    for plane in planes:
        if groups and np.linalg.norm(plane.position - groups[-1][0].position) \
                <= POSITION_TOLERANCE_MM:
            groups[-1].append(plane)
        else:
            groups.append([plane])
    counts = {len(g) for g in groups}
    if len(counts) != 1:
        raise ReadError(f"Series {name} has {min(counts)} images at some positions and "
                        f"{max(counts)} at others; it cannot be one volume.")
    n_frames = counts.pop()
    for group in groups:
        group.sort(key=lambda p: p.order_key)
    order, affine, notes = stack_geometry(
        np.array([g[0].position for g in groups]), orientation, spacing, series=name,
        single_slice_step=groups[0][0].thickness,
    )
    warnings += notes
    groups = [groups[i] for i in order]
    n_slices = len(groups)

    rows, columns = files[0].pixels.rows, files[0].pixels.columns
    dtype = np.result_type(*{f.pixels.dtype for f in files})
    raw = np.empty((n_frames * n_slices, rows, columns), dtype=dtype)
    jobs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    slopes = np.empty(n_frames * n_slices)
    intercepts = np.empty(n_frames * n_slices)
    for s, group in enumerate(groups):
        for f, plane in enumerate(group):
            index = f * n_slices + s
            jobs[plane.file.path].append((plane.frame, index))
            slopes[index], intercepts[index] = plane.slope, plane.intercept
    by_path = {f.path: f for f in files}
    read_pixels(raw, [(by_path[p].pixels, pairs) for p, pairs in jobs.items()])
    data = rescale(raw, slopes, intercepts)

    modality = str(header.get("Modality", "OT")) or "OT"
    units = _units(header, modality)
    if modality == "PT":
        factor, reason = suv_bw_factor(header)
        if factor is None:
            warnings.append(f"Series {name}: {reason}")
        else:
            data = data.astype(np.float32, copy=False)
            data *= np.float32(factor)
            units = "SUVbw"
    if n_frames > 1:
        data = data.reshape(n_frames, n_slices, rows, columns)
    meta = {
        "source": str(source.resolve()),
        "source_files": sorted({f.path for f in files}),
        "name": name,
        "format": "dicom",
        "series_uid": uid,
        "study_uid": str(header.get("StudyInstanceUID", "")),
        "series_description": str(header.get("SeriesDescription", "")),
        "series_number": _number(header.get("SeriesNumber")),
        "units": units,
        "dicom_header": header,
        "warnings": warnings,
    }
    if n_frames > 1:
        # Frames that differ in temporal position or trigger time are a time series.
        temporal = any(g[0].order_key[:2] != g[-1].order_key[:2] for g in groups)
        meta["frame_axis"] = "time" if temporal else "channel"
    return Volume(data=data, affine=affine, modality=modality, meta=meta)


def _assume_geometry(planes: list[_Plane]) -> None:
    """Stack planes without geometry in instance/frame order on an axis-aligned grid."""
    planes.sort(key=lambda p: p.order_key[3:])
    step = planes[0].thickness or 1.0
    for k, plane in enumerate(planes):
        plane.orientation = np.array([1.0, 0, 0, 0, 1, 0])
        plane.position = np.array([0.0, 0.0, k * step])


def _series_name(header: Dataset, uid: str) -> str:
    description = str(header.get("SeriesDescription", "") or header.get("ProtocolName", "")
                      ).strip()
    modality = str(header.get("Modality", "")).strip() or "OT"
    number = _number(header.get("SeriesNumber"))
    tail = f"#{number}" if number is not None else f"series …{uid[-6:]}"
    return " ".join(part for part in (description, modality, tail) if part)


def _unique_names(volumes: list[Volume]) -> None:
    seen: dict[str, int] = defaultdict(int)
    for volume in volumes:
        seen[volume.name] += 1
        if seen[volume.name] > 1:
            volume.meta["name"] = f"{volume.name} ({seen[volume.name]})"


def _units(header: Dataset, modality: str) -> str | None:
    if modality == "CT" and str(header.get("RescaleType", "HU")).upper() in ("HU", "US", ""):
        return "HU"
    if modality == "PT":
        return str(header.get("Units", "")) or None
    if modality == "RTDOSE":
        return str(header.get("DoseUnits", "")) or None
    return None


def _item(dataset: Dataset | None, keyword: str) -> Dataset | None:
    if dataset is None:
        return None
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _functional(groups: list[Dataset | None], sequence: str, keyword: str):
    """A value from the per-frame group, else the shared group, else None."""
    for group in groups:
        item = _item(group, sequence)
        if item is not None and keyword in item and item.get(keyword) not in (None, ""):
            return item.get(keyword)
    return None


def _vector(value, length: int) -> np.ndarray | None:
    if value is None or value == "":
        return None
    vector = np.asarray([float(v) for v in value], dtype=np.float64)
    if vector.shape != (length,):
        raise ReadError(f"A geometry tag has {vector.size} values where {length} are needed.")
    return vector


def _sortable(value) -> float:
    number = _number(value)
    return float("-inf") if number is None else float(number)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number == int(number) else number
