"""Fixtures for the DICOM-SEG/SR/parametric-map tests: the dciodvfy validator and a
DICOM MR series written from a real scan in a non-canonical (sagittal) file order."""

import os
import shutil
import subprocess

import pytest
from nibabel.testing import data_path

from napari_medattn.io import read_volume
from napari_medattn.io.dicom_write import write_dicom_series


def dciodvfy_report(path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dicom3tools' dciodvfy reports for a DICOM file."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; CI installs it")
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True,
                         timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return ([line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning")])


@pytest.fixture
def dciodvfy():
    return dciodvfy_report


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory):
    """The nibabel test T1 written as a sagittal MR series (files in the NIfTI's i, j, k
    order, which is not napari's canonical order) and read back: (folder, Volume)."""
    folder = tmp_path_factory.mktemp("mr") / "series"
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    write_dicom_series(folder, t1, series_description="T1 sag", series_number=2,
                       patient={"PatientName": "Test^Anatomical", "PatientID": "NIB-T1",
                                "PatientBirthDate": "19700101", "PatientSex": "O",
                                "StudyID": "S1", "AccessionNumber": "A1",
                                "ReferringPhysicianName": ""})
    return folder, read_volume(folder)
