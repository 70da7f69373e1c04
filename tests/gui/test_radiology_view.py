"""Patient-mm status text, labels inheriting geometry, and leaving other data alone."""

import numpy as np

from napari_medattn.display.layers import GEOMETRY_KEY, volume_layer_data
from napari_medattn.io import Volume
from napari_medattn.widgets.radiology_view import install_radiology_view


def _ct(viewer):
    hu = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14) - 500
    # LPS array axes (x, y, z): 1 mm x, 2 mm y, 3 mm z, origin at (-20, -30, 10) mm.
    affine = np.array([[1.0, 0, 0, -20], [0, 2.0, 0, -30], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    volume = Volume(hu, affine, "CT", {"name": "ct", "units": "HU"})
    data, kwargs, layer_type = volume_layer_data(volume)
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs), hu


def test_status_shows_patient_mm_with_sides_and_hounsfield(make_napari_viewer):
    viewer = make_napari_viewer()
    install_radiology_view(viewer)
    layer, hu = _ct(viewer)
    # Voxel (x=5, y=4, z=2) sits at LPS (-15, -22, 16): right, anterior, superior.
    viewer.dims.set_point(0, 16.0)  # napari reads values on the displayed slice
    status = layer.get_status((16.0, -22.0, -15.0), world=True)
    assert status["coordinates"] == f"R 15.0  A 22.0  S 16.0 mm: {hu[5, 4, 2]} HU"


def test_new_labels_on_the_scan_grid_inherit_its_geometry(make_napari_viewer):
    viewer = make_napari_viewer()
    install_radiology_view(viewer)
    layer, _ = _ct(viewer)
    same = viewer.add_labels(np.zeros(layer.data.shape, np.uint8), scale=layer.scale,
                             translate=layer.translate)
    other = viewer.add_labels(np.zeros(layer.data.shape, np.uint8))  # pixel grid
    assert same.metadata[GEOMETRY_KEY] is layer.metadata[GEOMETRY_KEY]
    assert GEOMETRY_KEY not in other.metadata


def test_plain_napari_data_keeps_napari_defaults(make_napari_viewer):
    viewer = make_napari_viewer()
    view = install_radiology_view(viewer)
    viewer.add_image(np.zeros((5, 6, 7)))
    viewer.dims.order = (1, 0, 2)
    assert tuple(viewer.scene.camera.orientation) == ("towards", "down", "right")
    assert viewer.dims.order == (1, 0, 2)
    assert view.letters() == {}
