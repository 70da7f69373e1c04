"""DICOM SR measurement reports (TID 1500) for a DICOM-SEG, through highdicom.

One Imaging Measurement Report per SEG: every segment gets a volumetric measurement group
(TID 1411) that references it, with its volume in mL (from
:func:`napari_medattn.metrics.statistics.class_statistics`, so the exact affine measures
it); every lesion (a :class:`~napari_medattn.detection.boxes.Detection`, e.g. from
:func:`~napari_medattn.detection.lesions.lesions_from_labels`) gets a group placed by its
centre (a 3D point, LPS mm, on the scan's series) whose finding type is its class's
segment type, with its volume and its longest axial diameter in mm. (TID 1411 takes one
region per group, so a lesion cannot both name the class's whole segment and its centre.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import napari_medattn
from napari_medattn.errors import WriteError
from napari_medattn.io.dicom_seg import save_dataset, source_instances
from napari_medattn.io.volume import Volume

MILLILITRE = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
MILLIMETRE = codes.UCUM.Millimeter
#: Devices are the observers of what a model measured (TID 1004).
DEVICE_OBSERVER = hd.sr.CodedConcept("121007", "DCM", "Device")


def measurement_report(
    seg: Dataset,
    labels: Volume,
    *,
    image: Volume | None = None,
    lesions: Sequence | None = None,
    algorithm: dict | None = None,
    series_number: int = 301,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 measurement report on a DICOM-SEG and the scan it segments.

    Parameters
    ----------
    seg : pydicom Dataset
        The SEG (as written by :func:`~napari_medattn.io.dicom_seg.write_seg`); its segment
        numbers are the label values.
    labels : Volume
        The label map the SEG holds, on its scan's grid (volumes are measured on it).
    image : Volume, optional
        The scan, for the source instances; default: re-read from ``labels``'s sources.
    lesions : sequence of Detection, optional
        Lesions with ``measurements`` ``volume_ml``, ``longest_axial_diameter_mm`` and
        ``centroid_mm`` (LPS mm) as :func:`lesions_from_labels` gives them.
    algorithm : dict, optional
        ``{"name", "version"}`` of the model whose output is measured.
    series_number : int
        Series Number of the report.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    WriteError
        The labels hold a value the SEG has no segment for.
    """
    from napari_medattn.metrics.statistics import class_statistics

    instances = source_instances(image if image is not None else labels)
    numbers = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    rows = [r for r in class_statistics(labels) if r["voxels"] > 0]
    unknown = sorted({r["label"] for r in rows} - set(numbers))
    if unknown:
        raise WriteError(f"Label(s) {unknown} have no segment in the SEG; write the SEG from "
                         f"these labels first.")
    algorithm_id = None
    if algorithm:
        algorithm_id = hd.sr.AlgorithmIdentification(
            name=str(algorithm.get("name", "model"))[:64],
            version=str(algorithm.get("version", napari_medattn.__version__))[:64])
    frame_uid = str(seg.FrameOfReferenceUID)
    groups = []
    for row in rows:
        segment = numbers[row["label"]]
        volume = hd.sr.Measurement(name=codes.SCT.Volume, value=float(row["volume_ml"]),
                                   unit=MILLILITRE, algorithm_id=algorithm_id)
        groups.append(_group(seg, segment, f"{segment.SegmentLabel}", [volume],
                             str(segment.get("TrackingUID", "")) or hd.UID()))
    for k, lesion in enumerate(lesions or (), start=1):
        segment = numbers.get(int(lesion.label))
        if segment is None:
            raise WriteError(f"Lesion {k} has class {lesion.label}, which the SEG lacks.")
        centre = np.asarray(lesion.measurements.get("centroid_mm", lesion.centre_mm), float)
        measured = [hd.sr.Measurement(
            name=codes.SCT.Volume, value=float(lesion.measurements["volume_ml"]),
            unit=MILLILITRE, algorithm_id=algorithm_id)]
        diameter = lesion.measurements.get("longest_axial_diameter_mm")
        if diameter is not None:
            measured.append(hd.sr.Measurement(
                name=codes.SCT.Diameter, value=float(diameter), unit=MILLIMETRE,
                algorithm_id=algorithm_id))
        # TID 1411 takes one region per group: a lesion is placed by its centre (a 3D point
        # on the scan's series); its class is the finding type of its class's segment.
        centre_point = hd.sr.VolumeSurface(
            graphic_type="POINT", graphic_data=centre.reshape(1, 3),
            frame_of_reference_uid=frame_uid,
            source_series=hd.sr.SourceSeriesForSegmentation(
                str(instances[0].SeriesInstanceUID)))
        groups.append(_group(seg, segment, f"{lesion.class_name} lesion {k}", measured,
                             hd.UID(), surface=centre_point))
    observer = hd.sr.ObserverContext(
        observer_type=DEVICE_OBSERVER,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=str((algorithm or {}).get("name", "napari-medattn"))[:64],
            manufacturer_name="napari-medattn"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *instances], content=report[0], series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="napari-medattn", series_description="Measurements"[:64],
        is_complete=True)


def _group(seg: Dataset, segment: Dataset, name: str, measurements: list, uid: str,
           surface: hd.sr.VolumeSurface | None = None
           ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    # A segment's own group shares the segment's tracking UID; each lesion gets its own.
    tracking = hd.sr.TrackingIdentifier(uid=uid, identifier=name[:64])
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=None if surface is not None else
        hd.sr.ReferencedSegment.from_segmentation(seg, int(segment.SegmentNumber)),
        referenced_volume_surface=surface,
        finding_type=hd.sr.CodedConcept(kind.CodeValue, kind.CodingSchemeDesignator,
                                        kind.CodeMeaning),
        measurements=measurements)


def write_measurement_report(path: str | os.PathLike, seg: Dataset, labels: Volume,
                             **options) -> Path:
    """Write :func:`measurement_report` to ``path`` atomically; options as there."""
    return save_dataset(path, measurement_report(seg, labels, **options))
