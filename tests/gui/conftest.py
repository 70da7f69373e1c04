"""Shared helpers for GUI tests: scans with a marker at a known patient position."""

import nibabel as nib
import numpy as np
import pytest

#: Half-width (voxels = mm) of the cubic test scan centred on the patient origin.
HALF = 15
#: Marker centre in RAS mm: patient left (-x), anterior (+y), superior (+z) of the centre.
MARKER_RAS = (-6, 6, 6)
BACKGROUND, MARKER = 100, 1000


def marker_image_ras() -> nib.Nifti1Image:
    """A 31^3 1 mm RAS scan, value 100, with a 5 mm bright cube at MARKER_RAS."""
    n = 2 * HALF + 1
    data = np.full((n, n, n), BACKGROUND, np.int16)
    i, j, k = (c + HALF for c in MARKER_RAS)
    data[i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = MARKER
    affine = np.eye(4)
    affine[:3, 3] = -HALF
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"MR marker phantom"
    return image


def reoriented(image: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same patient content stored with array axes towards ``codes`` (e.g. 'LPS')."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(codes))
    return image.as_reoriented(transform)


@pytest.fixture
def marker_file(tmp_path):
    """Write the marker scan with the given array orientation code; return its path."""
    def write(codes: str):
        image = reoriented(marker_image_ras(), codes)
        assert "".join(nib.aff2axcodes(image.affine)) == codes
        path = tmp_path / f"marker_{codes}.nii.gz"
        nib.save(image, path)
        return path
    return write


@pytest.fixture
def marker_world():
    """The marker centre in napari world (z, y, x) LPS mm: superior +z, anterior -y, left +x."""
    return (MARKER_RAS[2], -MARKER_RAS[1], -MARKER_RAS[0])


def add_layer(viewer, layer_data):
    """Add one ``(data, kwargs, layer_type)`` tuple through napari's public ``add_*``."""
    data, kwargs, layer_type = layer_data
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


@pytest.fixture(name="add_layer")
def add_layer_fixture():
    """:func:`add_layer`, for test modules (conftest modules cannot be imported by name
    when several test folders have one)."""
    return add_layer
