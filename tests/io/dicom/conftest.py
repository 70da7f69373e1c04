"""Fixtures for the DICOM-SEG/SR/parametric-map tests: a DICOM MR series written from a
real scan in a non-canonical (sagittal) file order (the dciodvfy validator is in
tests/conftest.py, for the CLI tests too)."""

import os

import pytest
from nibabel.testing import data_path

from napari_medattn.io import read_volume
from napari_medattn.io.dicom.write import write_dicom_series


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
