"""DICOM-SEG writing and reading, against SimpleITK's geometry and pydicom's pixels."""

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from napari_medattn.errors import DimensionError, GeometryError, ReadError, WriteError
from napari_medattn.io import Volume, read, volume_like
from napari_medattn.io.dicom.seg import read_seg, segment_codes, write_seg
from napari_medattn.io.volume import affine_from_itk

CLASSES = [("background", "#000000"), ("CSF", "#4363d8"), ("grey matter", "#3cb44b"),
           ("white matter", "#ffe119")]
CENTRES = {1: (5.0, 10.0, 20.0), 3: (-15.0, 0.0, 5.0)}


def _label_at(points):
    """Ground truth by patient position (LPS mm): two balls of 9 mm and a slab."""
    label = np.zeros(len(points), dtype=np.uint8)
    label[(points[:, 2] > 30.0) & (points[:, 0] > 0)] = 2
    for value, centre in CENTRES.items():
        label[np.linalg.norm(points - centre, axis=1) < 9.0] = value
    return label


def _points(affine, shape):
    index = np.indices(shape).reshape(3, -1).T
    return index @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def truth(mr_series):
    """Labels painted through SimpleITK's physical points of the source series, moved to
    the canonical (napari) view the way a layer drawn in napari would be."""
    folder, volume = mr_series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    itk_affine = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    np.testing.assert_allclose(volume.affine, itk_affine, atol=1e-4)
    shape = sitk.GetArrayViewFromImage(image).shape
    labels = _label_at(_points(itk_affine, shape)).reshape(shape)
    canonical = volume.canonical()
    view = Volume(labels, volume.affine, "SEG", dict(volume.meta)).canonical()
    assert canonical.meta["canonical_axes"] != ((0, 1, 2), (False, False, False))
    drawn = volume_like(canonical, np.ascontiguousarray(view.data), name="drawn")
    return canonical, drawn


@pytest.fixture(scope="module")
def written(truth, tmp_path_factory):
    _, drawn = truth
    path = tmp_path_factory.mktemp("seg") / "labels.dcm"
    write_seg(path, drawn, classes=CLASSES,
              algorithm={"name": "dssa-unet-brain-tissue", "version": "1.0",
                         "weights_sha256": "ab" * 32})
    return path


def test_seg_references_source_and_copies_identifiers(written, mr_series):
    folder, volume = mr_series
    seg = pydicom.dcmread(written)
    source = pydicom.dcmread(volume.meta["source_files"][0], stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                    "StudyID", "AccessionNumber", "FrameOfReferenceUID"):
        assert seg.get(keyword) == source.get(keyword), keyword
    referenced = {item.ReferencedSOPInstanceUID
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
               for f in volume.meta["source_files"]}
    assert referenced == sources
    # Every frame names the source image it was cut from, at that image's position.
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
              for f in volume.meta["source_files"]}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        source_position = pydicom.dcmread(by_uid[uid], stop_before_pixels=True
                                          ).ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position],
                                   [float(v) for v in source_position], atol=1e-3)
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["CSF", "grey matter", "white matter"]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "65216001"
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "389081007"
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" for s in segments)
    algorithm = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "dssa-unet-brain-tissue"
    assert algorithm.AlgorithmVersion == "1.0"
    assert "ab" * 32 in algorithm.AlgorithmParameters


def test_seg_passes_dciodvfy(written, dciodvfy):
    errors, _ = dciodvfy(written)
    assert errors == []


def test_seg_reads_back_onto_the_open_scan(written, truth):
    canonical, drawn = truth
    labels = read_seg(written, reference=canonical)
    np.testing.assert_array_equal(labels.data, drawn.data)
    np.testing.assert_array_equal(labels.affine, canonical.affine)
    assert labels.meta["classes"][1][0] == "CSF"
    # Colours survive the CIELab round trip to within one step per channel.
    rgb = [int(labels.meta["classes"][3][1][i:i + 2], 16) for i in (1, 3, 5)]
    assert np.abs(np.subtract(rgb, (0xff, 0xe1, 0x19))).max() <= 1



def test_seg_onto_a_scan_without_series_uid_matches_frames_to_instances(written, truth):
    # Without the scan's SeriesInstanceUID the SEG's frames are matched to the scan's
    # instances one by one (the slower path beside pasting the SEG's own grid).
    canonical, drawn = truth
    meta = {k: v for k, v in canonical.meta.items() if k != "series_uid"}
    bare = Volume(canonical.data, canonical.affine, canonical.modality, meta)
    labels = read_seg(written, reference=bare)
    np.testing.assert_array_equal(labels.data, drawn.data)
    np.testing.assert_array_equal(labels.affine, canonical.affine)

def test_seg_without_its_scan_is_placed_by_its_frames(written):
    labels = read_seg(written)
    # The ground truth at the SEG's own voxel positions (within half a voxel of the
    # surfaces, position rounding may flip a voxel; there are none that close here).
    expected = _label_at(_points(labels.affine, labels.spatial_shape))
    np.testing.assert_array_equal(labels.data.ravel(), expected)
    assert (labels.data == 1).sum() > 50 and (labels.data == 3).sum() > 50


def test_reader_entry_opens_a_seg_with_names(written):
    (labels,) = read(written)
    assert labels.modality == "SEG"
    assert [c[0] for c in labels.meta["classes"]] == [c[0] for c in CLASSES]


def test_liver_seg_from_pydicom_data():
    path = get_testdata_file("liver.dcm")
    labels = read_seg(path)
    header = pydicom.dcmread(path)
    bits = header.pixel_array  # (frames, rows, columns) of 0/1 from pydicom's own decoder
    assert labels.meta["classes"][1][0] == "Liver"
    assert int((labels.data == 1).sum()) == int(bits.sum())
    # Each labelled voxel sits where its frame's position and the pixel spacing put it.
    shared = header.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    for frame, item in enumerate(header.PerFrameFunctionalGroupsSequence):
        origin = np.array([float(v) for v in
                           item.PlanePositionSequence[0].ImagePositionPatient])
        rows, columns = np.nonzero(bits[frame])
        points = origin + np.c_[columns * spacing[1], rows * spacing[0], 0 * rows]
        index = np.round((points - labels.affine[:3, 3])
                         @ np.linalg.inv(labels.affine[:3, :3]).T).astype(int)
        assert (labels.data[tuple(index.T)] == 1).all()


def test_fractional_seg_is_thresholded_at_one_half(mr_series, tmp_path, dciodvfy):
    _, volume = mr_series
    from napari_medattn.io.dicom.source import source_instances
    instances = source_instances(volume)
    probability = np.zeros((len(instances), *volume.spatial_shape[1:]), dtype=np.float32)
    probability[3, 10:20, 5:9] = 0.8
    probability[4, 10:20, 5:9] = 0.3
    category, kind = segment_codes("liver")
    description = hd.seg.SegmentDescription(1, "liver", category, kind, "MANUAL")
    seg = hd.seg.Segmentation(instances, probability[..., None], "FRACTIONAL", [description],
                              hd.UID(), 5, hd.UID(), 1, "test", "test", "0", "0")
    path = tmp_path / "fractional.dcm"
    seg.save_as(path)
    labels = read_seg(path, reference=volume)
    assert (labels.data == 1).sum() == 40
    assert (labels.data[3, 10:20, 5:9] == 1).all()


def test_bad_input_gets_one_sentence(truth, written, tmp_path, mr_series):
    canonical, drawn = truth
    with pytest.raises(DimensionError, match="empty"):
        write_seg(tmp_path / "x.dcm", volume_like(canonical, np.zeros_like(drawn.data)))
    not_dicom = Volume(np.ones((4, 5, 6), np.uint8), np.eye(4), "SEG", {"name": "nifti"})
    with pytest.raises(WriteError, match="does not come from a DICOM series"):
        write_seg(tmp_path / "x.dcm", not_dicom)
    shifted = volume_like(canonical, drawn.data)
    shifted.affine[:3, 3] += 0.5
    with pytest.raises(GeometryError, match="not on the grid"):
        write_seg(tmp_path / "x.dcm", shifted)
    assert not list(tmp_path.iterdir())  # nothing half-written
    # A series whose images name two frames of reference.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    files = []
    for k, source in enumerate(canonical.meta["source_files"]):
        header = pydicom.dcmread(source)
        if k == 0:
            header.FrameOfReferenceUID = pydicom.uid.generate_uid()
        header.save_as(mixed / f"{k}.dcm")
        files.append(str(mixed / f"{k}.dcm"))
    with pytest.raises(WriteError, match="do not share one frame of reference"):
        write_seg(tmp_path / "x.dcm", Volume(drawn.data, canonical.affine, "SEG",
                                             {**canonical.meta, "source_files": files}))
    assert not (tmp_path / "x.dcm").exists()
    # A SEG onto a scan that is not its source: named instances are missing.
    other = Volume(np.zeros((3, 512, 512)), np.eye(4), "CT",
                   {"name": "CT", "format": "dicom",
                    "source_files": [get_testdata_file("CT_small.dcm")]})
    with pytest.raises(ReadError, match="references .* image"):
        read_seg(written, reference=other)
    elsewhere = Volume(canonical.data, canonical.affine, "MR",
                       {**canonical.meta, "series_uid": "1.2.3.4"})
    with pytest.raises(ReadError, match="made on another series"):
        read_seg(written, reference=elsewhere)
    # The series opened in part (its first axial slices): the SEG reaches beyond it.
    part = Volume(np.asarray(canonical.data)[:3], canonical.affine, "MR", dict(canonical.meta))
    with pytest.raises(ReadError, match="references images that are not in"):
        read_seg(written, reference=part)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(written.read_bytes()[:4000])
    with pytest.raises(ReadError, match="not a readable DICOM-SEG"):
        read_seg(broken)


def test_label_map_seg_reads_onto_the_scan_and_by_its_frames(mr_series, tmp_path):
    from napari_medattn.io.dicom.source import source_instances, with_type2_attributes

    _, volume = mr_series
    instances = with_type2_attributes(source_instances(volume))
    labels = np.zeros(volume.spatial_shape, np.uint8)
    labels[5:9, 10:30, 3:20] = 1
    labels[20:25, 12:20, 6:12] = 2
    descriptions = [hd.seg.SegmentDescription(number, name, *segment_codes(name), "MANUAL")
                    for number, name in ((1, "liver"), (2, "spleen"))]
    seg = hd.seg.Segmentation(instances, labels, "LABELMAP", descriptions, hd.UID(), 9,
                              hd.UID(), 1, "test", "test", "0", "0")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    seg.save_as(tmp_path / "labelmap.dcm")
    on_scan = read_seg(tmp_path / "labelmap.dcm", reference=volume)
    np.testing.assert_array_equal(on_scan.data, labels)
    assert [c[0] for c in on_scan.meta["classes"]] == ["background", "liver", "spleen"]
    alone = read_seg(tmp_path / "labelmap.dcm")
    for value in (1, 2):
        index = np.argwhere(alone.data == value)
        points = index @ alone.affine[:3, :3].T + alone.affine[:3, 3]
        back = np.round((points - volume.affine[:3, 3])
                        @ np.linalg.inv(volume.affine[:3, :3]).T).astype(int)
        assert len(index) == int((labels == value).sum())
        assert (labels[tuple(back.T)] == value).all()
