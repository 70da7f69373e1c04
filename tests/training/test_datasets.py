import json

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.errors import DimensionError, GeometryError, ReadError
from napari_medattn.inference.preprocess import normalize_intensity, reorient
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_to_grid, spacing_grid
from napari_medattn.io import Volume, read_volume, write_dicom_series
from napari_medattn.io.volume import RAS_TO_LPS
from napari_medattn.training.datasets import load_cases, make_case
from napari_medattn.training.patches import prepare_case

SHAPE = (12, 10, 8)
AFFINE_RAS = np.array([[1.5, 0, 0, -9.0], [0, 2.0, 0, 4.0], [0, 0, 2.5, 11.0], [0, 0, 0, 1]])


def _image(seed):
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


def _labels(seed):
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:7, 2:5, 2:6] = 1
    labels[8:10, 6:9, 1:3] = 2 if seed % 2 == 0 else 1
    return labels


def _save(array, path, affine=AFFINE_RAS):
    nib.save(nib.Nifti1Image(array, affine), path)


def _nnunet_folder(root, cases=3, labels=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(cases):
        for c in range(2):
            _save(_image(10 * i + c), root / "imagesTr" / f"case{i}_{c:04d}.nii.gz")
        _save(_labels(i), root / "labelsTr" / f"case{i}.nii.gz")
    (root / "labelsTr" / "._case0.nii.gz").write_bytes(b"macOS resource fork")
    meta = {"channel_names": {"0": "T1", "1": "FLAIR"},
            "labels": labels or {"background": 0, "oedema": 1, "core": 2},
            "file_ending": ".nii.gz", "numTraining": cases}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _canonical(array):
    """The (z, y, x) LPS view of an i, j, k RAS-stored array with AFFINE_RAS."""
    return Volume(array, RAS_TO_LPS @ AFFINE_RAS).canonical()


def test_nnunet_folder_loads_values_geometry_and_declarations(tmp_path):
    data = load_cases(_nnunet_folder(tmp_path / "Dataset001"))
    assert data.labels == {0: "background", 1: "oedema", 2: "core"}
    assert data.channel_names == ["T1", "FLAIR"]
    assert [c.name for c in data.cases] == ["case0", "case1", "case2"]
    case = data.cases[1]
    expected = [_canonical(_image(10 + c)) for c in range(2)]
    assert case.image.data.shape == (2, *expected[0].spatial_shape)
    np.testing.assert_allclose(case.image.data[1], expected[1].data, rtol=1e-6)
    np.testing.assert_array_equal(case.label.data, _canonical(_labels(1)).data)
    np.testing.assert_allclose(case.image.affine, expected[0].affine, atol=1e-6)
    np.testing.assert_array_equal(case.label.affine, case.image.affine)
    assert case.label.data.dtype == np.uint8


def test_decathlon_training_list_with_4d_images(tmp_path):
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for i in range(2):
        stacked = np.stack([_image(i), _image(i + 5)], axis=-1)  # MSD: channels last in file
        _save(stacked, root / "imagesTr" / f"brain_{i}.nii.gz")
        _save(_labels(i), root / "labelsTr" / f"brain_{i}.nii.gz")
        entries.append({"image": f"./imagesTr/brain_{i}.nii.gz",
                        "label": f"./labelsTr/brain_{i}.nii.gz"})
    meta = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background",
                                                               "1": "edema", "2": "tumour"},
            "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    data = load_cases(root)
    assert data.channel_names == ["FLAIR", "T1w"]
    assert data.labels == {0: "background", 1: "edema", 2: "tumour"}
    np.testing.assert_allclose(data.cases[1].image.data[1], _canonical(_image(6)).data,
                               rtol=1e-6)


def test_csv_with_two_channels_and_a_dicom_series(tmp_path):
    # One channel is a DICOM series (slice, row, column order), the other and the label
    # NIfTI (i, j, k order) on the same physical grid: the loader compares canonical views.
    nifti_volume = read_volume(_write(tmp_path / "t2.nii.gz", _image(3)))
    series = Volume(np.ascontiguousarray(np.round(nifti_volume.canonical().data).astype(
        np.int16)), nifti_volume.canonical().affine, "MR", {"name": "t1"})
    write_dicom_series(tmp_path / "t1_series", series)
    _write(tmp_path / "seg.nii.gz", _labels(0))
    (tmp_path / "list.csv").write_text("name,image_t1,image_t2,label\n"
                                       "patient-a,t1_series,t2.nii.gz,seg.nii.gz\n")
    data = load_cases(tmp_path / "list.csv", labels={0: "background", 1: "a", 2: "b"})
    case = data.cases[0]
    assert case.name == "patient-a" and data.channel_names == ["channel 0", "channel 1"]
    np.testing.assert_array_equal(case.image.data[0], series.data)
    np.testing.assert_allclose(case.image.data[1], nifti_volume.canonical().data, rtol=1e-6)
    np.testing.assert_array_equal(case.label.data, _canonical(_labels(0)).data)


def _write(path, array, affine=AFFINE_RAS):
    _save(array, path, affine)
    return path


def test_csv_without_declared_labels_takes_the_values_found(tmp_path):
    _write(tmp_path / "a.nii.gz", _image(0))
    _write(tmp_path / "a_seg.nii.gz", _labels(0))
    (tmp_path / "cases.csv").write_text(f"image,label\n{tmp_path / 'a.nii.gz'},a_seg.nii.gz\n")
    data = load_cases(tmp_path / "cases.csv")
    assert data.labels == {0: "background", 1: "label 1", 2: "label 2"}
    assert data.cases[0].name == "a"


def test_mismatched_grid_names_the_case(tmp_path):
    root = _nnunet_folder(tmp_path / "d")
    _save(np.zeros((12, 10, 9), np.uint8), root / "labelsTr" / "case2.nii.gz")
    with pytest.raises(GeometryError, match="Case case2: the label map"):
        load_cases(root)
    shifted = AFFINE_RAS.copy()
    shifted[0, 3] += 1.0
    _save(_labels(2), root / "labelsTr" / "case2.nii.gz", shifted)
    with pytest.raises(GeometryError, match="Case case2.*differ by up to 1 mm"):
        load_cases(root)


def test_channel_on_another_grid_names_the_case(tmp_path):
    root = _nnunet_folder(tmp_path / "d")
    _save(_image(0)[:, :, :7], root / "imagesTr" / "case1_0001.nii.gz")
    with pytest.raises(GeometryError, match="Case case1: channel case1_0001"):
        load_cases(root)


def test_unknown_label_value_names_the_case(tmp_path):
    root = _nnunet_folder(tmp_path / "d", labels={"background": 0, "lesion": 1})
    with pytest.raises(ReadError, match=r"Case case0 has label value\(s\) \[2\]"):
        load_cases(root)


def test_non_integer_labels_name_the_case(tmp_path):
    root = _nnunet_folder(tmp_path / "d")
    _save(_labels(1).astype(np.float32) * 0.5, root / "labelsTr" / "case1.nii.gz")
    with pytest.raises(ReadError, match="Case case1: .*non-integer"):
        load_cases(root)


def test_missing_file_names_the_case(tmp_path):
    root = _nnunet_folder(tmp_path / "d")
    (root / "imagesTr" / "case1_0001.nii.gz").unlink()
    with pytest.raises(ReadError, match="Case case1: .*case1_0001.nii.gz does not exist"):
        load_cases(root)


def test_missing_dataset_json_and_bad_csv(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match="no dataset.json"):
        load_cases(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("path,seg\na,b\n")
    with pytest.raises(ReadError, match="needs a 'label' column"):
        load_cases(tmp_path / "x.csv")


def test_channel_count_must_match_the_declaration(tmp_path):
    root = _nnunet_folder(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    _save(np.stack([_image(0)] * 3, -1), root / "imagesTr" / "big.nii.gz")
    _save(_labels(0), root / "labelsTr" / "big.nii.gz")
    meta["training"] = [{"image": "imagesTr/big.nii.gz", "label": "labelsTr/big.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DimensionError, match="Case big has 3 channel"):
        load_cases(root)


def test_split_is_seeded_and_disjoint(tmp_path):
    data = load_cases(_nnunet_folder(tmp_path / "d", cases=5))
    train, val = data.split(0.4, seed=3)
    assert len(val) == 2 and len(train) == 3
    assert {c.name for c in train} | {c.name for c in val} == {f"case{i}" for i in range(5)}
    assert [c.name for c in data.split(0.4, seed=3)[1]] == [c.name for c in val]


def test_prepare_case_matches_the_resampler_and_keeps_label_positions(tmp_path):
    case = load_cases(_nnunet_folder(tmp_path / "d")).cases[0]
    prepared = prepare_case(case, orientation="RAS", spacing=(2.0, 2.0, 2.0),
                            normalization={"scheme": "zscore"})
    assert prepared.image.orientation == "RAS" and np.allclose(prepared.image.spacing, 2.0)
    # Each class keeps its physical centroid within a voxel of the new grid.
    for value in (1, 2):
        before = np.argwhere(case.label.data == value).mean(0)
        after = np.argwhere(prepared.label.data == value).mean(0)
        mm_before = case.label.affine @ np.append(before, 1)
        mm_after = prepared.label.affine @ np.append(after, 1)
        assert np.linalg.norm(mm_before - mm_after) < 2.0
    # The label map is exactly the one resampler's nearest output on that grid.
    turned_label, _ = reorient(case.label, "RAS")
    affine, shape = spacing_grid(turned_label.affine, turned_label.spatial_shape, (2, 2, 2))
    reference = resample_to_grid(turned_label, affine, shape, order=NEAREST)
    np.testing.assert_array_equal(prepared.label.data, reference.data)
    np.testing.assert_array_equal(prepared.label.affine, reference.affine)
    # Each channel is the card's normalisation of the linearly resampled channel.
    turned_image, _ = reorient(case.image, "RAS")
    resampled = resample_to_grid(turned_image, affine, shape, order=LINEAR).data
    for channel in range(2):
        np.testing.assert_allclose(
            prepared.image.data[channel],
            normalize_intensity(resampled[channel], {"scheme": "zscore"}), rtol=1e-6)
    assert prepared.image.data.dtype == np.float32


def test_make_case_checks_volumes_in_memory():
    affine = RAS_TO_LPS @ AFFINE_RAS
    t1 = Volume(_image(0), affine, "MR", {"name": "t1"})
    flair = Volume(_image(1), affine, "MR", {"name": "flair"})
    case = make_case("mem", [t1, flair], Volume(_labels(0).astype(np.float32), affine, "SEG"))
    assert case.image.data.shape == (2, *SHAPE) and case.label.data.dtype == np.uint8
    np.testing.assert_array_equal(case.image.data[1], flair.data)
    moved = affine.copy()
    moved[:3, 3] += 0.5
    with pytest.raises(GeometryError, match="Case mem: channel flair"):
        make_case("mem", [t1, Volume(flair.data, moved, "MR", {"name": "flair"})],
                  Volume(_labels(0), affine, "SEG"))
    with pytest.raises(ReadError, match="Case mem: the label map holds negative"):
        make_case("mem", [t1], Volume(_labels(0).astype(np.int16) - 1, affine, "SEG"))


def test_nnunet_v1_training_list_finds_channel_files(tmp_path):
    root = _nnunet_folder(tmp_path / "Task002", cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = [{"image": f"./imagesTr/case{i}.nii.gz",
                         "label": f"./labelsTr/case{i}.nii.gz"} for i in (1, 0)]
    (root / "dataset.json").write_text(json.dumps(meta))
    data = load_cases(root)
    assert [c.name for c in data.cases] == ["case1", "case0"]
    np.testing.assert_allclose(data.cases[0].image.data[1], _canonical(_image(11)).data,
                               rtol=1e-6)


def test_region_based_labels_are_refused(tmp_path):
    root = _nnunet_folder(tmp_path / "d", labels={"background": 0, "whole": [1, 2]})
    with pytest.raises(ReadError, match="region-based labels are not supported"):
        load_cases(root)
