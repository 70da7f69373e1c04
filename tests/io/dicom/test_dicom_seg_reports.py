"""SR measurement reports (TID 1500) and parametric maps on a SEG's scan: closed-form
volumes and diameters, values read back by highdicom and by our reader, and dciodvfy;
detection reports with masks (as a SEG) and without."""

import dataclasses

import highdicom as hd
import numpy as np
import pydicom
import pytest

from napari_medattn.detection.lesions import lesions_from_labels
from napari_medattn.errors import DimensionError, WriteError
from napari_medattn.io import Volume, read, volume_like
from napari_medattn.io.dicom.pmap import write_derived_series, write_parametric_map
from napari_medattn.io.dicom.seg import read_seg, write_seg
from napari_medattn.io.dicom.sr import write_detection_report, write_measurement_report

CLASSES = [("background", "#000000"), ("liver", "#aa3311"), ("lesion", "#ffe119")]


@pytest.fixture(scope="module")
def seg_and_labels(mr_series, tmp_path_factory):
    """Boxes of known size on the canonical view: class 1 one box, class 2 two boxes."""
    _, volume = mr_series
    canonical = volume.canonical()
    labels = np.zeros(canonical.spatial_shape, np.uint8)
    labels[2:8, 5:15, 6:10] = 1       # 6 x 10 x 4 voxels
    labels[10:12, 20:23, 20:25] = 2   # 2 x 3 x 5
    labels[14:15, 30:34, 10:13] = 2   # 1 x 4 x 3
    drawn = volume_like(canonical, labels, name="drawn")
    drawn.meta["classes"] = CLASSES
    path = tmp_path_factory.mktemp("sr") / "seg.dcm"
    write_seg(path, drawn)
    return pydicom.dcmread(path), drawn, canonical


def test_measurement_report_volumes_diameters_and_references(seg_and_labels, tmp_path,
                                                             dciodvfy):
    seg, drawn, canonical = seg_and_labels
    voxel_ml = abs(np.linalg.det(canonical.affine[:3, :3])) / 1000.0
    lesions = lesions_from_labels(drawn)
    path = write_measurement_report(tmp_path / "sr.dcm", seg, drawn,
                                    lesions=[lesion for lesion in lesions if lesion.label == 2],
                                    algorithm={"name": "test-model", "version": "2"})
    errors, _ = dciodvfy(path)
    assert errors == []
    report = hd.sr.srread(path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 4  # two classes, two lesions
    by_name = {str(g.tracking_identifier): g for g in groups}
    liver = by_name["liver"]
    (volume,) = liver.get_measurements()
    assert volume.unit.value == "mL"
    assert volume.value == pytest.approx(6 * 10 * 4 * voxel_ml)
    assert liver.referenced_segment.referenced_segment_numbers == [1]
    assert liver.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    segment_uid = seg.SegmentSequence[0].TrackingUID
    assert liver.tracking_uid == segment_uid
    assert by_name["lesion"].get_measurements()[0].value == pytest.approx(
        (2 * 3 * 5 + 4 * 3) * voxel_ml)
    spacing = canonical.spacing  # mm per canonical axis (z, y, x)
    first = by_name["lesion lesion 1"]
    values = {m.name.meaning: m.value for m in first.get_measurements()}
    assert values["Volume"] == pytest.approx(2 * 3 * 5 * voxel_ml)
    # Longest axial diameter of a 3 x 5 voxel rectangle: its diagonal, corner to corner.
    assert values["Diameter"] == pytest.approx(np.hypot(3 * spacing[1], 5 * spacing[2]))
    centre_index = np.array([10.5, 21.0, 22.0])
    centre = canonical.affine[:3, :3] @ centre_index + canonical.affine[:3, 3]
    np.testing.assert_allclose(np.asarray(first.roi.graphic_data).ravel(), centre, atol=1e-3)
    assert first.finding_type.value == seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[
        0].CodeValue


def test_report_refuses_labels_the_seg_lacks(seg_and_labels, tmp_path):
    seg, drawn, canonical = seg_and_labels
    more = volume_like(canonical, np.where(drawn.data == 2, 3, drawn.data).astype(np.uint8))
    with pytest.raises(WriteError, match="no segment"):
        write_measurement_report(tmp_path / "sr.dcm", seg, more)
    assert not (tmp_path / "sr.dcm").exists()


def test_parametric_map_and_derived_series(seg_and_labels, tmp_path, dciodvfy):
    _, _, canonical = seg_and_labels
    zz, yy, xx = np.indices(canonical.spatial_shape)
    probability = (xx / xx.max() * 0.5 + yy / yy.max() * 0.25 + zz / zz.max() * 0.25
                   ).astype(np.float32)
    volume = volume_like(canonical, probability, modality="OT", name="probability")
    path = write_parametric_map(tmp_path / "pm.dcm", volume, "probability")
    errors, _ = dciodvfy(path)
    assert errors == []
    pmap = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    mapping = pmap.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "PROB"
    placed = pmap.get_volume()  # by its own frame positions
    index = np.round((placed.affine[:3, 3] - canonical.affine[:3, 3])
                     @ np.linalg.inv(canonical.affine[:3, :3]).T).astype(int)
    assert index.min() >= 0
    # Every voxel of the map, placed through the map's own affine, holds the value at that
    # point of the canonical grid.
    points = np.indices(placed.array.shape).reshape(3, -1).T @ placed.affine[:3, :3].T \
        + placed.affine[:3, 3]
    canonical_index = np.round((points - canonical.affine[:3, 3])
                               @ np.linalg.inv(canonical.affine[:3, :3]).T).astype(int)
    np.testing.assert_allclose(placed.array.ravel(), probability[tuple(canonical_index.T)],
                               atol=1e-6)
    files = write_derived_series(tmp_path / "derived", volume, "probability")
    errors, _ = dciodvfy(files[0])
    assert errors == []
    (derived,) = read(tmp_path / "derived")
    np.testing.assert_allclose(derived.canonical().data, probability, atol=5e-4 + 1e-6)
    np.testing.assert_allclose(derived.canonical().affine, canonical.affine, atol=1e-4)
    source = pydicom.dcmread(canonical.meta["source_files"][0], stop_before_pixels=True)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert (header.PatientID, header.StudyInstanceUID) == (source.PatientID,
                                                           source.StudyInstanceUID)
    with pytest.raises(WriteError, match="exists already"):
        write_derived_series(tmp_path / "derived", volume, "probability")


def test_maps_refuse_bad_values(seg_and_labels, tmp_path):
    _, _, canonical = seg_and_labels
    data = np.zeros(canonical.spatial_shape, np.float32)
    data[0, 0, 0] = np.nan
    with pytest.raises(DimensionError, match="NaN"):
        write_parametric_map(tmp_path / "pm.dcm", volume_like(canonical, data, modality="OT"),
                             "attention")
    with pytest.raises(DimensionError, match="one of"):
        write_parametric_map(tmp_path / "pm.dcm", volume_like(canonical, data * 0,
                                                              modality="OT"), "colour")
    assert list(tmp_path.iterdir()) == []


def test_detection_report_with_and_without_masks(seg_and_labels, tmp_path, dciodvfy):
    _, drawn, canonical = seg_and_labels
    pieces = lesions_from_labels(drawn, with_masks=True)  # liver box, two lesion boxes
    detections = [dataclasses.replace(pieces[0], score=0.9),
                  dataclasses.replace(pieces[1], mask=None, score=0.6),
                  dataclasses.replace(pieces[2], score=0.3)]
    sr_path, seg_path = tmp_path / "sr.dcm", tmp_path / "seg.dcm"
    written = write_detection_report(sr_path, seg_path, canonical, detections,
                                     algorithm={"name": "detector", "version": "1"})
    assert written == [seg_path, sr_path]
    for path in written:
        assert dciodvfy(path)[0] == []
    # The masked detections are segments 1 and 2, voxel for voxel the pieces they came from.
    masks = read_seg(seg_path, reference=canonical)
    expected = np.zeros(canonical.spatial_shape, np.uint8)
    expected[drawn.data == 1] = 1
    expected[14:15, 30:34, 10:13] = 2
    np.testing.assert_array_equal(masks.data, expected)
    groups = hd.sr.srread(sr_path).content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers if g.referenced_segment else None
            for g in groups] == [[1], None, [2]]
    seg_uid = pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID
    assert groups[0].referenced_segment.referenced_sop_instance_uid == seg_uid
    spacing = np.abs(canonical.spacing)
    values = {m.name.meaning: m.value for m in groups[1].get_measurements()}
    # The unmasked 2 x 3 x 5 voxel lesion: its box edges in mm, longest first, and score.
    assert [values["Major Axis"], values["Minor Axis"], values["Perpendicular Axis"]] == \
        pytest.approx(sorted(np.array([2, 3, 5]) * spacing, reverse=True))
    assert values["Score"] == pytest.approx(0.6)
    np.testing.assert_allclose(np.asarray(groups[1].roi.graphic_data).ravel(),
                               pieces[1].centre_mm, atol=1e-4)
    assert write_detection_report(tmp_path / "a.dcm", tmp_path / "b.dcm", canonical, []) == []
    with pytest.raises(WriteError, match="does not come from a DICOM series"):
        write_detection_report(tmp_path / "a.dcm", tmp_path / "b.dcm",
                               Volume(drawn.data, canonical.affine, "MR", {"name": "nifti"}),
                               detections)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "sr.dcm"]
