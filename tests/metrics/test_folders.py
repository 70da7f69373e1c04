"""Folders of NIfTI label maps: cases matched by name, geometry from the files, problems
reported per case while the others are still scored."""

import math

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.errors import ReadError
from napari_medattn.metrics import evaluate_folders, evaluate_pair, evaluate_paths

SPACING = (1.0, 0.7, 2.5)
# NIfTI headers store the affine in float32: the spacing read back (0.7 -> 0.69999999).
FILE_SPACING = tuple(np.float32(SPACING).astype(float))


def save(path, labels, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(labels, affine), str(path))


@pytest.fixture
def cases(tmp_path, blobs):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    arrays = {}
    for number, name in enumerate(["brain_001", "brain_002"]):
        ref = blobs((20, 24, 16), seed=10 + number)
        pred = np.roll(ref, 1, axis=number)
        save(ref_dir / f"{name}.nii.gz", ref)
        # nnU-Net writes predictions as .nii.gz and float label maps are common.
        save(pred_dir / f"{name}.nii.gz", pred.astype(np.float32))
        arrays[name] = pred, ref
    (pred_dir / "plans.json").write_text("{}")  # not a case
    return pred_dir, ref_dir, arrays


def test_cases_matched_by_name_equal_evaluate_pair(cases):
    pred_dir, ref_dir, arrays = cases
    report = evaluate_folders(pred_dir, ref_dir, class_names={1: "csf", 2: "grey"})
    assert report.problems == []
    assert [(s.case, s.label, s.name) for s in report.scores] == [
        ("brain_001", 1, "csf"), ("brain_001", 2, "grey"),
        ("brain_002", 1, "csf"), ("brain_002", 2, "grey")]
    for name, (pred, ref) in arrays.items():
        expected = evaluate_pair(pred, ref, spacing=FILE_SPACING, case=name,
                                 class_names={1: "csf", 2: "grey"})
        assert [s for s in report.scores if s.case == name] == expected
    assert {(m.scope, m.case, m.label) for m in report.summary} == {
        ("case", "brain_001", None), ("case", "brain_002", None),
        ("class", "all", 1), ("class", "all", 2), ("all", "all", None)}


def test_bad_cases_are_reported_and_the_others_scored(cases):
    pred_dir, ref_dir, arrays = cases
    pred, ref = arrays["brain_002"]
    save(pred_dir / "brain_002.nii.gz", pred, origin=(0.0, 0.0, 5.0))  # shifted 5 mm
    save(pred_dir / "brain_003.nii", pred)  # no reference
    save(ref_dir / "brain_004.nii.gz", ref)  # no prediction
    (ref_dir / "brain_005.nii.gz").write_bytes(b"not a nifti")
    save(pred_dir / "brain_005.nii.gz", pred)
    report = evaluate_folders(pred_dir, ref_dir)
    assert {s.case for s in report.scores} == {"brain_001"}
    problems = dict(report.problems)
    assert sorted(problems) == ["brain_002", "brain_003", "brain_004", "brain_005"]
    assert "differ by up to 5 mm" in problems["brain_002"]
    assert problems["brain_003"].startswith("Case brain_003: no reference")
    assert problems["brain_004"].startswith("Case brain_004: no prediction")
    assert problems["brain_005"].startswith("Case brain_005: ")
    assert all(message.count(".") >= 1 and "\n" not in message for message in problems.values())


def test_a_class_absent_from_one_case_is_scored_there_as_both_empty(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "r").mkdir()
    with_tumour = np.zeros((10, 10, 10), np.uint8)
    with_tumour[2:6, 2:6, 2:6], with_tumour[7:9, 7:9, 7:9] = 1, 2
    without = np.where(with_tumour == 2, 0, with_tumour).astype(np.uint8)
    for name, labels in (("a", with_tumour), ("b", without)):
        save(tmp_path / "p" / f"{name}.nii", labels)
        save(tmp_path / "r" / f"{name}.nii", labels)
    report = evaluate_folders(tmp_path / "p", tmp_path / "r")
    [filled] = [s for s in report.scores if (s.case, s.label) == ("b", 2)]
    assert (filled.dice, filled.hd95_mm, filled.pred_voxels, filled.ref_voxels) == (1.0, 0.0, 0, 0)
    assert [s.label for s in report.scores if s.case == "b"] == [1, 2]


def test_evaluate_paths_files_and_mixed(cases, tmp_path):
    pred_dir, ref_dir, arrays = cases
    report = evaluate_paths(pred_dir / "brain_001.nii.gz", ref_dir / "brain_001.nii.gz")
    pred, ref = arrays["brain_001"]
    assert report.scores == evaluate_pair(pred, ref, spacing=FILE_SPACING, case="brain_001")
    with pytest.raises(ReadError, match="two files or two folders"):
        evaluate_paths(pred_dir, ref_dir / "brain_001.nii.gz")
    with pytest.raises(ReadError, match="does not exist"):
        evaluate_paths(tmp_path / "nowhere", ref_dir)


def test_one_empty_case_means_skip_inf(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "r").mkdir()
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    save(tmp_path / "r" / "x.nii", ref)
    save(tmp_path / "p" / "x.nii", np.zeros_like(ref))
    save(tmp_path / "r" / "y.nii", ref)
    save(tmp_path / "p" / "y.nii", ref)
    report = evaluate_folders(tmp_path / "p", tmp_path / "r")
    [overall] = [m for m in report.summary if m.scope == "all"]
    assert math.isinf(report.scores[0].hd95_mm)
    assert overall.means["hd95_mm"] == 0.0 and overall.excluded["hd95_mm"] == 1
    assert overall.means["dice"] == 0.5 and overall.excluded["dice"] == 0
