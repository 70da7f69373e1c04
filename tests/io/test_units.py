"""intensity_unit: the file's own unit wins, CT defaults to HU, MR has none; and what the
readers record for real files."""

import os

from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from napari_medattn.io import read_volume
from napari_medattn.io.units import intensity_unit


def test_intensity_units():
    assert intensity_unit("CT", {}) == "HU"
    assert intensity_unit("ct", {"units": None}) == "HU"
    assert intensity_unit("PT", {"units": "SUVbw"}) == "SUVbw"
    assert intensity_unit("MR", {}) == ""


def test_units_of_real_files():
    ct = read_volume(get_testdata_file("CT_small.dcm"))
    assert intensity_unit(ct.modality, ct.meta) == "HU"
    mr = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    assert intensity_unit(mr.modality, mr.meta) == ""
