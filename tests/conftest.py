"""Fixtures any test folder may use."""

import shutil
import subprocess

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: on the 2-core shared test machine, OpenMP teams of
    two spin against the other jobs and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def nibabel_truth():
    """The transform fixed -> moving (LPS mm) between nibabel's ``anatomical.nii`` and its
    moved copy (both in the package's sample data): the copy has the original's voxels, so
    it is ``A_moved inv(A_fixed)``; tests/registration checks it against nibabel's recipe."""
    from pathlib import Path

    import numpy as np

    from napari_medattn.io import read_volume
    from napari_medattn.registration import LinearTransform

    samples = Path(__file__).parents[1] / "src" / "napari_medattn" / "sample_data"
    fixed = read_volume(samples / "nibabel_anatomical.nii.gz")
    moved = read_volume(samples / "nibabel_anatomical_moved.nii.gz")
    return LinearTransform(moved.affine @ np.linalg.inv(fixed.affine), "rigid")


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
