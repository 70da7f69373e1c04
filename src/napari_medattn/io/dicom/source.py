"""What every derived DICOM object (SEG, SR, Parametric Map, derived series) shares: the
source instances it references, a map cut into their planes, and the atomic Part 10 save.

A derived object never invents patient, study or frame-of-reference identifiers: it takes
them from the instances the volume was read from (``meta["source_files"]``), and its
frames are those instances' planes, each in the instance's own row/column order.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from napari_medattn.errors import GeometryError, WriteError
from napari_medattn.io.atomic import atomic_path
from napari_medattn.io.volume import Volume

# A plane counts as on the label grid when its indices are this close to whole numbers.
GRID_TOLERANCE_VOXELS = 1e-3


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


def plane_indexer(affine: np.ndarray, shape: tuple[int, ...], header: Dataset
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
        index, transposed = plane_indexer(labels.affine, data.shape, header)
        plane = data[index]
        planes[k] = plane.T if transposed else plane
    return planes


def refuse_source_path(path: str | os.PathLike, volume: Volume) -> None:
    """Raise :class:`WriteError` when ``path`` is one of ``volume``'s source files."""
    if str(Path(path).resolve()) in {str(Path(f).resolve())
                                     for f in volume.meta.get("source_files", ())}:
        raise WriteError(f"{Path(path).name} is one of the source images; a derived DICOM "
                         f"object goes to a new file.")


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

