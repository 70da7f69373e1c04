"""DICOM series, multi-frame, compressed, DICOMDIR and bad input, against references."""

import os
import random
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from napari_medattn.errors import GeometryError, ReadError
from napari_medattn.io import Volume, read, read_dicom, read_volume
from napari_medattn.io.dicom.write import write_dicom_series
from napari_medattn.io.volume import RAS_TO_LPS, affine_from_itk

ANATOMICAL = os.path.join(data_path, "anatomical.nii")


@pytest.fixture(scope="module")
def t1():
    """The nibabel test T1 (33x41x25, 2 mm) as a Volume in LPS."""
    return read_volume(ANATOMICAL, modality="MR")


def _shuffled_names(n, seed):
    names = [f"{k:05d}.dcm" for k in random.Random(seed).sample(range(10000), n)]
    return names


def _axial_ct(shape=(12, 16, 20), tilt_deg=0.0, spacing=(2.5, 0.7, 0.8)):
    """A CT-like volume with HU values; axis 0 steps along +S, optionally tilted in y."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 2000, size=shape).astype(np.int16)
    affine = np.eye(4)
    affine[:3, 0] = [0.0, spacing[0] * np.tan(np.deg2rad(tilt_deg)), spacing[0]]
    affine[:3, 1] = [0.0, spacing[1], 0.0]
    affine[:3, 2] = [spacing[2], 0.0, 0.0]
    affine[:3, 3] = [-80.0, -60.0, -100.0]
    return Volume(data, affine, "CT", {"name": "ct"})


def test_series_from_real_volume_two_series_shuffled(tmp_path, t1):
    # Series 1: the file's own array order (sagittal slices); series 2: the canonical
    # (axial, S-P-L) view. Both in one folder with shuffled file names.
    canonical = t1.canonical()
    canonical_volume = Volume(np.ascontiguousarray(canonical.data), canonical.affine, "MR", {})
    write_dicom_series(tmp_path, t1, series_description="T1 sag", series_number=2,
                       file_names=_shuffled_names(33, 1))
    write_dicom_series(tmp_path, canonical_volume, series_description="T1 ax",
                       series_number=3, file_names=_shuffled_names(25, 2))
    volumes = read(tmp_path)
    assert [v.name for v in volumes] == ["T1 sag MR #2", "T1 ax MR #3"]
    sag, ax = volumes
    np.testing.assert_array_equal(sag.data, t1.data)
    np.testing.assert_array_equal(ax.data, canonical.data)
    # Same patient coordinates as the NIfTI (its RAS affine converted to LPS).
    np.testing.assert_allclose(sag.affine, RAS_TO_LPS @ nib.load(ANATOMICAL).affine, atol=1e-9)
    np.testing.assert_allclose(ax.affine, canonical.affine, atol=1e-9)
    assert ax.orientation == "SPL" and sag.orientation == "LAS"
    assert len(sag.meta["source_files"]) == 33 and sag.meta["skipped"] == []


def test_series_matches_simpleitk(tmp_path, t1):
    write_dicom_series(tmp_path, t1.canonical(), file_names=_shuffled_names(25, 3))
    ours = read_volume(tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    np.testing.assert_array_equal(ours.data, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(
        ours.affine,
        affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection()),
        atol=1e-6)


def test_ct_rescale_gives_hu(tmp_path):
    ct = _axial_ct()
    write_dicom_series(tmp_path, ct, rescale_intercept=-1024)
    assert pydicom.dcmread(next(tmp_path.iterdir())).PixelRepresentation == 0
    volume = read_volume(tmp_path)
    assert volume.data.dtype == np.int16 and volume.meta["units"] == "HU"
    np.testing.assert_array_equal(volume.data, ct.data)
    np.testing.assert_allclose(volume.affine, ct.affine, atol=1e-9)


def test_gantry_tilt_read_exactly_as_sheared_affine(tmp_path):
    ct = _axial_ct(tilt_deg=15.0)
    write_dicom_series(tmp_path, ct, file_names=_shuffled_names(12, 4))
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.data, ct.data)
    np.testing.assert_allclose(volume.affine, ct.affine, atol=1e-9)
    assert any("sheared" in w and "15.00 degrees" in w for w in volume.meta["warnings"])
    # The sheared affine places every voxel where the files say its slice is.
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        s = ds.InstanceNumber - 1
        np.testing.assert_allclose(volume.affine @ [s, 0, 0, 1],
                                   np.r_[[float(v) for v in ds.ImagePositionPatient], 1],
                                   atol=1e-9)


def test_missing_slice_refused(tmp_path):
    paths = write_dicom_series(tmp_path, _axial_ct())
    os.remove(paths[5])
    with pytest.raises(GeometryError, match=r"varies from 2\.5 to 5 mm at slice 5: missing"):
        read(tmp_path)


def test_mixed_matrix_sizes_refused(tmp_path):
    paths = write_dicom_series(tmp_path / "a", _axial_ct())
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    small = _axial_ct(shape=(2, 8, 8))
    small.affine[2, 3] += 100.0
    write_dicom_series(tmp_path / "b", small, extra={"SeriesInstanceUID": uid})
    with pytest.raises(ReadError, match="mixes matrix sizes .16x20 and 8x8"):
        read(tmp_path)


def test_mixed_orientations_refused(tmp_path):
    paths = write_dicom_series(tmp_path, _axial_ct(shape=(3, 8, 8)))
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    ds.save_as(paths[1])
    with pytest.raises(ReadError, match="mixes orientations"):
        read(tmp_path)


def test_repeated_positions_become_time_frames(tmp_path):
    ct = _axial_ct(shape=(4, 6, 5))
    later = Volume(ct.data + 7, ct.affine, "CT", {})
    paths = write_dicom_series(tmp_path / "t1", ct, extra={"TemporalPositionIdentifier": 1})
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    write_dicom_series(tmp_path / "t2", later,
                       extra={"TemporalPositionIdentifier": 2, "SeriesInstanceUID": uid})
    volume = read_volume(tmp_path)
    assert volume.data.shape == (2, 4, 6, 5) and volume.meta["frame_axis"] == "time"
    np.testing.assert_array_equal(volume.data[0], ct.data)
    np.testing.assert_array_equal(volume.data[1], later.data)


def test_several_series_one_broken_still_reads_the_others(tmp_path):
    good = write_dicom_series(tmp_path / "good", _axial_ct(), series_number=1)
    bad = write_dicom_series(tmp_path / "bad", _axial_ct(), series_number=2,
                             series_description="Broken")
    os.remove(bad[3])
    volumes = read(tmp_path)
    assert len(volumes) == 1 and len(volumes[0].meta["source_files"]) == len(good)
    assert any("Not loaded" in w and "Broken CT #2" in w and "missing slices" in w
               for w in volumes[0].meta["warnings"])


def test_pet_suv_body_weight(tmp_path):
    activity = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) * 100
    pet = Volume(activity, _axial_ct(shape=(3, 4, 5), spacing=(3.0, 2.0, 2.0)).affine, "PT", {})
    dose, half_life, weight = 3.7e8, 6586.2, 72.5
    info = pydicom.Dataset()
    info.RadionuclideTotalDose, info.RadionuclideHalfLife = dose, half_life
    info.RadiopharmaceuticalStartTime = "093000"
    tags = {"Units": "BQML", "DecayCorrection": "START", "PatientWeight": weight,
            "SeriesTime": "103000.5", "RadiopharmaceuticalInformationSequence": [info]}
    write_dicom_series(tmp_path / "suv", pet, extra=tags)
    volume = read_volume(tmp_path / "suv")
    assert volume.meta["units"] == "SUVbw"
    decayed = dose * 2 ** (-3600.5 / half_life)
    np.testing.assert_allclose(volume.data, activity * weight * 1000 / decayed, rtol=1e-6)

    write_dicom_series(tmp_path / "bq", pet, extra={**tags, "PatientWeight": None})
    kept = read_volume(tmp_path / "bq")
    assert kept.meta["units"] == "BQML"
    np.testing.assert_array_equal(kept.data, activity)
    assert any("PatientWeight is missing" in w for w in kept.meta["warnings"])


@pytest.mark.parametrize("compressed, reference", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),
])
def test_compressed_equals_uncompressed(compressed, reference):
    ours, ref = read_volume(get_testdata_file(compressed)), read_volume(get_testdata_file(reference))
    np.testing.assert_array_equal(ours.data, ref.data)
    np.testing.assert_array_equal(ours.affine, ref.affine)
    # And both equal pydicom's own decoding of the uncompressed file with its rescale.
    ds = pydicom.dcmread(get_testdata_file(reference))
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_allclose(ref.data.reshape(expected.shape), expected, rtol=1e-6)  # float32


def test_jpeg_lossless_decoded():
    # JPEG Lossless (process 14) of an 8-bit ultrasound frame, against pydicom directly.
    path = get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data[0], pydicom.dcmread(path).pixel_array)


def test_single_ct_file_geometry():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data[0], ds.pixel_array.astype(np.int32)
                                  * int(ds.RescaleSlope) + int(ds.RescaleIntercept))
    row, col = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
    np.testing.assert_allclose(volume.affine[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(volume.affine[:3, 2], row * float(ds.PixelSpacing[1]))
    np.testing.assert_allclose(volume.affine[:3, 1], col * float(ds.PixelSpacing[0]))
    np.testing.assert_allclose(volume.affine[:3, 0], np.cross(row, col) * float(ds.SliceThickness))


def test_enhanced_ct_multiframe_functional_groups():
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    volume = read_volume(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    transform = shared.PixelValueTransformationSequence[0]
    positions = [np.array([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient])
                 for f in ds.PerFrameFunctionalGroupsSequence]
    orientation = np.array([float(v) for v in
                            shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort([p @ normal for p in positions])
    expected = ds.pixel_array[order].astype(np.int32) * float(transform.RescaleSlope) \
        + float(transform.RescaleIntercept)
    np.testing.assert_array_equal(volume.data, expected)
    np.testing.assert_allclose(volume.affine[:3, 3], positions[order[0]])
    np.testing.assert_allclose(volume.affine[:3, 0], positions[order[1]] - positions[order[0]])
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    np.testing.assert_allclose(volume.spacing[1:], spacing)
    assert volume.meta["units"] == "HU"


def test_rtdose_grid_frame_offsets():
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    volume = read_volume(path)
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert volume.data.shape == (len(offsets), ds.Rows, ds.Columns)
    np.testing.assert_allclose(volume.affine[:3, 0], [0, 0, offsets[1] - offsets[0]])
    np.testing.assert_allclose(volume.data, ds.pixel_array * float(ds.DoseGridScaling),
                               rtol=1e-6)


def test_multiframe_without_geometry_says_so():
    volume = read_volume(get_testdata_file("emri_small.dcm"))
    assert volume.data.shape == (10, 64, 64)
    assert any("assumed axis-aligned grid" in w for w in volume.meta["warnings"])


def test_dicomdir_reads_referenced_series():
    dicomdir = get_testdata_file("DICOMDIR")
    volumes = read(dicomdir)
    assert {v.modality for v in volumes} == {"CT", "MR", "CR"}
    # Every slice of a volume is the rescaled pixel data of the referenced file of its
    # series at that patient position.
    references = []
    for instance in pydicom.fileset.FileSet(pydicom.dcmread(dicomdir)):
        ds = instance.load()
        if "ImagePositionPatient" in ds:
            references.append((str(ds.SeriesInstanceUID),
                               np.array([float(v) for v in ds.ImagePositionPatient]),
                               ds.pixel_array * float(ds.get("RescaleSlope", 1))
                               + float(ds.get("RescaleIntercept", 0))))
    checked = 0
    for volume in volumes:
        if volume.modality == "CR":  # projection images: no patient position
            continue
        for s in range(volume.spatial_shape[0]):
            position = volume.affine[:3, :3] @ [s, 0, 0] + volume.affine[:3, 3]
            match = [pixels for uid, where, pixels in references
                     if uid == volume.meta["series_uid"]
                     and np.linalg.norm(where - position) < 1e-3]
            assert len(match) == 1
            np.testing.assert_allclose(volume.data[s], match[0], rtol=1e-6)
            checked += 1
    assert checked >= 8
    # The series that are not one regular volume (localisers in three planes, a subset
    # of a brain CT) are named in a warning instead of being dropped silently.
    warnings = volumes[0].meta["warnings"]
    assert any("Not loaded: Series Scout CT #4 mixes orientations" in w for w in warnings)
    assert any("Routine Brain CT #2" in w and "missing slices" in w for w in warnings)
    listed = sum(len(v.meta["source_files"]) for v in volumes)
    assert listed + sum(1 for w in warnings if w.startswith("Not loaded")) <= 31


@pytest.mark.parametrize("entry", ["TINY_ALPHA", "TINY_ALPHA/DICOMDIR"])
def test_pydicom_set_without_pixel_data_refused(entry):
    # pydicom's TINY_ALPHA file set holds 50 CT headers whose pixel data were stripped.
    folder = os.path.dirname(get_testdata_file("DICOMDIR"))
    with pytest.raises(ReadError, match="holds no images, only: 50 CT object.s. without pixel"):
        read(os.path.join(folder, entry))


def test_non_image_objects_only_refused(tmp_path):
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "sr.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rs.dcm")
    with pytest.raises(ReadError, match="no images, only: .*RTSTRUCT.*SR"):
        read(tmp_path)


def test_non_image_objects_skipped_with_note(tmp_path):
    write_dicom_series(tmp_path, _axial_ct(shape=(3, 4, 4)))
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rs.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    volume = read_volume(tmp_path)
    assert any("RTSTRUCT" in s for s in volume.meta["skipped"])
    assert any("non-DICOM" in s for s in volume.meta["skipped"])
    assert any(w.startswith("Skipped:") for w in volume.meta["warnings"])


def test_dicom_without_pixel_data_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "ct.dcm")
    with pytest.raises(ReadError, match="no images, only: 1 CT object.* without pixel data"):
        read(tmp_path / "ct.dcm")


def test_truncated_dicom_refused():
    with pytest.raises(ReadError, match="MR_truncated.dcm is truncated"):
        read(get_testdata_file("MR_truncated.dcm"))


def test_folder_without_dicom_refused(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ReadError, match="holds no NIfTI or DICOM files.$"):
        read(tmp_path)
    with pytest.raises(ReadError, match="holds no DICOM files.$"):
        read_dicom(tmp_path)
    shutil.copy(ANATOMICAL, tmp_path / "t1.nii")
    # The DICOM reader points to the NIfTI file; the one reader entry opens it.
    with pytest.raises(ReadError, match="it has NIfTI files: open those files themselves"):
        read_dicom(tmp_path)
    assert [v.name for v in read(tmp_path)] == ["t1"]


def test_several_series_refused_by_read_volume(tmp_path):
    write_dicom_series(tmp_path / "a", _axial_ct(shape=(3, 4, 4)), series_number=1)
    write_dicom_series(tmp_path / "b", _axial_ct(shape=(3, 4, 4)), series_number=2)
    with pytest.raises(ReadError, match="holds 2 series .CT #1 .* CT #2"):
        read_volume(tmp_path)


def test_slices_stepping_against_normal_are_reordered_consistently(tmp_path):
    # Rows along S, columns along P: the normal points to -x while the slices step +x.
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    source = Volume(data, np.diag([3.0, 2.0, 2.0, 1.0]), "MR", {})
    write_dicom_series(tmp_path, source)
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.data, data[::-1])
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        point = source.affine @ np.r_[index, 1]
        ours = np.round(np.linalg.solve(volume.affine, point)[:3]).astype(int)
        assert volume.data[tuple(ours)] == data[index]


def test_labels_on_dicom_series_written_to_nifti_with_its_geometry(tmp_path):
    import nibabel as nib

    from napari_medattn.io import volume_like, write_nifti

    ct = _axial_ct(tilt_deg=10.0)
    write_dicom_series(tmp_path / "ct", ct)
    scan = read_volume(tmp_path / "ct")
    view = scan.canonical()
    labels = (view.data > 500).astype(np.uint8)
    written = write_nifti(tmp_path / "labels.nii.gz", volume_like(view, labels))
    header = nib.load(written).header
    assert header["sform_code"] == 1 and header["qform_code"] == 0  # sheared: sform only
    again = read_volume(written)
    # NIfTI stores the sform in float32: equal to that precision.
    np.testing.assert_allclose(again.affine, scan.affine, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(again.data, scan.data > 500)
    # A name without a NIfTI suffix gets one: a source slice file is never replaced.
    first_slice = scan.meta["source_files"][0]
    before = open(first_slice, "rb").read()
    assert write_nifti(first_slice, volume_like(view, labels)).name.endswith(".dcm.nii.gz")
    assert open(first_slice, "rb").read() == before


def test_series_writer_refuses_what_dicom_cannot_hold(tmp_path):
    from napari_medattn.errors import DimensionError

    ct = _axial_ct(shape=(2, 3, 3))
    with pytest.raises(DimensionError, match="whole-number"):
        write_dicom_series(tmp_path, Volume(ct.data + 0.5, ct.affine, "CT", {}))
    skewed = ct.affine.copy()
    skewed[:3, 1] = [0.3, 0.7, 0.0]
    with pytest.raises(GeometryError, match="orthogonal"):
        write_dicom_series(tmp_path, Volume(ct.data, skewed, "CT", {}))


@pytest.mark.parametrize("name, blob", [("notes.txt", b"hello"),
                                        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(100))])
def test_unsupported_file_refused(tmp_path, name, blob):
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(ReadError, match=f"{name} is not a DICOM file"):
        read(tmp_path / name)


def test_corrupt_file_in_folder_skipped_with_note(tmp_path):
    paths = write_dicom_series(tmp_path, _axial_ct(shape=(3, 4, 4)))
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "zz_truncated.dcm")
    volume = read_volume(tmp_path)
    assert len(volume.meta["source_files"]) == len(paths)
    # The truncated file is a series of its own: it is named, not silently dropped.
    assert volume.meta["not_loaded"] == ["zz_truncated.dcm is truncated: its pixel data end "
                                         "early."]
    assert "Not loaded: zz_truncated.dcm is truncated" in " ".join(volume.meta["warnings"])


def test_folder_where_every_series_fails_names_each_reason(tmp_path):
    for number in (1, 2):
        paths = write_dicom_series(tmp_path / str(number), _axial_ct(), series_number=number)
        os.remove(paths[4])
    with pytest.raises(GeometryError) as caught:
        read(tmp_path / "1")
    with pytest.raises(ReadError, match=r"None of the 2 series .* CT #1: slice spacing .*; "
                                        r"Series CT #2: slice spacing .*missing slices\?\.$"):
        read(tmp_path)
    assert "missing slices" in str(caught.value)
