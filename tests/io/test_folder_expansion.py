"""Folder expansion: a folder of NIfTI files and DICOM series opens as the same volumes in
napari's reader and in the ``medattn`` batch loop; hidden files, earlier outputs and a
broken file are handled the same way."""

import argparse
import os
import shutil

import numpy as np
import pytest
from nibabel.testing import data_path

from napari_medattn._napari_hooks import read_layers
from napari_medattn.cli.common import VolumeOutput, run_over_inputs
from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.errors import ReadError
from napari_medattn.io import read, read_volume, write_dicom_series
from napari_medattn.io.folders import DICOM, NIFTI, expand

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25, 2 mm, LAS


@pytest.fixture
def study(tmp_path):
    """A folder with two NIfTI files (one in a subfolder), two DICOM series and a hidden
    half-written file (the atomic writer's temporaries look like that)."""
    folder = tmp_path / "study"
    (folder / "nifti" / "deeper").mkdir(parents=True)
    shutil.copy(ANATOMICAL, folder / "nifti" / "a.nii")
    shutil.copy(ANATOMICAL, folder / "nifti" / "deeper" / "b.nii")
    (folder / "nifti" / ".c.nii.gz.x1y2.nii.gz").write_bytes(b"half-written")
    head = read_volume(ANATOMICAL, modality="MR")
    write_dicom_series(folder / "dicom" / "s4", head, series_description="T1",
                       series_number=4)
    part = type(head)(np.ascontiguousarray(head.data[:, :, :12]), head.affine, "MR", {})
    write_dicom_series(folder / "dicom" / "s7", part, series_description="T1 part",
                       series_number=7)
    return folder


def _cli_volumes(paths, out):
    """The volumes the ``medattn`` batch loop hands a subcommand for ``paths``."""
    seen = []

    def one_volume(item: VolumeOutput) -> list[str]:
        seen.append(item.volume)
        return ["seen"]

    args = argparse.Namespace(inputs=[str(p) for p in paths], out=str(out), modality=None)
    assert run_over_inputs("test", args, one_volume) == 0
    return seen


def test_a_folder_opens_the_same_in_napari_and_on_the_command_line(study, tmp_path):
    layers = read_layers(str(study))
    volumes = _cli_volumes([study], tmp_path / "out")
    expected = ["a", "b", "T1 MR #4", "T1 part MR #7"]
    assert [kwargs["name"] for _, kwargs, _ in layers] == expected
    assert [v.name for v in volumes] == expected
    for (data, kwargs, kind), volume in zip(layers, volumes):
        assert kind == "image"
        geometry = kwargs["metadata"][GEOMETRY_KEY]
        np.testing.assert_array_equal(np.asarray(data), np.asarray(volume.canonical().data))
        np.testing.assert_array_equal(geometry.affine, volume.canonical().affine)
    # The NIfTI files are the very files, the DICOM series the written scan.
    np.testing.assert_array_equal(volumes[0].data, read_volume(ANATOMICAL).data)
    assert volumes[2].spatial_shape == (33, 41, 25) and volumes[3].spatial_shape == (33, 41, 12)


def test_expand_lists_files_and_the_dicom_series_once(study):
    jobs = expand([study, study / "nifti" / "a.nii"])
    assert [(j.path.relative_to(study).as_posix(), j.kind) for j in jobs] == [
        ("nifti/a.nii", NIFTI), ("nifti/deeper/b.nii", NIFTI), (".", DICOM),
        ("nifti/a.nii", NIFTI)]
    assert len(jobs[2].files) == 33 + 33  # one file per slice of each series
    assert all(j.error is None for j in jobs)
    [missing] = expand([study / "nope"])
    assert isinstance(missing.error, ReadError)


def test_earlier_outputs_are_skipped_on_the_command_line_only(study, tmp_path):
    inputs = study / "nifti"
    results = inputs / "results"  # --out inside the input folder
    assert [v.name for v in _cli_volumes([inputs], results)] == ["a", "b"]
    # An earlier run's output, listed by its record, and a file the user put there.
    shutil.copy(ANATOMICAL, results / "a_image.nii")
    (results / "a_provenance.json").write_text('{"outputs": {"image": "a_image.nii"}}')
    shutil.copy(ANATOMICAL, results / "user.nii")
    assert [v.name for v in _cli_volumes([inputs], results)] == ["a", "b", "user"]
    assert [v.name for v in read(inputs)] == ["a", "b", "a_image", "user"]


def test_a_broken_file_in_a_folder_is_a_warning_and_the_others_open(study):
    (study / "nifti" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    volumes = read(study)
    assert [v.name for v in volumes] == ["a", "b", "T1 MR #4", "T1 part MR #7"]
    [note] = [w for w in volumes[0].meta["warnings"] if w.startswith("Not loaded")]
    assert note.startswith("Not loaded: broken.nii.gz: broken.nii.gz is not a readable NIfTI")
    (study / "lonely").mkdir()
    (study / "lonely" / "broken.nii.gz").write_bytes(b"nope")
    with pytest.raises(ReadError, match="not a readable NIfTI"):
        read(study / "lonely")
    (study / "empty").mkdir()
    with pytest.raises(ReadError, match="holds no NIfTI or DICOM files"):
        read(study / "empty")
