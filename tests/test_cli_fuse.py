"""``medattn fuse``: each overlay on the base grid (the base's geometry bit for bit, values
equal to the library's), radiological PNG montages, provenance, a PET DICOM series with SUV
tags read in SUV, the frame-of-reference warning, and one-sentence errors."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from napari_medattn.cli import main
from napari_medattn.fusion.align import FrameOfReferenceWarning, overlay_on_grid
from napari_medattn.io import Volume, read_volume, write_dicom_series
from napari_medattn.io.volume import RAS_TO_LPS


def _save(path, data, affine_lps, description):
    image = nib.Nifti1Image(data, RAS_TO_LPS @ affine_lps)
    image.header["descrip"] = description.encode()
    nib.save(image, path)
    return path


@pytest.fixture
def pair(tmp_path):
    """A 2 mm CT with a bright block and a 3 mm PET on a shifted grid with a hot block."""
    ct_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_affine[:3, 3] = [-30, -30, -20]
    ct = np.full((31, 31, 21), 30, np.int16)
    ct[10:20, 10:20, 5:15] = 1000
    pet_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    pet_affine[:3, 3] = [-31.0, -29.5, -21.0]
    pet = np.zeros((21, 21, 15), np.float32)
    pet[8:13, 8:13, 5:10] = 8.0
    ct_path = _save(tmp_path / "ct.nii.gz", ct, ct_affine, "CT HU")
    pet_path = _save(tmp_path / "pet.nii.gz", pet, pet_affine, "PET SUV")
    return ct_path, pet_path, pet_affine


def test_fuse_writes_overlay_on_base_grid_and_montages(pair, tmp_path, capsys):
    ct_path, pet_path, _ = pair
    out = tmp_path / "out"
    assert main(["fuse", str(ct_path), str(pet_path), "--out", str(out),
                 "--window", "SUV 0-10", "--base-window", "brain", "--slices", "4"]) == 0
    written = nib.load(out / "pet_on_base.nii.gz")
    source = nib.load(ct_path)
    np.testing.assert_array_equal(written.affine, source.affine)  # base geometry exactly
    assert written.shape == source.shape
    expected = overlay_on_grid(read_volume(pet_path), read_volume(ct_path))
    np.testing.assert_allclose(np.asarray(written.dataobj), expected.data, atol=1e-5)
    assert read_volume(out / "pet_on_base.nii.gz").meta["units"] == "SUV"
    for view in ("axial", "coronal", "sagittal"):
        png = np.asarray(Image.open(out / f"pet_blend_{view}.png"))
        assert png.ndim == 3 and png.shape[2] == 3 and png.max() > 0
    axial = np.asarray(Image.open(out / "pet_blend_axial.png"))
    assert axial.shape[:2] == (2 * 31, 3 * 31)  # 4 slices: 2 rows of 3 tiles of 31 x 31
    record = json.loads((out / "pet_provenance.json").read_text())
    assert record["parameters"]["window"] == "SUV 0-10"
    assert record["outputs"]["blend_axial"] == "pet_blend_axial.png"
    assert len(record["inputs"]) == 2
    assert "pet_on_base.nii.gz" in capsys.readouterr().out


def test_pet_dicom_series_in_suv_and_frame_of_reference_warning(pair, tmp_path, capsys):
    ct_path, pet_path, pet_affine = pair
    suv = np.asarray(nib.load(pet_path).dataobj)
    pet = Volume(suv, pet_affine, "PT", {"name": "pet"}).canonical()
    # 70 kg and 70 MBq: 1000 Bq/ml per SUV; decay-corrected to the injection (ADMIN).
    info = Dataset()
    info.RadionuclideTotalDose = 70e6
    info.RadionuclideHalfLife = 6586.2
    bq = Volume(np.round(np.asarray(pet.data) * 1000.0), pet.affine, "PT", {"name": "pet"})
    write_dicom_series(tmp_path / "pet_dicom", bq, extra={
        "Units": "BQML", "DecayCorrection": "ADMIN", "PatientWeight": 70.0,
        "RadiopharmaceuticalInformationSequence": [info]})
    read_back = read_volume(tmp_path / "pet_dicom")
    assert read_back.meta["units"] == "SUVbw"
    np.testing.assert_allclose(read_back.data, pet.data, atol=1e-3)
    ct = read_volume(ct_path).canonical()
    write_dicom_series(tmp_path / "ct_dicom", Volume(np.asarray(ct.data), ct.affine, "CT",
                                                     {"name": "ct"}), rescale_intercept=-1024)
    out = tmp_path / "out"
    assert main(["fuse", str(tmp_path / "ct_dicom"), str(tmp_path / "pet_dicom"), "--out",
                 str(out), "--mode", "checkerboard", "--tile-mm", "10"]) == 0
    printed = capsys.readouterr().out
    assert "different frames of reference" in printed
    fused = read_volume(next(out.glob("*_on_base.nii.gz")))
    with pytest.warns(FrameOfReferenceWarning):
        expected = overlay_on_grid(read_back, read_volume(tmp_path / "ct_dicom"))
    np.testing.assert_allclose(fused.data, expected.data, atol=1e-3)
    assert len(list(out.glob("*_checkerboard_*.png"))) == 3


def test_bad_overlays_get_one_sentence(pair, tmp_path, capsys):
    ct_path, _, _ = pair
    far = _save(tmp_path / "far.nii.gz", np.ones((5, 5, 5), np.float32),
                np.diag([1.0, 1.0, 1.0, 1.0]) + np.pad([[900.0], [0], [0]], ((0, 1), (3, 0))),
                "PET SUV")
    dynamic = _save(tmp_path / "dynamic.nii.gz", np.ones((5, 5, 5, 3), np.float32),
                    np.eye(4), "PET SUV")
    out = tmp_path / "out"
    assert main(["fuse", str(ct_path), str(far), str(dynamic), "--out", str(out)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert "does not overlap" in errors[0] and "3 frames" in errors[1]
    assert not list(out.glob("*.nii.gz")) and not list(out.glob(".*"))
    assert main(["fuse", str(ct_path), str(ct_path), "--out", str(out), "--window",
                 "5,1"]) == 1
    assert "HIGH > LOW" in capsys.readouterr().err
