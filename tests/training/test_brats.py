"""The BraTS-layout folder reader on a tiny folder the test writes: cases found, files by
role, exact grids and labels kept, model-grid arrays for training; bad folders get one
sentence."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.errors import DimensionError, GeometryError, ReadError
from napari_medattn.training.brats import brats_case_folders, brats_files, read_brats_case
from napari_medattn.training.multimodal_cases import case_arrays

SHAPE = (12, 10, 8)
AFFINE_RAS = np.diag([2.0, 2.0, 2.0, 1.0])  # NIfTI RAS+: 2 mm voxels


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:9, 3:7, 2:6] = 2
    labels[4:8, 4:6, 3:5] = 4
    labels[5, 5, 4] = 1
    return labels


def _write_case(folder, name, *, skip=(), seg=None, affine=AFFINE_RAS, extra=()):
    case = folder / name
    case.mkdir(parents=True)
    labels = _labels() if seg is None else seg
    for k, role in enumerate(("t1", "t1ce", "t2", "flair")):
        if role in skip:
            continue
        image = (100.0 * (k + 1) + 50.0 * labels + np.arange(np.prod(SHAPE)).reshape(SHAPE)
                 % 7).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine if role == "t2" else AFFINE_RAS),
                 case / f"{name}_{role}.nii.gz")
    if "seg" not in skip:
        nib.save(nib.Nifti1Image(labels, AFFINE_RAS), case / f"{name}_seg.nii.gz")
    for role in extra:
        nib.save(nib.Nifti1Image(labels, AFFINE_RAS), case / f"copy_{role}.nii")
    return case


def test_folder_of_cases(tmp_path):
    for name in ("BraTS20_Training_002", "BraTS20_Training_001"):
        _write_case(tmp_path, name)
    (tmp_path / "notes.txt").write_text("not a case")
    cases = brats_case_folders(tmp_path)
    assert [c.name for c in cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    files = brats_files(cases[0])
    assert sorted(files) == ["flair", "seg", "t1", "t1ce", "t2"]
    assert files["t1"].name == "BraTS20_Training_001_t1.nii.gz"  # not the t1ce file
    case = read_brats_case(cases[0], index=3)
    assert case.seed == 3 and sorted(case.images) == ["flair", "t1", "t1ce", "t2"]
    np.testing.assert_array_equal(case.labels.data, _labels())
    # The exact affine: NIfTI RAS becomes LPS (x and y negated).
    np.testing.assert_allclose(case.images["t2"].affine[:3, :3], np.diag([-2.0, -2.0, 2.0]))
    assert brats_case_folders(cases[0]) == [cases[0]]  # a case folder is its own dataset


def test_case_arrays_on_the_model_grid(tmp_path):
    _write_case(tmp_path, "case_a")
    (case,) = case_arrays([0], data=tmp_path)
    labels = _labels()
    # Already RAS at 2 mm: no resampling, labels as written, classes 0..3.
    np.testing.assert_array_equal(case["labels"], labels)
    np.testing.assert_array_equal(case["target"], np.searchsorted([0, 1, 2, 4], labels))
    assert case["x"].shape == (4, *SHAPE) and case["x"].dtype == np.float32
    assert len(case["tumour"]) == np.count_nonzero(labels)
    with pytest.raises(DimensionError, match=r"holds 1 case\(s\)"):
        case_arrays([0, 1], data=tmp_path)


@pytest.mark.parametrize(("make", "error", "sentence"), [
    (lambda p: p / "absent", ReadError, "is not a folder"),
    (lambda p: p, ReadError, "holds no BraTS case"),
])
def test_bad_folders(tmp_path, make, error, sentence):
    (tmp_path / "empty_case").mkdir()
    with pytest.raises(error, match=sentence):
        brats_case_folders(make(tmp_path))


def test_bad_cases(tmp_path):
    with pytest.raises(ReadError, match="has no t1ce file"):
        read_brats_case(_write_case(tmp_path, "a", skip=("t1ce",)))
    with pytest.raises(ReadError, match="has no seg file"):
        read_brats_case(_write_case(tmp_path, "b", skip=("seg",)))
    assert read_brats_case(tmp_path / "b", labels=False).labels is None
    with pytest.raises(ReadError, match="two flair files"):
        brats_files(_write_case(tmp_path, "c", extra=("flair",)))
    shifted = AFFINE_RAS.copy()
    shifted[0, 3] = 10.0
    with pytest.raises(GeometryError, match="the t2 file is on another grid"):
        read_brats_case(_write_case(tmp_path, "d", affine=shifted))
    bad = _labels()
    bad[0, 0, 0] = 3
    with pytest.raises(DimensionError, match=r"Case e: BraTS labels are 0, 1, 2 and 4.*\[3\]"):
        read_brats_case(_write_case(tmp_path, "e", seg=bad))
