"""DICOM Segmentation objects (DICOM-SEG): label maps out and in, through highdicom.

Writing ties every frame to the source image it was drawn on: the label map (any array
order, on the source series' grid) is cut into one plane per source instance, in that
instance's own row/column order, and highdicom builds the SEG from those instances, so the
patient, study and frame-of-reference identifiers are the source's (never invented).
Each class becomes a segment with a coded category and type (SNOMED CT where pydicom's
code dictionary names the class, else a private ``99MEDATTN`` code) and its colour, and an
automatic segmentation names its algorithm (model, version, weights hash).

Reading gives a label :class:`~napari_medattn.io.volume.Volume` (``modality="SEG"``,
``meta["classes"]`` as ``(name, "#rrggbb")`` by label): on the grid of an open reference
scan when one is given (through the SEG's references to its instances), else on the grid
the SEG's own frame positions describe.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

import napari_medattn
from napari_medattn.errors import DimensionError, GeometryError, ReadError, WriteError
from napari_medattn.io.atomic import atomic_path
from napari_medattn.io.volume import Volume, require_3d

#: SOP classes read by :func:`read_seg` (binary/fractional, and label-map SEG).
SEG_SOP_CLASSES = (SegmentationStorage, "1.2.840.10008.5.1.4.1.1.66.7")
#: Private coding scheme for class names SNOMED CT (as pydicom knows it) does not name.
PRIVATE_SCHEME = "99MEDATTN"
# A plane counts as on the label grid when its indices are this close to whole numbers.
GRID_TOLERANCE_VOXELS = 1e-3
_SYNONYMS = {"csf": "CerebrospinalFluid", "grey matter": "GrayMatter",
             "gm": "GrayMatter", "wm": "WhiteMatter", "tumour": "Tumor"}
_ABNORMAL = re.compile(r"lesion|tumou?r|neoplasm|nodule|metasta|cancer|mass", re.I)
_TISSUE = re.compile(r"matter|fluid|csf|fat|muscle|tissue|bone", re.I)
_DEFAULT_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4")


def source_instances(volume: Volume, what: str = "a DICOM-SEG") -> list[Dataset]:
    """The headers (no pixel data) of the DICOM instances a volume was read from.

    Parameters
    ----------
    volume : Volume
        Read from a DICOM series (``meta["source_files"]``), or a label map made on one.
    what : str
        What is to reference them, for the error's sentence.

    Raises
    ------
    WriteError
        The volume does not come from DICOM files that still exist.
    """
    files = require_dicom_source(volume, what)
    try:
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise WriteError(f"The source DICOM files of {volume.name} cannot be read any more "
                         f"({error}).") from None
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) != 1:
        raise WriteError(f"The source files of {volume.name} belong to {len(series)} series; "
                         f"a DICOM-SEG references one.")
    frames = {str(h.get("FrameOfReferenceUID", "")) for h in headers}
    if len(frames) != 1 or not frames.pop():
        raise WriteError(f"The images of {volume.name} do not share one frame of reference; "
                         f"a DICOM-SEG cannot place its frames in them.")
    return headers


def require_dicom_source(volume: Volume, what: str = "a DICOM-SEG") -> list[str]:
    """The DICOM files ``volume`` was read from; :class:`WriteError` (naming ``what`` is to
    be written) when it does not come from a DICOM series. Reads nothing, so commands
    check it before any work."""
    files = volume.meta.get("source_files")
    if volume.meta.get("format") != "dicom" or not files:
        raise WriteError(f"{volume.name} does not come from a DICOM series; {what} must "
                         f"reference its source images (write NIfTI instead).")
    return list(files)


def segment_codes(name: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """Coded (category, type) of a class name, as a segment description needs them.

    The type is the SNOMED CT concept pydicom's code dictionary lists under the name
    (``"liver"`` -> Liver, ``"grey matter"`` -> Gray Matter, ``"CSF"`` -> Cerebrospinal
    Fluid), else a private ``99MEDATTN`` code carrying the name. The category is
    Morphologically Abnormal Structure for lesions and tumours, Tissue for tissues
    (matter, fluid, fat, muscle, bone), else Anatomical Structure.
    """
    keyword = _SYNONYMS.get(name.strip().lower()) or "".join(
        word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z0-9]+", name) if word)
    try:
        code = getattr(codes.SCT, keyword)
        kind = hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    except (AttributeError, RuntimeError):
        value = re.sub(r"[^A-Za-z0-9]+", "_", name.strip()).upper()[:16] or "CLASS"
        kind = hd.sr.CodedConcept(value, PRIVATE_SCHEME, name[:64])
    if _ABNORMAL.search(name):
        category = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
    elif _TISSUE.search(name):
        category = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    else:
        category = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
    return category, kind


def _classes(labels: Volume, classes: Sequence | None, n_labels: int) -> list[tuple[str, str]]:
    """``(name, colour)`` per label 1..n from ``classes`` (index 0 = background)."""
    given = list(classes if classes is not None else labels.meta.get("classes") or [])
    out = []
    for label in range(1, n_labels + 1):
        entry = given[label] if label < len(given) else None
        if isinstance(entry, (tuple, list)):
            name, colour = str(entry[0]), str(entry[1])
        elif entry is not None and hasattr(entry, "name"):
            name, colour = str(entry.name), str(getattr(entry, "color", ""))
        else:
            name, colour = (str(entry) if entry is not None else f"class {label}"), ""
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            colour = _DEFAULT_COLOURS[(label - 1) % len(_DEFAULT_COLOURS)]
        out.append((name, colour))
    return out


def _plane_indexer(affine: np.ndarray, shape: tuple[int, ...], header: Dataset
                   ) -> tuple[tuple, bool]:
    """The index into a label array on ``affine`` that yields one source plane as
    (rows, columns), and whether the result must be transposed.

    Raises GeometryError when the plane does not lie on the label grid.
    """
    position = np.asarray([float(v) for v in header.ImagePositionPatient])
    cosines = np.asarray([float(v) for v in header.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    inverse = np.linalg.inv(affine[:3, :3])
    origin = inverse @ (position - affine[:3, 3])
    # Stepping one column moves along the row cosines, one row along the column cosines.
    column_step = inverse @ (cosines[:3] * column_spacing)
    row_step = inverse @ (cosines[3:] * row_spacing)
    steps = []
    for step in (row_step, column_step):
        axis = int(np.argmax(np.abs(step)))
        unit = np.zeros(3)
        unit[axis] = np.sign(step[axis])
        if np.abs(step - unit).max() > GRID_TOLERANCE_VOXELS:
            raise GeometryError("The label map is not on the grid of its source series "
                                "(resample it onto the scan first).")
        steps.append((axis, int(unit[axis])))
    if np.abs(origin - np.round(origin)).max() > GRID_TOLERANCE_VOXELS:
        raise GeometryError("The label map is not on the grid of its source series "
                            "(resample it onto the scan first).")
    origin = np.round(origin).astype(int)
    rows, columns = int(header.Rows), int(header.Columns)
    index: list = [None, None, None]
    for (axis, sign), count in zip(steps, (rows, columns)):
        start, stop = origin[axis], origin[axis] + sign * (count - 1)
        if min(start, stop) < 0 or max(start, stop) >= shape[axis]:
            raise GeometryError("The source series reaches beyond the label map; it was "
                                "drawn on another grid.")
        end = stop + sign
        index[axis] = slice(start, None if end < 0 else end, sign)
    (plane_axis,) = [a for a in range(3) if index[a] is None]
    if not 0 <= origin[plane_axis] < shape[plane_axis]:
        raise GeometryError("A source image lies outside the label map; it was drawn on "
                            "another grid.")
    index[plane_axis] = int(origin[plane_axis])
    return tuple(index), steps[0][0] > steps[1][0]


def planes_for_instances(labels: Volume, instances: Sequence[Dataset]) -> np.ndarray:
    """The label map cut into one (rows, columns) plane per source instance, in order."""
    data = np.asarray(labels.data)
    planes = np.empty((len(instances), int(instances[0].Rows), int(instances[0].Columns)),
                      dtype=data.dtype)
    for k, header in enumerate(instances):
        index, transposed = _plane_indexer(labels.affine, data.shape, header)
        plane = data[index]
        planes[k] = plane.T if transposed else plane
    return planes


def write_seg(path: str | os.PathLike, labels: Volume, **options) -> Path:
    """Write :func:`seg_dataset` of a label map to a new ``.dcm`` file, atomically.

    ``options`` are those of :func:`seg_dataset`; ``path`` must not be a source image
    (:class:`WriteError`). Returns ``path``.
    """
    refuse_source_path(path, labels)
    return save_dataset(path, seg_dataset(labels, **options))


def refuse_source_path(path: str | os.PathLike, volume: Volume) -> None:
    """Raise :class:`WriteError` when ``path`` is one of ``volume``'s source files."""
    if str(Path(path).resolve()) in {str(Path(f).resolve())
                                     for f in volume.meta.get("source_files", ())}:
        raise WriteError(f"{Path(path).name} is one of the source images; a derived DICOM "
                         f"object goes to a new file.")


def seg_dataset(
    labels: Volume,
    *,
    classes: Sequence | None = None,
    algorithm: dict | None = None,
    source: Sequence[Dataset] | None = None,
    series_description: str = "Segmentation",
    series_number: int = 300,
) -> hd.seg.Segmentation:
    """A label map drawn on a DICOM series as a binary DICOM-SEG (in memory).

    Parameters
    ----------
    labels : Volume
        3D integer label map on the grid of its source series (any array order, e.g. the
        canonical view of a napari layer); 0 is background.
    classes : sequence, optional
        By label index, index 0 background: ``(name, "#rrggbb")`` pairs, objects with
        ``name``/``color`` (a model card's classes) or names. Default
        ``labels.meta["classes"]``, else ``"class <n>"``.
    algorithm : dict, optional
        ``{"name", "version", "weights_sha256"}`` of the model that made the labels; the
        segments are then AUTOMATIC (else MANUAL).
    source : sequence of pydicom Dataset, optional
        The source instances; default: re-read from ``labels.meta["source_files"]``.
    series_description : str
        Series Description of the SEG.
    series_number : int
        Series Number of the SEG.

    Returns
    -------
    highdicom.seg.Segmentation

    Raises
    ------
    WriteError
        No DICOM source.
    DimensionError
        Not a 3D map of non-negative integers, or no label at all.
    GeometryError
        The map is not on the source series' grid.
    """
    labels = require_3d(labels)
    data = np.asarray(labels.data)
    if data.dtype.kind not in "iu" or (data.size and data.min() < 0):
        raise DimensionError(f"{labels.name} is not a map of non-negative integer labels; "
                             f"only those can become a DICOM-SEG.")
    n_labels = int(data.max()) if data.size else 0
    if n_labels == 0:
        raise DimensionError(f"{labels.name} is empty: a DICOM-SEG needs at least one "
                             f"labelled voxel.")
    instances = with_type2_attributes(list(source) if source is not None else source_instances(labels))
    planes = planes_for_instances(labels, instances)
    named = _classes(labels, classes, n_labels)
    algorithm_id = None
    if algorithm:
        parameters = {"weights_sha256": str(algorithm["weights_sha256"])} \
            if algorithm.get("weights_sha256") else None
        algorithm_id = hd.AlgorithmIdentificationSequence(
            name=str(algorithm.get("name", "model"))[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=str(algorithm.get("version", napari_medattn.__version__))[:64],
            source="napari-medattn", parameters=parameters)
    descriptions = []
    for number, (name, colour) in enumerate(named, start=1):
        category, kind = segment_codes(name)
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=category, segmented_property_type=kind,
            algorithm_type="AUTOMATIC" if algorithm_id else "MANUAL",
            algorithm_identification=algorithm_id,
            tracking_uid=hd.UID(), tracking_id=f"{name} segment {number}"[:64],
            display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    model_name = str((algorithm or {}).get("name", "manual"))[:64]
    return hd.seg.Segmentation(
        source_images=instances, pixel_array=planes, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="napari-medattn", manufacturer_model_name=model_name,
        software_versions=napari_medattn.__version__, device_serial_number="none",
        series_description=series_description[:64],
        content_description=f"Labels by {model_name}"[:64], content_label="SEGMENTATION")


#: Patient/study attributes a SEG must carry (Type 2: present, possibly empty) that some
#: sources leave out; they are added empty, never filled with invented values.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID",
          "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName")


def with_type2_attributes(instances: list[Dataset]) -> list[Dataset]:
    """Copies of the source headers with the missing Type 2 patient/study attributes
    present and empty (the headers themselves when none is missing)."""
    missing = [k for k in _TYPE2 if k not in instances[0]]
    if not missing:
        return instances
    out = []
    for header in instances:
        header = copy.copy(header)
        for keyword in missing:
            setattr(header, keyword, "")
        out.append(header)
    return out


def save_dataset(path: str | os.PathLike, dataset: Dataset) -> Path:
    """Write a DICOM dataset as a Part 10 file atomically (whole or not at all)."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
    except OSError as error:
        raise WriteError(f"Could not write {path}: {error.strerror or error}.") from None
    return path


def is_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file holding a Segmentation object."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # not DICOM: someone else's file to judge
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) in SEG_SOP_CLASSES


def read_seg(path: str | os.PathLike, reference: Volume | None = None) -> Volume:
    """Read a DICOM-SEG (binary, fractional or label-map) as a label map.

    Parameters
    ----------
    path : str or PathLike
        The SEG file.
    reference : Volume, optional
        The open scan the SEG was drawn on (read from DICOM). The labels then come on its
        grid and array order, through the SEG's references to its instances. Without it
        the labels lie on the grid of the SEG's own frame positions.

    Returns
    -------
    Volume
        ``modality="SEG"``, ``uint8``/``uint16`` labels (segment numbers; a fractional
        segment counts where its value is at least one half, the larger one where
        segments overlap), ``meta["classes"]`` with ``(name, colour)`` by label (index 0
        background), ``meta["segment_uids"]`` (tracking UIDs), ``meta["seg_header"]``.

    Raises
    ------
    ReadError
        Not a readable SEG, or it references instances that are not in ``reference``.
    GeometryError
        The frames do not form one regular grid (and no reference places them).
    """
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as error:  # corrupt or another SOP class: one sentence
        raise ReadError(f"{path.name} is not a readable DICOM-SEG ({_first(error)}).") from None
    numbers = list(seg.get_segment_numbers())
    fractional = str(seg.get("SegmentationType", "")) == "FRACTIONAL"
    if reference is not None:
        data, affine = _on_reference(seg, path, reference, numbers, fractional)
    else:
        data, affine = _on_own_grid(seg, path, numbers, fractional)
    classes: list[tuple[str, str]] = [("background", "#000000")]
    uids = {}
    for number in range(1, max(numbers, default=0) + 1):
        if number not in numbers:
            classes.append((f"segment {number}", "#808080"))
            continue
        item = seg.get_segment_description(number)
        colour = "#808080"
        lab = item.get("RecommendedDisplayCIELabValue")
        if lab is not None:
            rgb = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in lab)).to_rgb()
            colour = "#" + "".join(f"{int(c):02x}" for c in rgb)
        classes.append((str(item.SegmentLabel), colour))
        if "TrackingUID" in item:
            uids[number] = str(item.TrackingUID)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    meta = {"name": f"{seg.get('SeriesDescription', '') or path.stem} SEG".strip(),
            "source": str(path.resolve()), "format": "dicom-seg", "classes": classes,
            "segment_uids": uids, "seg_header": header, "warnings": [],
            "study_uid": str(seg.StudyInstanceUID)}
    if reference is not None:
        for key in ("source_files", "format", "canonical_axes", "source_affine",
                    "source_shape"):
            if key in reference.meta:
                meta[key] = reference.meta[key]
        meta["seg_source"] = str(path.resolve())
    dtype = np.uint8 if len(classes) <= 255 else np.uint16
    return Volume(data=data.astype(dtype, copy=False), affine=affine, modality="SEG",
                  meta=meta)


def read_seg_onto(path: str | os.PathLike, scans: Mapping[str, Volume]) -> Volume:
    """:func:`read_seg` onto the scan it references when that scan is among ``scans``
    (open scans by SeriesInstanceUID), else by its own frame positions."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # corrupt: one sentence, as read_seg says it
        raise ReadError(f"{Path(path).name} is not a readable DICOM-SEG ({_first(error)}).") \
            from None
    referenced = header.get("ReferencedSeriesSequence")
    series = str(referenced[0].SeriesInstanceUID) if referenced else ""
    return read_seg(path, reference=scans.get(series))


def _combine(pixels: np.ndarray, numbers: list[int], fractional: bool) -> np.ndarray:
    """(..., segments) values -> one label per voxel (the last segment present wins)."""
    label = np.zeros(pixels.shape[:-1], dtype=np.uint16)
    for s, number in enumerate(numbers):
        np.copyto(label, number, where=pixels[..., s] >= (0.5 if fractional else 1))
    return label


def _on_own_grid(seg: hd.seg.Segmentation, path: Path, numbers: list[int],
                 fractional: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=not fractional,
                                skip_overlap_checks=True)
    except (RuntimeError, ValueError) as error:
        raise GeometryError(f"The frames of {path.name} do not form one regular volume "
                            f"({_first(error)}).") from None
    array = np.asarray(volume.array)
    if fractional:
        array = _combine(array, numbers, True)
    return array, np.asarray(volume.affine, dtype=np.float64)


def _on_reference(seg: hd.seg.Segmentation, path: Path, reference: Volume,
                  numbers: list[int], fractional: bool) -> tuple[np.ndarray, np.ndarray]:
    series = reference.meta.get("series_uid")
    referenced_series = {str(item[1]) for item in seg.get_source_image_uids()}
    if series and referenced_series and referenced_series != {series}:
        raise ReadError(f"{path.name} was made on another series than {reference.name}; "
                        f"open the series it references.")
    if series:
        # Made on this very series: its own grid is a block of the scan's grid, so the
        # labels are pasted (3x faster than matching frames to re-read instance headers).
        array, affine = _on_own_grid(seg, path, numbers, fractional)
        return _paste(array, affine, reference, path), reference.affine.copy()
    instances = source_instances(reference)
    uids = [str(h.SOPInstanceUID) for h in instances]
    referenced = {str(item[2]) for item in seg.get_source_image_uids()}
    missing = referenced - set(uids)
    if missing:
        raise ReadError(f"{path.name} references {len(missing)} image(s) that are not in "
                        f"{reference.name}; open the series it was made on.")
    if str(seg.FrameOfReferenceUID) != str(instances[0].get("FrameOfReferenceUID", "")):
        raise ReadError(f"{path.name} lies in another frame of reference than "
                        f"{reference.name}.")
    pixels = seg.get_pixels_by_source_instance(
        uids, segment_numbers=numbers, combine_segments=not fractional,
        skip_overlap_checks=True, rescale_fractional=True)
    planes = _combine(pixels, numbers, True) if fractional else pixels
    shape = reference.spatial_shape
    data = np.zeros(shape, dtype=planes.dtype)
    for plane, header in zip(planes, instances):
        index, transposed = _plane_indexer(reference.affine, shape, header)
        data[index] = plane.T if transposed else plane
    return data, reference.affine.copy()


def _paste(array: np.ndarray, affine: np.ndarray, reference: Volume, path: Path
           ) -> np.ndarray:
    """``array`` (on ``affine``) placed into a zero array on the reference's grid."""
    inverse = np.linalg.inv(reference.affine)
    mapping = inverse[:3, :3] @ affine[:3, :3]  # column j: reference index step of axis j
    origin = inverse[:3, :3] @ affine[:3, 3] + inverse[:3, 3]
    axes = np.argmax(np.abs(mapping), axis=0)
    signs = np.sign(mapping[axes, np.arange(3)]).astype(int)
    expected = np.zeros((3, 3))
    expected[axes, np.arange(3)] = signs
    if sorted(axes) != [0, 1, 2] or np.abs(mapping - expected).max() > GRID_TOLERANCE_VOXELS \
            or np.abs(origin - np.round(origin)).max() > GRID_TOLERANCE_VOXELS:
        raise GeometryError(f"The frames of {path.name} are not on the grid of "
                            f"{reference.name}.")
    origin = np.round(origin).astype(int)
    order = np.argsort(axes)  # the SEG axis that runs along each reference axis
    moved = array.transpose(order)
    block = []
    for axis in range(3):
        count, sign = moved.shape[axis], signs[order[axis]]
        if sign < 0:
            moved = np.flip(moved, axis)
        start = origin[axis] if sign > 0 else origin[axis] - (count - 1)
        if start < 0 or start + count > reference.spatial_shape[axis]:
            raise ReadError(f"{path.name} references images that are not in "
                            f"{reference.name}; open the whole series it was made on.")
        block.append(slice(start, start + count))
    data = np.zeros(reference.spatial_shape, dtype=array.dtype)
    data[tuple(block)] = moved
    return data


def _first(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")
