from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.io import read_volume

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"
FIXED = SAMPLES / "nibabel_anatomical.nii.gz"
MOVED = SAMPLES / "nibabel_anatomical_moved.nii.gz"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def nibabel_pair(nibabel_truth):
    """nibabel's anatomical.nii and its rigidly moved copy, with the true transform.

    nibabel's make_moved_anat.py gives the copy the affine ``T @ A`` (RAS, T =
    from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5])) and the same voxels, so the point
    at RAS x in the original shows at T x in the copy: fixed -> moving is T, in LPS
    ``F T F``. The truth is read off the two files' affines here and checked against
    the published recipe."""
    from nibabel.eulerangles import euler2mat

    fixed, moved = read_volume(FIXED), read_volume(MOVED)
    truth_ras = nib.load(MOVED).affine @ np.linalg.inv(nib.load(FIXED).affine)
    recipe = np.eye(4)
    recipe[:3, :3] = euler2mat(0.1, 0.2, 0.3)
    recipe[:3, 3] = [3, 4, 5]
    assert np.allclose(truth_ras, recipe, atol=1e-5)
    assert np.allclose(nibabel_truth.matrix, RAS_TO_LPS @ truth_ras @ RAS_TO_LPS, atol=1e-5)
    return fixed, moved, nibabel_truth
