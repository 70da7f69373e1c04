"""A DICOM-SEG inside a folder opens as named labels on the series it references (napari's
reader and the ``medattn`` batch loop alike), not as a series of raw bit planes."""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

import napari_medattn
from napari_medattn._napari_hooks import read_layers
from napari_medattn.cli.common import VolumeOutput, run_over_inputs
from napari_medattn.io import read, read_volume, volume_like
from napari_medattn.io.dicom.seg import write_seg

MR_SERIES = Path(napari_medattn.__file__).parent / "sample_data" / "mr_series"
CLASSES = [("background", "#000000"), ("liver", "#e6194b"), ("tumour", "#3cb44b")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The sample MR series and a SEG written on it, in one folder: (folder, MR, labels)."""
    folder = tmp_path_factory.mktemp("study") / "mr"
    shutil.copytree(MR_SERIES, folder)
    scan = read_volume(folder)
    data = np.zeros(scan.spatial_shape, np.uint8)
    data[10:20, 30:60, 40:70] = 1
    data[14:17, 40:45, 50:58] = 2
    labels = volume_like(scan, data, name="drawn")
    write_seg(folder / "seg.dcm", labels, classes=CLASSES)
    return folder, scan, data


def _segment_voxels(path: Path) -> dict[int, int]:
    """Set voxels per segment number, counted in pydicom's own decoding of the SEG frames."""
    header = pydicom.dcmread(path)
    counts: dict[int, int] = {}
    for frame, item in zip(header.pixel_array.reshape(-1, header.Rows, header.Columns),
                           header.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(frame.sum())
    return counts


def test_folder_opens_as_the_scan_and_its_named_labels_on_its_grid(study):
    folder, scan, data = study
    mr, labels = read(folder)
    assert mr.modality == "MR" and mr.meta["source_files"] == scan.meta["source_files"]
    assert labels.modality == "SEG"
    assert [c[0] for c in labels.meta["classes"]] == [c[0] for c in CLASSES]
    assert labels.meta["classes"][1][1] == "#e6194b"
    np.testing.assert_array_equal(labels.affine, mr.affine)
    np.testing.assert_array_equal(labels.data, data)
    # As many voxels per segment as the SEG's own frames, decoded by pydicom, set.
    counts = _segment_voxels(folder / "seg.dcm")
    assert counts == {value: int((data == value).sum()) for value in (1, 2)}


def test_napari_and_cli_see_the_same_two_volumes(study, tmp_path):
    folder, scan, data = study
    layers = read_layers(str(folder))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (image, image_kwargs, _), (label_data, label_kwargs, _) = layers
    assert label_kwargs["features"]["class"] == [c[0] for c in CLASSES]
    np.testing.assert_array_equal(label_kwargs["scale"], image_kwargs["scale"])
    np.testing.assert_array_equal(label_kwargs["translate"], image_kwargs["translate"])
    assert label_data.shape == image.shape and int((label_data == 2).sum()) == (data == 2).sum()
    seen = []

    def one_volume(item: VolumeOutput) -> list[str]:
        seen.append(item.volume)
        return ["seen"]

    args = argparse.Namespace(inputs=[str(folder)], out=str(tmp_path), modality="MR")
    assert run_over_inputs("test", args, one_volume) == 0
    assert [v.modality for v in seen] == ["MR", "SEG"]  # the override leaves labels be
    np.testing.assert_array_equal(seen[1].data, data)


def test_seg_without_its_series_is_placed_by_its_frames(study, tmp_path):
    folder, scan, data = study
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "seg.dcm", alone / "seg.dcm")
    (labels,) = read(alone)
    assert labels.modality == "SEG"
    # Every labelled voxel lies, in patient mm, where the scan has that label.
    for value in (1, 2):
        index = np.argwhere(np.asarray(labels.data) == value)
        points = index @ labels.affine[:3, :3].T + labels.affine[:3, 3]
        back = np.round((points - scan.affine[:3, 3])
                        @ np.linalg.inv(scan.affine[:3, :3]).T).astype(int)
        assert len(index) == int((data == value).sum())
        assert (data[tuple(back.T)] == value).all()
