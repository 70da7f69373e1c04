"""The synthetic PET/CT samples are what sample_data/README.md says they are."""

import numpy as np

from napari_medattn._napari_hooks import SAMPLE_DIR
from napari_medattn.fusion.align import overlay_on_grid
from napari_medattn.io import read_volume


def test_synthetic_pet_ct_pair():
    ct = read_volume(SAMPLE_DIR / "synthetic_ct_head.nii.gz")
    pet = read_volume(SAMPLE_DIR / "synthetic_fdg_pet.nii.gz")
    assert (ct.modality, pet.modality, pet.meta["units"]) == ("CT", "PT", "SUV")
    np.testing.assert_allclose(ct.spacing, 1.0)
    np.testing.assert_allclose(pet.spacing, 3.0, atol=1e-6)
    # Its own grid, shifted by a fraction of a voxel from the CT's.
    np.testing.assert_allclose(pet.affine[:3, 3] - ct.affine[:3, 3], [1.1, -1.7, 0.9], atol=1e-4)
    hu = np.asarray(ct.data)
    for value in (-1000, 8, 28, 38, 40, 600):  # air, CSF, WM, GM, scalp, diploe
        assert np.count_nonzero(hu == value) > 1000, value
    # The 1.5 mm cortical tables (1400 HU) keep over 1000 HU after the 0.45 mm blur.
    assert np.count_nonzero(hu > 1000) > 100_000
    suv = np.asarray(pet.data)
    assert suv.min() >= 0 and 13.0 < suv.max() < 16.0  # the SUV 16 sphere after the blur
    # Grey matter takes up about three times what white matter does (SUV 9 vs 3 before blur).
    on_ct = np.asarray(overlay_on_grid(pet, ct).data)
    grey, white = np.median(on_ct[hu == 38]), np.median(on_ct[hu == 28])
    assert 5.0 < grey < 9.0 and 2.0 < white < 4.0 and grey > 1.8 * white
