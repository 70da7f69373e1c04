"""Parametric Maps for attention, probability and uncertainty maps, through highdicom.

A map on a DICOM scan's grid becomes a Parametric Map (32-bit float frames, one per source
instance, tied to it like a SEG's) whose real-world value mapping says what the numbers
are. Parametric Maps are read by 3D Slicer (dcmqi) and highdicom, and OHIF v3 shows them
as overlays; most PACS viewers do not, so :func:`write_derived_series` also writes the map as
an ordinary derived image series (values x 1000 as whole numbers, rescaled back through
Rescale Slope) that every viewer opens. See ``docs/dicom.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

import napari_medattn
from napari_medattn.errors import DimensionError, WriteError
from napari_medattn.io.dicom.source import (
    planes_for_instances,
    save_dataset,
    source_instances,
    with_type2_attributes,
)
from napari_medattn.io.volume import Volume, require_3d

#: DICOM's concept for maps of where a model looks (attention and explanation maps).
SALIENCY = ("130404", "DCM", "Saliency")
#: What each kind of map means: label, explanation, unit, quantity.
KINDS = {
    "probability": ("PROB", "Class probability from the model", "{probability}",
                    ("122157", "DCM", "Probability")),
    "attention": ("ATTN", "Spatial attention weight (relative, model-specific)", "1",
                  SALIENCY),
    "explanation": ("EXPL", "Explanation map (relevance, method-specific)", "1", SALIENCY),
    "uncertainty": ("UNC", "Predictive uncertainty (normalised entropy)", "1",
                    ("C25372", "NCIt", "Uncertainty")),
}
#: Derived series store value x SCALE as whole numbers.
DERIVED_SCALE = 1000.0


def _map_planes(volume: Volume) -> tuple[list, np.ndarray]:
    volume = require_3d(volume)
    data = np.asarray(volume.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DimensionError(f"{volume.name} holds NaN or infinite values; a parametric map "
                             f"needs finite numbers.")
    instances = with_type2_attributes(source_instances(volume, "a parametric map"))
    return instances, planes_for_instances(Volume(data, volume.affine, volume.modality,
                                                  volume.meta), instances)


def write_parametric_map(path: str | os.PathLike, volume: Volume, kind: str, *,
                         series_number: int = 302, description: str | None = None) -> Path:
    """Write a float map on a DICOM scan's grid as a Parametric Map, atomically.

    Parameters
    ----------
    path : str or PathLike
        New ``.dcm`` file.
    volume : Volume
        3D float map on the grid of its DICOM source series (any array order).
    kind : {"probability", "attention", "explanation", "uncertainty"}
        What the values are; it sets the real-world value mapping (label, unit, quantity).
    series_number : int
    description : str, optional
        Series Description; default the volume's name.

    Returns
    -------
    Path

    Raises
    ------
    DimensionError
        Unknown kind, not 3D, or non-finite values.
    WriteError
        No DICOM source, or the file cannot be written.
    GeometryError
        The map is not on its source series' grid.
    """
    if kind not in KINDS:
        raise DimensionError(f"A parametric map is one of {', '.join(KINDS)}, not {kind!r}.")
    label, explanation, unit, quantity = KINDS[kind]
    instances, planes = _map_planes(volume)
    low, high = float(planes.min()), float(planes.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label, lut_explanation=explanation,
        unit=hd.sr.CodedConcept(unit, "UCUM", unit),
        value_range=(low, high if high > low else low + 1.0), intercept=0.0, slope=1.0,
        quantity_definition=hd.sr.CodedConcept(*quantity))
    pmap = hd.pm.ParametricMap(
        source_images=instances, pixel_array=planes, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="napari-medattn", manufacturer_model_name="napari-medattn",
        software_versions=napari_medattn.__version__, device_serial_number="none",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=(low + high) / 2, window_width=max(high - low, 1e-6),
            # A window narrower than one is valid only with the exact linear function.
            voi_lut_function="LINEAR_EXACT" if high - low < 1 else "LINEAR")],
        content_label=label, content_description=explanation[:64],
        series_description=(description or volume.name)[:64])
    # Laterality is Type 2C in General Series; unknown here, so present and empty.
    pmap.Laterality = ""
    return save_dataset(path, pmap)


def write_derived_series(folder: str | os.PathLike, volume: Volume, kind: str, *,
                         series_number: int = 303, description: str | None = None
                         ) -> list[Path]:
    """Write a map as a derived secondary image series in the source's study, for viewers
    that do not read Parametric Maps.

    One file per source instance, same position, orientation and spacing; stored values
    are ``round(value * 1000)`` with Rescale Slope 0.001, so viewers show the map's values.
    Patient, study and frame of reference come from the source. The files appear together:
    they are written to a hidden folder beside ``folder`` and renamed into place.

    Returns
    -------
    list of Path
        The files, in source-instance order.
    """
    if kind not in KINDS:
        raise DimensionError(f"A derived map is one of {', '.join(KINDS)}, not {kind!r}.")
    instances, planes = _map_planes(volume)
    stored = np.round(planes * DERIVED_SCALE)
    if stored.min() < -32768 or stored.max() > 32767:
        raise DimensionError(f"{volume.name} has values beyond +-32.7; a derived series "
                             f"stores values x 1000 in 16 bits.")
    stored = stored.astype(np.int16)
    folder = Path(folder)
    if folder.exists():
        raise WriteError(f"{folder} exists already; choose a new folder for the series.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    series_uid = hd.UID()
    names = []
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for k, (plane, source) in enumerate(zip(stored, instances)):
            ds = _derived_header(source, series_uid, series_number, k + 1,
                                 description or f"{volume.name} ({kind})", KINDS[kind][0])
            ds.PixelData = np.ascontiguousarray(plane).tobytes()
            names.append(f"IM{k + 1:04d}.dcm")
            ds.save_as(temporary / names[-1], enforce_file_format=True)
        os.replace(temporary, folder)
    except OSError as error:
        raise WriteError(f"Could not write {folder}: {error.strerror or error}.") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return [folder / name for name in names]


_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
           "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
           "PixelSpacing", "SliceThickness", "Rows", "Columns")


def _derived_header(source: pydicom.Dataset, series_uid: str, series_number: int,
                    number: int, description: str, label: str) -> pydicom.Dataset:
    uid = hd.UID()
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in _COPIED:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    # Secondary Capture: a derived map is not an MR or CT acquisition, and the SC IOD
    # does not ask for acquisition attributes the source may not have.
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.Laterality = ds.PatientOrientation = ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, series_number, number
    ds.SeriesDescription = description[:64]
    ds.ImageType = ["DERIVED", "SECONDARY", label]
    ds.DerivationDescription = "Map computed by napari-medattn from the referenced image"
    source_item = pydicom.Dataset()
    source_item.ReferencedSOPClassUID = source.SOPClassUID
    source_item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = [source_item]
    ds.Manufacturer = "napari-medattn"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "0", str(1.0 / DERIVED_SCALE)
    ds.RescaleType = "US"  # unspecified units, not Hounsfield units
    return ds
