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
from napari_medattn.io.dicom.seg import seg_dataset, segment_codes
from napari_medattn.io.dicom.source import (
    refuse_source_path,
    save_dataset,
    source_instances,
    with_type2_attributes,
)
from napari_medattn.io.nifti import volume_like
from napari_medattn.io.volume import Volume, require_3d

MILLILITRE = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
MILLIMETRE = codes.UCUM.Millimeter
#: Devices are the observers of what a model measured (TID 1004).
DEVICE_OBSERVER = hd.sr.CodedConcept("121007", "DCM", "Device")
#: A box's edge lengths, longest first, named as DICOM's linear measurements of a 3D
#: object name them (CID 7470).
BOX_AXES = tuple(hd.sr.CodedConcept(c.value, c.scheme_designator, c.meaning) for c in (
    codes.SCT.MajorAxis, codes.SCT.MinorAxis, codes.SCT.PerpendicularAxis))
SCORE = hd.sr.CodedConcept("246262008", "SCT", "Score")
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")


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
        The SEG (as written by :func:`~napari_medattn.io.dicom.seg.write_seg`); its segment
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

    instances = with_type2_attributes(
        source_instances(image if image is not None else labels))
    numbers = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    rows = [r for r in class_statistics(labels) if r["voxels"] > 0]
    unknown = sorted({r["label"] for r in rows} - set(numbers))
    if unknown:
        raise WriteError(f"Label(s) {unknown} have no segment in the SEG; write the SEG from "
                         f"these labels first.")
    algorithm_id = _algorithm_id(algorithm)
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
    return _report(groups, [seg, *instances], algorithm, series_number, "Measurements")


def _algorithm_id(algorithm: dict | None) -> hd.sr.AlgorithmIdentification | None:
    if not algorithm:
        return None
    return hd.sr.AlgorithmIdentification(
        name=str(algorithm.get("name", "model"))[:64],
        version=str(algorithm.get("version", napari_medattn.__version__))[:64])


def _report(groups: list, evidence: list[Dataset], algorithm: dict | None,
            series_number: int, description: str) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Imaging Measurement Report of ``groups``, observed by the model."""
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
        evidence=evidence, content=report[0], series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="napari-medattn", series_description=description[:64],
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
        referenced_segment(seg, int(segment.SegmentNumber)),
        referenced_volume_surface=surface,
        finding_type=hd.sr.CodedConcept(kind.CodeValue, kind.CodingSchemeDesignator,
                                        kind.CodeMeaning),
        measurements=measurements)


def referenced_segment(seg: Dataset, number: int) -> hd.sr.ReferencedSegment:
    """A reference to segment ``number`` of ``seg`` and the images it was drawn on."""
    frames = seg.get("PerFrameFunctionalGroupsSequence") or []
    if frames and "SegmentIdentificationSequence" in frames[0]:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    # A SEG of one segment names it once for all frames (shared functional groups),
    # which highdicom's from_segmentation does not look at: reference the source series.
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=number, source_series=hd.sr.SourceSeriesForSegmentation(
            str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)))


def write_measurement_report(path: str | os.PathLike, seg: Dataset, labels: Volume,
                             **options) -> Path:
    """Write :func:`measurement_report` to ``path`` atomically; options as there."""
    return save_dataset(path, measurement_report(seg, labels, **options))


def write_seg_with_report(seg_path: str | os.PathLike, sr_path: str | os.PathLike,
                          labels: Volume, *, classes: Sequence | None = None,
                          algorithm: dict | None = None) -> tuple[Path, Path]:
    """Write a label map as a DICOM-SEG and its TID 1500 measurement report beside it.

    The report holds each class's volume (referencing its segment) and every connected
    lesion from :func:`~napari_medattn.detection.lesions.lesions_from_labels` (volume,
    longest axial diameter, centre). Both files appear or neither: a failure writing the
    report removes the SEG.

    Parameters
    ----------
    seg_path, sr_path : str or PathLike
        New ``.dcm`` files.
    labels : Volume
        3D label map on the grid of its DICOM source series.
    classes, algorithm
        As for :func:`~napari_medattn.io.dicom.seg.seg_dataset`.

    Returns
    -------
    (Path, Path)
        The SEG and the report.
    """
    from napari_medattn.detection.lesions import lesions_from_labels

    seg = seg_dataset(labels, classes=classes, algorithm=algorithm)
    named = Volume(labels.data, labels.affine, labels.modality,
                   {**labels.meta, "classes": [("background", "#000000")] + [
                       (str(item.SegmentLabel), "") for item in seg.SegmentSequence]})
    report = measurement_report(seg, named, lesions=lesions_from_labels(named),
                                algorithm=algorithm)
    for path in (seg_path, sr_path):
        refuse_source_path(path, labels)
    seg_path = save_dataset(seg_path, seg)
    try:
        return seg_path, save_dataset(sr_path, report)
    except WriteError:
        seg_path.unlink(missing_ok=True)
        raise


def detections_seg(image: Volume, detections: Sequence, *, algorithm: dict | None = None
                   ) -> hd.seg.Segmentation | None:
    """The instance masks of the detections that carry one, as a DICOM-SEG on the scan:
    segment ``n`` is label ``n`` of :func:`detection_masks`, typed by its class.

    Returns
    -------
    highdicom.seg.Segmentation or None
        None when no detection carries a mask.
    """
    labels = detection_masks(image, detections)
    if labels is None:
        return None
    return seg_dataset(labels, algorithm=algorithm, series_description="Detections")


def detection_masks(image: Volume, detections: Sequence) -> Volume | None:
    """The masks of the detections that carry one as a label map on the scan's grid.

    Label ``n`` is the ``n``-th detection with a mask (``meta["classes"]`` names it by its
    class). Each mask is brought onto the grid through the one resampler (nearest
    neighbour; exact for masks cut from that grid, as
    :func:`~napari_medattn.detection.lesions.lesions_from_labels` makes them); where
    masks overlap, the later detection keeps the voxel. None when no detection has a mask.
    """
    from napari_medattn.inference.resample import resample_to_grid

    masked = [d for d in detections if d.mask is not None]
    if not masked:
        return None
    image = require_3d(image)
    labels = np.zeros(image.spatial_shape, np.uint16)
    for number, detection in enumerate(masked, start=1):
        mask = detection.mask
        placed = resample_to_grid(Volume(np.asarray(mask.data, np.float32), mask.affine,
                                         "SEG", {}), image.affine, image.spatial_shape,
                                  order=0, mode="constant", cval=0.0)
        labels[np.asarray(placed.data) > 0.5] = number
    volume = volume_like(image, labels, modality="SEG", name=f"{image.name} detections")
    volume.meta["classes"] = [("background", "#000000")] + [(d.class_name, "")
                                                           for d in masked]
    return volume


def detection_report(image: Volume, detections: Sequence, *, seg: Dataset | None = None,
                     algorithm: dict | None = None, series_number: int = 302
                     ) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report of detections on a DICOM scan: one measurement group each.

    Every group (finding type: the detection's class, coded as a segment's type) holds
    the box's edge lengths in mm, longest first, as Major Axis, Minor Axis and
    Perpendicular Axis (the box's directions are the scan's axes), and the score
    (unitless). A detection without a mask is placed by its box centre (a 3D point, LPS
    mm) on the scan image nearest to it; one with a mask has its segment in ``seg`` (from
    :func:`detections_seg`) as its region instead, since TID 1411 takes one region per
    group (its box centre is then in the CSV/JSON written beside the report).

    Parameters
    ----------
    image : Volume
        The scan the detections were made on (read from DICOM).
    detections : sequence of Detection
    seg : pydicom Dataset, optional
        The SEG of the masks (segment ``n``: the ``n``-th detection with a mask).
    algorithm : dict, optional
        ``{"name", "version"}`` of the detector.
    series_number : int

    Raises
    ------
    WriteError
        The scan does not come from DICOM, or masks are given without their SEG.
    """
    instances = with_type2_attributes(source_instances(image, "a DICOM SR"))
    if seg is None and any(d.mask is not None for d in detections):
        raise WriteError("Detections with masks need their SEG (detections_seg) to be "
                         "referenced by the report.")
    frame_uid = str(instances[0].FrameOfReferenceUID)
    algorithm_id = _algorithm_id(algorithm)
    groups, segment = [], 0
    for k, detection in enumerate(detections, start=1):
        centre = np.asarray(detection.centre_mm, float).reshape(1, 3)
        sizes = sorted((float(v) for v in detection.size_mm), reverse=True)
        measured = [hd.sr.Measurement(name=name, value=size, unit=MILLIMETRE,
                                      algorithm_id=algorithm_id)
                    for name, size in zip(BOX_AXES, sizes)]
        measured.append(hd.sr.Measurement(name=SCORE, value=float(detection.score),
                                          unit=UNITLESS, algorithm_id=algorithm_id))
        _, kind = segment_codes(detection.class_name)
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(),
                                            identifier=f"{detection.class_name} {k}"[:64])
        region: dict = {}
        if detection.mask is not None:
            segment += 1
            region["referenced_segment"] = referenced_segment(seg, segment)
        else:
            nearest = _nearest_instance(instances, centre[0])
            region["referenced_volume_surface"] = hd.sr.VolumeSurface(
                graphic_type="POINT", graphic_data=centre, frame_of_reference_uid=frame_uid,
                source_images=[hd.sr.SourceImageForSegmentation(
                    str(nearest.SOPClassUID), str(nearest.SOPInstanceUID))])
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=kind, measurements=measured,
            **region))
    evidence = ([seg] if seg is not None else []) + list(instances)
    return _report(groups, evidence, algorithm, series_number, "Detections")


def _nearest_instance(instances: Sequence[Dataset], point: np.ndarray) -> Dataset:
    """The image whose plane lies nearest to ``point`` (LPS mm)."""
    def distance(header: Dataset) -> float:
        cosines = np.asarray([float(v) for v in header.ImageOrientationPatient])
        normal = np.cross(cosines[:3], cosines[3:])
        origin = np.asarray([float(v) for v in header.ImagePositionPatient])
        return abs(float((point - origin) @ normal))

    return min(instances, key=distance)


def write_detection_report(sr_path: str | os.PathLike, seg_path: str | os.PathLike,
                           image: Volume, detections: Sequence, *,
                           algorithm: dict | None = None) -> list[Path]:
    """Write the detections' report to ``sr_path`` and, when some carry masks, their SEG
    to ``seg_path``; all files appear or none.

    Returns the files written (the SEG first when there is one); none for no detection
    (a TID 1500 report holds at least one measurement group). See
    :func:`detections_seg` and :func:`detection_report`.
    """
    if not detections:
        return []
    for path in (sr_path, seg_path):
        refuse_source_path(path, image)
    seg = detections_seg(image, detections, algorithm=algorithm)
    report = detection_report(image, detections, seg=seg, algorithm=algorithm)
    written: list[Path] = []
    try:
        if seg is not None:
            written.append(save_dataset(seg_path, seg))
        written.append(save_dataset(sr_path, report))
    except WriteError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
