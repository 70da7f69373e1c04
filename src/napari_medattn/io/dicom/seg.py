"""DICOM Segmentation objects (DICOM-SEG): label maps out and in, through highdicom.

Writing ties every frame to the source image it was drawn on: the label map (any array
order, on the source series' grid) is cut into one plane per source instance, in that
instance's own row/column order (:mod:`~napari_medattn.io.dicom.source`), and highdicom
builds the SEG from those instances, so the patient, study and frame-of-reference
identifiers are the source's (never invented).
Each class becomes a segment with a coded category and type (SNOMED CT where pydicom's
code dictionary names the class, else a private ``99MEDATTN`` code) and its colour, and an
automatic segmentation names its algorithm (model, version, weights hash).

Reading gives a label :class:`~napari_medattn.io.volume.Volume` (``modality="SEG"``,
``meta["classes"]`` as ``(name, "#rrggbb")`` by label): on the grid of an open reference
scan when one is given (through the SEG's references to its instances), else on the grid
the SEG's own frame positions describe.
"""

from __future__ import annotations

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
from napari_medattn.errors import DimensionError, GeometryError, ReadError
from napari_medattn.io.dicom.pixels import first_line
from napari_medattn.io.dicom.source import (
    GRID_TOLERANCE_VOXELS,
    plane_indexer,
    planes_for_instances,
    refuse_source_path,
    save_dataset,
    source_instances,
    with_type2_attributes,
)
from napari_medattn.io.volume import Volume, require_3d

#: SOP classes read by :func:`read_seg` (binary/fractional, and label-map SEG).
SEG_SOP_CLASSES = (SegmentationStorage, "1.2.840.10008.5.1.4.1.1.66.7")
#: Private coding scheme for class names SNOMED CT (as pydicom knows it) does not name.
PRIVATE_SCHEME = "99MEDATTN"
_SYNONYMS = {"csf": "CerebrospinalFluid", "grey matter": "GrayMatter",
             "gm": "GrayMatter", "wm": "WhiteMatter", "tumour": "Tumor"}
_ABNORMAL = re.compile(r"lesion|tumou?r|neoplasm|nodule|metasta|cancer|mass", re.I)
_TISSUE = re.compile(r"matter|fluid|csf|fat|muscle|tissue|bone", re.I)
_DEFAULT_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4")


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


def write_seg(path: str | os.PathLike, labels: Volume, **options) -> Path:
    """Write :func:`seg_dataset` of a label map to a new ``.dcm`` file, atomically.

    ``options`` are those of :func:`seg_dataset`; ``path`` must not be a source image
    (:class:`WriteError`). Returns ``path``.
    """
    refuse_source_path(path, labels)
    return save_dataset(path, seg_dataset(labels, **options))


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
        raise ReadError(f"{path.name} is not a readable DICOM-SEG "
                        f"({first_line(error)}).") from None
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
        raise ReadError(f"{Path(path).name} is not a readable DICOM-SEG "
                        f"({first_line(error)}).") from None
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
                            f"({first_line(error)}).") from None
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
        index, transposed = plane_indexer(reference.affine, shape, header)
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
