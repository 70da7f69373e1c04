"""Register -> Fuse in a real viewer: the Register widget's result, stored on the moving
layer (``TRANSFORM_KEY``), is offered as the overlay's transform when the base is its
fixed layer, and the overlay lands where that transform puts it (checked against the PET
sampled at the transformed points with scipy, not through our resampler)."""

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_medattn._napari_hooks import sample_synthetic_pet_ct
from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.registration.transforms import LinearTransform
from napari_medattn.widgets.fuse import FUSE_KEY, FuseWidget
from napari_medattn.widgets.parts.layers import TRANSFORM_KEY

HOT_SPOT = np.array([-28.0, -20.0, 30.0])  # LPS mm: the synthetic PET's lesion


def test_transform_from_register_is_applied(make_napari_viewer, qtbot, add_layer):
    viewer = make_napari_viewer(show=True)
    for layer_data in sample_synthetic_pet_ct():
        add_layer(viewer, layer_data)
    widget = FuseWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.base.setCurrentText("synthetic_ct_head")
    widget.overlay.setCurrentText("synthetic_fdg_pet")
    ct_layer, pet_layer = viewer.layers["synthetic_ct_head"], viewer.layers["synthetic_fdg_pet"]
    assert widget.transform_label.text() == "none"

    # Fixed (CT) mm -> moving (PET) mm: a turn of 12 degrees about the hot spot plus a
    # shift, so the hot spot shows at HOT_SPOT - R^T shift in the CT's space.
    rotation = Rotation.from_euler("z", 12, degrees=True).as_matrix()
    shift = np.array([6.0, -4.0, 8.0])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = HOT_SPOT - rotation @ HOT_SPOT + shift
    record = {"fixed": "another layer", "transform": LinearTransform(matrix, "rigid"),
              "method": "rigid"}
    pet_layer.metadata[TRANSFORM_KEY] = record
    widget.overlay.currentTextChanged.emit(widget.overlay.currentText())
    assert widget.transform_label.text() == "none"  # registered to another fixed scan
    record["fixed"] = ct_layer.unique_id
    widget.base.currentTextChanged.emit(widget.base.currentText())
    assert widget.transform_label.text() == "from Register (rigid)"

    job = widget.run()
    assert job is not None and "seen through the transform" in widget.status.text()
    qtbot.waitUntil(lambda: not job.running, timeout=60000)
    shown = widget.current()
    assert shown.metadata[FUSE_KEY] == {"overlay": "synthetic_fdg_pet", "role": "resampled"}
    fused = shown.metadata[GEOMETRY_KEY]
    ct, pet = ct_layer.metadata[GEOMETRY_KEY], pet_layer.metadata[GEOMETRY_KEY]
    np.testing.assert_allclose(fused.affine, ct.affine)

    # Values at base points = the PET at the transformed points (scipy, trilinear).
    rng = np.random.default_rng(0)
    index = rng.integers(0, fused.spatial_shape, size=(400, 3))
    index = np.vstack([index, np.round(np.linalg.solve(
        ct.affine, [*(HOT_SPOT - rotation.T @ shift), 1.0])[:3]).astype(int)])
    points = index @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    pet_index = (moved - pet.affine[:3, 3]) @ np.linalg.inv(pet.affine[:3, :3]).T
    inside = np.all((pet_index >= 0) & (pet_index <= np.array(pet.spatial_shape) - 1), 1)
    expected = ndimage.map_coordinates(np.asarray(pet.data, np.float64), pet_index.T, order=1)
    got = np.asarray(fused.data)[tuple(index.T)]
    assert inside.sum() > 200
    np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-5, atol=1e-4)
    # The hot spot sits where the transform puts it: the last point, near the maximum.
    assert got[-1] > 0.8 * float(np.asarray(fused.data).max())

    # A transform opened from a file still comes first.
    widget.transform, widget.transform_name = LinearTransform(np.eye(4), "rigid"), "t.tfm"
    assert widget.run() is None and widget.transform_label.text() == "t.tfm"
