"""Writing a 3D volume as a single-frame DICOM series with its exact geometry.

Each array slice ``data[s]`` becomes one file whose Image Position (Patient) is
``affine @ [s, 0, 0, 1]`` and whose orientation and pixel spacing come from the in-plane
affine columns, so :func:`napari_medattn.io.read` gives back the same voxels and the same
affine, a sheared one (gantry tilt) included. Used for sample data, tests and benchmarks.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from napari_medattn.errors import DimensionError, GeometryError, WriteError
from napari_medattn.io.volume import Volume

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage,
              "PT": PositronEmissionTomographyImageStorage}


def write_dicom_series(
    folder: str | os.PathLike,
    volume: Volume,
    *,
    series_description: str = "",
    series_number: int = 1,
    rescale_intercept: float = 0.0,
    study_uid: str | None = None,
    patient: dict | None = None,
    extra: dict | None = None,
    file_names: list[str] | None = None,
) -> list[Path]:
    """Write a 3D volume as one DICOM file per slice along array axis 0.

    Parameters
    ----------
    folder : str or PathLike
        Existing or new folder.
    volume : Volume
        3D, whole-number intensities in physical units (HU for CT). Array axes 1 and 2
        must be orthogonal (DICOM rows and columns); axis 0 may step obliquely.
    series_description, series_number
        Series naming tags.
    rescale_intercept : float
        Stored value = value - intercept (e.g. -1024 for CT so stored values are >= 0).
    study_uid : str, optional
        Put several series into one study.
    patient : dict, optional
        Extra patient/acquisition tags by keyword (e.g. ``PatientWeight``).
    extra : dict, optional
        Further tags by keyword, set on every file (e.g. PET radiopharmaceutical tags).
    file_names : list of str, optional
        One name per slice; default ``IM0001.dcm``...

    Returns
    -------
    list of Path
        The written files, in slice order.

    Raises
    ------
    DimensionError
        The volume is not 3D or holds fractional values.
    GeometryError
        Rows and columns are not orthogonal.
    """
    data = np.asarray(volume.data)
    if data.ndim != 3:
        raise DimensionError(f"A DICOM series needs a 3D volume, got {data.ndim} dimensions.")
    stored = data - rescale_intercept
    if not np.array_equal(stored, np.round(stored)):
        raise DimensionError("Only whole-number intensities can be written as a DICOM series.")
    signed = stored.min() < 0
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise DimensionError("Stored values do not fit in 16 bits; choose another intercept.")
    stored = stored.astype(dtype)
    col_step, row_step = volume.affine[:3, 1], volume.affine[:3, 2]
    row_spacing, col_spacing = np.linalg.norm(col_step), np.linalg.norm(row_step)
    row_cosines, col_cosines = row_step / col_spacing, col_step / row_spacing
    if abs(row_cosines @ col_cosines) > 1e-6:
        raise GeometryError("DICOM rows and columns must be orthogonal; this affine shears "
                            "them.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modality = volume.modality
    sop_class = _SOP_CLASS.get(modality, SecondaryCaptureImageStorage)
    series_uid, study_uid = generate_uid(), study_uid or generate_uid()
    frame_uid = generate_uid()
    now = datetime.datetime.now()
    step = np.linalg.norm(volume.affine[:3, 0])
    paths = []
    for s in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = s + 1
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.PatientName, ds.PatientID = "Anonymous", "0"
        ds.ImagePositionPatient = [_ds(v) for v in volume.affine[:3, :3] @ [s, 0, 0]
                                   + volume.affine[:3, 3]]
        ds.ImageOrientationPatient = [_ds(v) for v in np.r_[row_cosines, col_cosines]]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = _ds(step)
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = int(signed)
        ds.RescaleIntercept, ds.RescaleSlope = _ds(rescale_intercept), "1"
        if modality == "CT":
            ds.RescaleType = "HU"
        for keyword, value in {**(patient or {}), **(extra or {})}.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(stored[s]).tobytes()
        name = file_names[s] if file_names else f"IM{s + 1:04d}.dcm"
        path = folder / name
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as error:
            raise WriteError(f"Could not write {path}: {error.strerror or error}.") from None
        paths.append(path)
    return paths


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters with as many digits as fit."""
    for digits in range(15, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise WriteError(f"{value} cannot be written as a DICOM decimal string.")
