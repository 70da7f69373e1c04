from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medattn.errors import GeometryError, ReadError, WriteError
from napari_medattn.registration import (
    DisplacementField,
    LinearTransform,
    exponentiate,
    read_transform,
    warp,
    write_transform,
)
from napari_medattn.registration.itk_files import check_fits
from napari_medattn.registration.synthetic import random_velocity

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"
FIXED = SAMPLES / "nibabel_anatomical.nii.gz"
MOVED = SAMPLES / "nibabel_anatomical_moved.nii.gz"


def sitk_warp(transform_file, moving_path, fixed_path, field=False):
    fixed = sitk.ReadImage(str(fixed_path), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(moving_path), sitk.sitkFloat32)
    if field:
        transform = sitk.DisplacementFieldTransform(
            sitk.ReadImage(str(transform_file), sitk.sitkVectorFloat64))
    else:
        transform = sitk.ReadTransform(str(transform_file))
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # SimpleITK arrays are (k, j, i): back to the file's (i, j, k) order.
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def interior(array, margin=2):
    return array[margin:-margin, margin:-margin, margin:-margin]


def test_linear_file_read_by_simpleitk_gives_our_warp(tmp_path, nibabel_pair):
    fixed, moved, truth = nibabel_pair
    path = write_transform(tmp_path / "rigid.tfm", truth)
    assert np.allclose(read_transform(path).matrix, truth.matrix, atol=1e-9)
    ours = np.asarray(warp(moved, truth, fixed).data)
    theirs = sitk_warp(path, MOVED, FIXED)
    scale = np.abs(ours).max()
    assert np.abs(interior(ours) - interior(theirs)).max() < 1e-3 * scale
    # The transform is the true motion, so the moved copy comes back onto the original.
    original = np.asarray(fixed.data, np.float32)
    assert np.corrcoef(interior(ours).ravel(), interior(original).ravel())[0, 1] > 0.99


def test_field_file_read_by_simpleitk_gives_our_warp(tmp_path, nibabel_pair):
    fixed, moved, _ = nibabel_pair
    velocity = random_velocity(fixed.spatial_shape, 2.0, magnitude_mm=4.0, seed=3)
    field = exponentiate(velocity, fixed.affine)
    path = write_transform(tmp_path / "field.nii.gz", field)
    header = nib.load(path).header
    assert header["intent_code"] == 1007 and nib.load(path).shape[3:] == (1, 3)
    back = read_transform(path)
    assert np.allclose(back.displacement, field.displacement, atol=1e-6)
    assert np.allclose(back.affine, field.affine, atol=1e-6)
    ours = np.asarray(warp(fixed, field, fixed).data)
    theirs = sitk_warp(path, FIXED, FIXED, field=True)
    scale = np.abs(ours).max()
    assert np.abs(interior(ours, 4) - interior(theirs, 4)).max() < 1e-3 * scale
    assert np.abs(ours - np.asarray(fixed.data)).max() > 0.1 * scale  # it did move


def test_wrong_files_are_refused(tmp_path, nibabel_pair):
    fixed, _, truth = nibabel_pair
    with pytest.raises(ReadError, match="not a displacement field"):
        read_transform(FIXED)
    (tmp_path / "notes.txt").write_text("not a transform\n")
    with pytest.raises(ReadError, match="not an ITK transform"):
        read_transform(tmp_path / "notes.txt")
    with pytest.raises(WriteError, match="linear transform"):
        write_transform(tmp_path / "rigid.nii.gz", truth)
    elsewhere = fixed.affine.copy()
    elsewhere[:3, 3] += 500
    field = DisplacementField(np.zeros((3, 8, 8, 8), np.float32), elsewhere)
    with pytest.raises(GeometryError, match="another grid"):
        check_fits(field, fixed.affine, fixed.spatial_shape)
    check_fits(LinearTransform.identity(), fixed.affine, fixed.spatial_shape)
