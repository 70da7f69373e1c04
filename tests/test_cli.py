"""``medattn info``: printed geometry equals the library's, bad paths reported, exit codes."""

import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from napari_medattn.cli import main
from napari_medattn.io import Volume, read_volume, write_dicom_series
from napari_medattn.io.volume import RAS_TO_LPS

ANATOMICAL = os.path.join(data_path, "anatomical.nii")


def _printed_affines(text):
    """Every 4x4 block printed after an 'affine' line."""
    lines = text.splitlines()
    return [np.array([[float(v) for v in lines[i + 1 + r].split()] for r in range(4)])
            for i, line in enumerate(lines) if line.strip().startswith("affine")]


def _field(text, name):
    return re.findall(rf"^\s+{name}\s+(.+)$", text, flags=re.MULTILINE)


def test_info_nifti_prints_lps_affine(capsys):
    assert main(["info", ANATOMICAL]) == 0
    out = capsys.readouterr().out
    [affine] = _printed_affines(out)
    np.testing.assert_allclose(affine, RAS_TO_LPS @ nib.load(ANATOMICAL).affine, atol=1e-6)
    assert _field(out, "shape") == ["33 x 41 x 25"]
    assert _field(out, "orientation") == ["LAS"]
    assert _field(out, "spacing mm") == ["2 x 2 x 2"]
    assert _field(out, "modality") == ["OT"]


def test_info_dicom_folder_lists_every_series(tmp_path, capsys):
    t1 = read_volume(ANATOMICAL, modality="MR")
    write_dicom_series(tmp_path, t1, series_description="T1 sag", series_number=4)
    tilted = np.eye(4)
    tilted[:3, 0], tilted[:3, 1], tilted[:3, 2] = [0, 0.5, 2.0], [0, 0.8, 0], [0.7, 0, 0]
    write_dicom_series(tmp_path / "ct", Volume(np.zeros((5, 6, 7), np.int16), tilted, "CT", {}),
                       series_number=9)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[1] T1 sag MR #4" in out and "[2] CT #9" in out
    first, second = _printed_affines(out)
    np.testing.assert_allclose(first, t1.affine, atol=1e-6)
    np.testing.assert_allclose(second, tilted, atol=1e-6)
    assert _field(out, "units") == ["HU"]
    assert any("sheared" in w for w in _field(out, "warning:"))


def test_info_bad_path_reported_and_others_processed(tmp_path, capsys):
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rs.dcm")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    code = main(["info", str(tmp_path / "rs.dcm"), ANATOMICAL, str(broken),
                 str(tmp_path / "missing.nii")])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3
    assert "RTSTRUCT" in errors[0] and "broken.nii.gz" in errors[1] and "missing" in errors[2]
    assert "Traceback" not in captured.err
    assert len(_printed_affines(captured.out)) == 1


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "info" in capsys.readouterr().err


def test_console_script_subprocess(tmp_path):
    script = shutil.which("medattn", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.fail("the medattn console script is not installed in this environment")
    result = subprocess.run([script, "info", ANATOMICAL, str(tmp_path / "nope.nii")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "LAS" in result.stdout
    assert result.stderr.strip().count("\n") == 0 and "nope.nii does not exist" in result.stderr
