"""NIfTI read/write: exact geometry, headers bit for bit, bad input."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from napari_medattn.errors import DimensionError, GeometryError, ReadError, WriteError
from napari_medattn.io import read, read_volume, require_3d, volume_like, write_nifti

ANATOMICAL = os.path.join(data_path, "anatomical.nii")
EXAMPLE4D = os.path.join(data_path, "example4d.nii.gz")


def _rotation(axis, degrees):
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(linear, origin):
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


GEOMETRIES = {
    "ras": _affine(np.diag([0.9, 1.1, 2.5]), [-20.0, -30.0, 10.0]),
    "lps": _affine(np.diag([-0.9, -1.1, 2.5]), [20.0, 30.0, 10.0]),
    "flipped": _affine(np.diag([0.9, -1.1, -2.5]), [-20.0, 30.0, 40.0]),
    "permuted": _affine(np.array([[0, 0, -2.5], [1.1, 0, 0], [0, -0.9, 0]]), [5.0, -6.0, 7.0]),
    "oblique": _affine(_rotation(0, 17.0) @ _rotation(2, -8.0) @ np.diag([0.9, 1.1, 2.5]),
                       [3.0, -4.0, 5.0]),
}


def _write(tmp_path, name, data, affine_ras, qform_code=1, sform_code=2, descrip=b""):
    image = nib.Nifti1Image(data, affine_ras)
    image.header.set_qform(affine_ras, code=qform_code)
    image.header.set_sform(affine_ras, code=sform_code)
    image.header["descrip"] = descrip
    path = tmp_path / name
    nib.save(image, path)
    return path


def _headers_equal(a, b, ignore=("scl_slope", "scl_inter", "intent_code")):
    return [k for k in a.keys() if k not in ignore
            and not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")]


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("canonical", [False, True])
def test_read_write_read_is_exact(tmp_path, geometry, canonical):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 3000, size=(7, 9, 5)).astype(np.int16)
    source = _write(tmp_path, "scan.nii.gz", data, GEOMETRIES[geometry])
    volume = read_volume(source)
    # RAS -> LPS: x and y change sign, z stays.
    np.testing.assert_array_equal(volume.affine, np.diag([-1, -1, 1, 1]) @ nib.load(source).affine)
    np.testing.assert_allclose(volume.affine, np.diag([-1, -1, 1, 1]) @ GEOMETRIES[geometry],
                               atol=1e-5)
    np.testing.assert_array_equal(volume.data, data)
    written = write_nifti(tmp_path / "copy.nii.gz",
                          volume.canonical() if canonical else volume)
    again = read_volume(written)
    np.testing.assert_array_equal(again.affine, volume.affine)
    np.testing.assert_array_equal(again.data, data)
    assert again.data.dtype == data.dtype
    assert _headers_equal(nib.load(source).header, nib.load(written).header) == []


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_canonical_view_points_to_same_patient_positions(tmp_path, geometry):
    data = np.arange(7 * 9 * 5, dtype=np.int16).reshape(7, 9, 5)
    volume = read_volume(_write(tmp_path, "scan.nii", data, GEOMETRIES[geometry]))
    view = volume.canonical()
    assert view.orientation == "SPL"
    # Every voxel keeps its value and its patient position.
    for index in [(0, 0, 0), (6, 8, 4), (3, 1, 2)]:
        position = volume.affine @ np.r_[index, 1]
        view_index = np.linalg.solve(view.affine, position)[:3]
        view_index = tuple(int(round(i)) for i in view_index)
        assert view.data[view_index] == volume.data[index]


def test_canonical_matches_nibabel_closest_canonical(tmp_path):
    data = np.random.default_rng(1).random((7, 9, 5)).astype(np.float32)
    path = _write(tmp_path, "scan.nii.gz", data, GEOMETRIES["permuted"])
    ras = nib.as_closest_canonical(nib.load(path))  # axes R, A, S increasing
    view = read_volume(path).canonical()  # axes S, P, L increasing
    expected = np.asarray(ras.dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]
    np.testing.assert_array_equal(view.data, expected)


def test_4d_frames_first_as_a_view():
    volume = read_volume(EXAMPLE4D)
    raw = np.asanyarray(nib.load(EXAMPLE4D).dataobj)
    assert volume.data.shape == (2, 128, 96, 24)
    assert not volume.data.flags.owndata
    np.testing.assert_array_equal(volume.data[1], raw[..., 1])
    assert volume.meta["frame_axis"] == "time"


def test_4d_round_trip_keeps_frame_axis_last_in_file(tmp_path):
    volume = read_volume(EXAMPLE4D)
    written = write_nifti(tmp_path / "copy.nii.gz", volume.canonical())
    raw = np.asanyarray(nib.load(written).dataobj)
    np.testing.assert_array_equal(raw, np.asanyarray(nib.load(EXAMPLE4D).dataobj))
    assert _headers_equal(nib.load(EXAMPLE4D).header, nib.load(written).header) == []


def test_2d_file_is_a_single_slice_and_writes_back_2d(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = _write(tmp_path, "slice.nii.gz", data, np.diag([2.0, 3.0, 4.0, 1.0]))
    volume = read_volume(path)
    assert volume.data.shape == (3, 4, 1)
    with pytest.raises(DimensionError, match="2D image"):
        require_3d(volume)
    written = write_nifti(tmp_path / "out.nii.gz", volume)
    assert nib.load(written).shape == (3, 4)


def test_require_3d_reduces_single_frame_and_refuses_several():
    volume = read_volume(EXAMPLE4D)
    with pytest.raises(DimensionError, match="2 frames"):
        require_3d(volume)
    single = require_3d(volume_like(volume, volume.data[:1], modality="MR"))
    assert single.data.shape == (128, 96, 24)


def test_more_than_four_dimensions_refused(tmp_path):
    path = _write(tmp_path, "5d.nii.gz", np.zeros((3, 4, 5, 2, 2), np.float32), np.eye(4))
    with pytest.raises(DimensionError, match="5 dimensions"):
        read(path)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_truncated_file_refused(tmp_path, name):
    full = _write(tmp_path, "full" + name[3:], np.ones((20, 20, 20), np.float32), np.eye(4))
    blob = full.read_bytes()
    if name.endswith(".gz"):
        blob = gzip.compress(gzip.decompress(blob)[:5000])[:-10]
    else:
        blob = blob[:5000]
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(ReadError, match="cut.nii"):
        read(tmp_path / name)


def test_garbage_file_refused(tmp_path):
    (tmp_path / "noise.nii").write_bytes(np.random.default_rng(0).bytes(600))
    with pytest.raises(ReadError, match="noise.nii"):
        read(tmp_path / "noise.nii")


def test_nonfinite_voxels_warned_and_kept(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0], data[1, 2, 3], data[3, 3, 3] = np.nan, np.inf, -np.inf
    volume = read_volume(_write(tmp_path, "nan.nii.gz", data, np.eye(4)))
    assert any(w.startswith("3 of 64 voxels are NaN or infinite") for w in volume.meta["warnings"])
    np.testing.assert_array_equal(volume.data, data)


def test_modality_from_description_and_override(tmp_path):
    path = _write(tmp_path, "ct.nii.gz", np.zeros((2, 2, 2), np.int16), np.eye(4),
                  descrip=b"converted CT head")
    assert read_volume(path).modality == "CT"
    assert read_volume(path, modality="PT").modality == "PT"
    plain = _write(tmp_path, "plain.nii.gz", np.zeros((2, 2, 2), np.int16), np.eye(4))
    assert read_volume(plain).modality == "OT"


def test_labels_on_canonical_view_written_in_source_geometry(tmp_path):
    source = read_volume(ANATOMICAL)
    view = source.canonical()
    labels = np.zeros(view.spatial_shape, dtype=np.int64)  # napari Labels default dtype
    labels[2:5, 10:20, 3:9] = 1
    labels[6, 7, 8] = 300
    written = write_nifti(tmp_path / "labels.nii.gz", volume_like(view, labels))
    image = nib.load(written)
    assert image.get_data_dtype().newbyteorder("=") == np.int16  # source header is big-endian
    assert image.header["intent_code"] == 1002
    assert _headers_equal(nib.load(ANATOMICAL).header, image.header,
                          ignore=("scl_slope", "scl_inter", "intent_code", "datatype",
                                  "bitpix", "intent_name")) == []
    again = read_volume(written)
    assert again.modality == "SEG"
    np.testing.assert_array_equal(again.affine, source.affine)
    # The label voxel at view index (6, 7, 8) is at the same patient position in the file.
    position = view.affine @ np.r_[6, 7, 8, 1]
    file_index = np.round(np.linalg.solve(again.affine, position)[:3]).astype(int)
    assert again.data[tuple(file_index)] == 300
    np.testing.assert_array_equal(again.canonical().data, labels)


def test_fractional_labels_refused(tmp_path):
    source = read_volume(ANATOMICAL)
    with pytest.raises(WriteError, match="whole numbers"):
        write_nifti(tmp_path / "x.nii.gz",
                    volume_like(source, np.full(source.spatial_shape, 0.5)))


def test_writer_refuses_source_and_leaves_no_temporary(tmp_path):
    path = _write(tmp_path, "scan.nii.gz", np.ones((3, 3, 3), np.int16), np.eye(4))
    before = path.read_bytes()
    volume = read_volume(path)
    labels = volume_like(volume.canonical(), np.ones((3, 3, 3), np.uint8))
    with pytest.raises(WriteError, match="overwrite the source"):
        write_nifti(path, labels)
    with pytest.raises(WriteError, match="overwrite the source"):
        write_nifti(tmp_path / "sub" / ".." / "scan.nii.gz", volume)
    assert path.read_bytes() == before
    write_nifti(tmp_path / "labels", labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz", "scan.nii.gz"]


def test_volume_like_checks_shape_and_source_grid(tmp_path):
    source = read_volume(ANATOMICAL)
    with pytest.raises(DimensionError, match="spatial shape"):
        volume_like(source, np.zeros((3, 3, 3)))
    other = read_volume(EXAMPLE4D)
    plain = volume_like(source, np.zeros(source.spatial_shape, np.uint8))
    plain.meta.clear()
    with pytest.raises(GeometryError, match="not on the grid"):
        write_nifti(tmp_path / "x.nii.gz", plain, source=other)
    written = write_nifti(tmp_path / "y.nii.gz", plain, source=source)
    np.testing.assert_array_equal(read_volume(written).affine, source.affine)


def test_edited_canonical_affine_is_refused(tmp_path):
    view = read_volume(ANATOMICAL).canonical()
    view.affine[0, 3] += 5.0
    with pytest.raises(GeometryError, match="no longer matches"):
        write_nifti(tmp_path / "x.nii.gz", view)


def test_volume_from_scratch_gets_exact_sform(tmp_path):
    from napari_medattn.io import Volume

    affine = np.array(GEOMETRIES["oblique"])
    affine[:3, 2] += affine[:3, 0] * 0.2  # a sheared affine (gantry tilt) stays exact
    volume = Volume(np.ones((3, 4, 5), np.float32), affine, "CT", {"name": "x"})
    written = write_nifti(tmp_path / "x.nii.gz", volume)
    header = nib.load(written).header
    assert header["sform_code"] > 0 and header["qform_code"] == 0
    np.testing.assert_allclose(read_volume(written).affine, affine, atol=1e-5)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_lps_affine_matches_simpleitk(tmp_path, geometry):
    import SimpleITK as sitk

    from napari_medattn.io import affine_from_itk

    data = np.arange(7 * 9 * 5, dtype=np.int16).reshape(7, 9, 5)
    path = _write(tmp_path, "scan.nii.gz", data, GEOMETRIES[geometry])
    ours = read_volume(path)
    image = sitk.ReadImage(str(path))
    itk = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    # SimpleITK's array is (k, j, i): the same voxels with the axes reversed.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ours.data.transpose(2, 1, 0))
    np.testing.assert_allclose(ours.affine[:, [2, 1, 0, 3]], itk, atol=1e-5)


def test_canonical_of_canonical_still_writes_source_geometry(tmp_path):
    view = read_volume(ANATOMICAL).canonical().canonical()
    written = write_nifti(tmp_path / "x.nii.gz", view)
    assert _headers_equal(nib.load(ANATOMICAL).header, nib.load(written).header) == []
    np.testing.assert_array_equal(np.asanyarray(nib.load(written).dataobj),
                                  np.asanyarray(nib.load(ANATOMICAL).dataobj))


def test_nifti2_round_trip_stays_nifti2(tmp_path):
    path = os.path.join(data_path, "example_nifti2.nii.gz")
    written = write_nifti(tmp_path / "x.nii.gz", read_volume(path).canonical())
    source, again = nib.load(path), nib.load(written)
    assert isinstance(again, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), np.asanyarray(source.dataobj))
    assert _headers_equal(source.header, again.header) == []


@pytest.mark.parametrize("array, dtype", [
    (np.ones((2, 2, 2), bool), np.uint8),
    (np.full((2, 2, 2), 70000, np.int64), np.int32),
    (np.full((2, 2, 2), -3, np.int64), np.int16),
])
def test_bool_and_64_bit_images_stored_in_smallest_exact_integer(tmp_path, array, dtype):
    from napari_medattn.io import Volume

    written = write_nifti(tmp_path / "x.nii.gz", Volume(array, np.eye(4), "OT", {}))
    assert nib.load(written).get_data_dtype() == dtype
    np.testing.assert_array_equal(read_volume(written).data, array)
