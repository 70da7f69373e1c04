"""Manifests: a CSV (relative paths, channels, reference, moving), an MSD and an nnU-Net
folder, a folder of scans (NIfTI files and DICOM series folders), and one sentence for
each way a manifest can be malformed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from napari_medattn.cohort import Case, read_manifest
from napari_medattn.cohort.run import case_folders
from napari_medattn.errors import ReadError

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"


def test_csv_rows_with_relative_paths_channels_reference_and_moving(tmp_path):
    (tmp_path / "m.csv").write_text(
        "Case,image,reference,moving\n"
        "a, scans/a.nii.gz ,labels/a.nii.gz,\n"
        "b,scans/b_t1.nii.gz;scans/b_t2.nii.gz,,scans/b_old.nii.gz\n"
        "c,/abs/c.nii.gz,,\n")
    cases = read_manifest(tmp_path / "m.csv")
    assert cases == [
        Case("a", (tmp_path / "scans/a.nii.gz",), tmp_path / "labels/a.nii.gz"),
        Case("b", (tmp_path / "scans/b_t1.nii.gz", tmp_path / "scans/b_t2.nii.gz"), None,
             tmp_path / "scans/b_old.nii.gz"),
        Case("c", (Path("/abs/c.nii.gz"),))]


@pytest.mark.parametrize(("text", "sentence"), [
    ("case,scan\na,x.nii\n", r"lacks the column\(s\) image; it needs case, image"),
    ("case,image\na,x.nii\na,y.nii\n", "names the case 'a' twice"),
    ("case,image\n,x.nii\n", "Line 2 of the manifest m.csv has no case id"),
    ("case,image\na,\n", r"Line 2 .* \(case 'a'\) names no image"),
    ("case,image\na,x.nii,extra\n", "Line 2 of the manifest m.csv has more fields"),
    ("case,image\n", "names no case"),
])
def test_malformed_csv_is_one_sentence(tmp_path, text, sentence):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ReadError, match=sentence):
        read_manifest(tmp_path / "m.csv")


def test_missing_or_unknown_manifest_is_one_sentence(tmp_path):
    with pytest.raises(ReadError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.xlsx").write_bytes(b"PK")
    with pytest.raises(ReadError, match="is not a CSV file, an MSD/nnU-Net folder"):
        read_manifest(tmp_path / "m.xlsx")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReadError, match="cannot be read as UTF-8"):
        read_manifest(tmp_path / "bin.csv")


def test_msd_folder_lists_training_cases_with_labels_and_test_cases(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "BrainTumour",
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                      "label": "./labelsTr/BRATS_001.nii.gz"}],
        "test": ["./imagesTs/BRATS_485.nii.gz"]}))
    assert read_manifest(tmp_path) == [
        Case("BRATS_001", (tmp_path / "imagesTr/BRATS_001.nii.gz",),
             tmp_path / "labelsTr/BRATS_001.nii.gz"),
        Case("BRATS_485", (tmp_path / "imagesTs/BRATS_485.nii.gz",))]


def test_nnunet_folder_groups_channels_and_finds_labels(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    for name in ("imagesTr/p1_0000", "imagesTr/p1_0001", "imagesTr/p2_0000",
                 "imagesTr/p2_0001", "labelsTr/p1", "imagesTs/p9_0000", "imagesTs/p9_0001"):
        (tmp_path / f"{name}.nii.gz").parent.mkdir(exist_ok=True)
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    cases = read_manifest(tmp_path)
    assert [c.case_id for c in cases] == ["p1", "p2", "p9"]
    assert cases[0].inputs == (tmp_path / "imagesTr/p1_0000.nii.gz",
                               tmp_path / "imagesTr/p1_0001.nii.gz")
    assert cases[0].reference == tmp_path / "labelsTr/p1.nii.gz"
    assert cases[1].reference is None and cases[2].reference is None
    (tmp_path / "imagesTr" / "stray.nii.gz").write_bytes(b"")
    with pytest.raises(ReadError, match=r"stray.nii.gz in imagesTr is not named "
                                        r"<case>_<channel:04d>.nii.gz"):
        read_manifest(tmp_path)


def test_folder_of_scans_nifti_files_and_dicom_series_folders(tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub-01").mkdir(parents=True)
    shutil.copy(SAMPLES / "nibabel_anatomical.nii.gz", scans / "sub-01" / "t1.nii.gz")
    shutil.copy(SAMPLES / "mni152_t1.nii.gz", scans / "mni.nii.gz")
    shutil.copytree(SAMPLES / "mr_series", scans / "sub-02" / "dicom")
    (scans / "out").mkdir()  # the cohort's own output folder inside: never a case
    shutil.copy(SAMPLES / "mni152_t1.nii.gz", scans / "out" / "x.nii.gz")
    cases = read_manifest(scans, exclude=[scans / "out"])
    assert [(c.case_id, c.inputs) for c in cases] == [
        ("mni", (scans / "mni.nii.gz",)),
        ("sub-01_t1", (scans / "sub-01" / "t1.nii.gz",)),
        ("sub-02_dicom", ((scans / "sub-02" / "dicom").resolve(),))]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match="holds no NIfTI files or DICOM series"):
        read_manifest(tmp_path / "empty")


def test_case_ids_that_make_the_same_folder_are_refused():
    assert case_folders([Case("sub 01", ()), Case("sub/02", ())]) == {
        "sub 01": "sub_01", "sub/02": "sub_02"}
    with pytest.raises(ReadError, match="'a b' and 'a_b' make the same folder name 'a_b'"):
        case_folders([Case("a b", ()), Case("a_b", ())])
