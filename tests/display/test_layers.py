"""Volumes become layer data on the exact world grid; layers go back to exact Volumes."""

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.display.layers import (
    GEOMETRY_KEY,
    layer_volume,
    oblique_message,
    volume_layer_data,
)
from napari_medattn.errors import DimensionError
from napari_medattn.io import Volume, read_volume, write_nifti
from napari_medattn.io.volume import RAS_TO_LPS, world_affine


def _ras_volume(tmp_path, modality="MR"):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine_ras = np.array([[-2.0, 0, 0, 10], [0, 3.0, 0, -20], [0, 0, 1.5, 30], [0, 0, 0, 1]])
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine_ras), path)
    return read_volume(path, modality=modality), data, affine_ras


def test_layer_data_places_every_voxel_at_its_patient_position(tmp_path):
    volume, data, affine_ras = _ras_volume(tmp_path)
    layer_data, kwargs, layer_type = volume_layer_data(volume)
    assert layer_type == "image"
    assert np.shares_memory(layer_data, volume.data)  # canonical view, no copy
    world = np.diag(list(kwargs["scale"]) + [1.0])
    world[:3, 3] = kwargs["translate"]
    # Every canonical index maps (via scale/translate) to the LPS point of the source voxel.
    lps = RAS_TO_LPS @ affine_ras
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        canonical_index = np.argwhere(layer_data == data[index])[0]
        zyx = (world @ np.append(canonical_index, 1))[:3]
        x, y, z = (lps @ np.append(index, 1))[:3]
        assert np.allclose(zyx, (z, y, x))
    assert kwargs["units"] == ("mm",) * 3 and kwargs["axis_labels"] == ("z", "y", "x")
    assert kwargs["contrast_limits"] == pytest.approx(
        tuple(np.percentile(data[data != 0], [0.5, 99.5])))
    geometry = kwargs["metadata"][GEOMETRY_KEY]
    assert np.array_equal(world_affine(geometry.affine), world)


def test_labels_round_trip_to_source_geometry(tmp_path):
    volume, data, affine_ras = _ras_volume(tmp_path)
    _, kwargs, _ = volume_layer_data(volume)
    labels = (volume_layer_data(volume)[0] > 60).astype(np.uint8)
    out = write_nifti(tmp_path / "labels.nii.gz",
                      layer_volume(labels, kwargs["metadata"], modality="SEG", name="seg"))
    written = nib.load(out)
    assert np.array_equal(written.affine, affine_ras)
    assert np.array_equal(np.asarray(written.dataobj), (data > 60).astype(np.uint8))


def test_four_d_frames_stay_in_front(tmp_path):
    data = np.zeros((3, 4, 5, 2), np.float32)
    data[..., 1] = 1.0
    volume = Volume(np.moveaxis(data, 3, 0), np.diag([1.0, 2.0, 3.0, 1.0]), "PT",
                    {"name": "pet", "frame_axis": "time"})
    _, kwargs, _ = volume_layer_data(volume)
    assert kwargs["scale"] == (1.0, 3.0, 2.0, 1.0)
    assert kwargs["axis_labels"] == ("time", "z", "y", "x")


def test_oblique_volume_message_and_exact_affine_kept():
    affine = np.eye(4)
    angle = np.deg2rad(10.0)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    volume = Volume(np.zeros((4, 4, 4), np.int16), affine, "MR", {"name": "tilted"})
    message = oblique_message(volume)
    assert message.startswith("tilted is oblique (up to 10.0 degrees")
    _, kwargs, _ = volume_layer_data(volume)
    kept = kwargs["metadata"][GEOMETRY_KEY]
    assert kept.is_oblique
    # The exact rotation survives (only the display grid is axis-aligned).
    assert np.array_equal(kept.affine, volume.canonical().affine)
    assert abs(kept.affine[0, 1]) == pytest.approx(np.sin(angle))
    assert kwargs["scale"] == pytest.approx((1.0, 1.0, 1.0))
    assert oblique_message(Volume(np.zeros((2, 2, 2)), np.eye(4))) is None


def test_labels_need_integers_and_layers_need_geometry():
    floats = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), "SEG", {"name": "p"})
    with pytest.raises(DimensionError, match="integer labels"):
        volume_layer_data(floats)
    with pytest.raises(DimensionError, match="no patient geometry"):
        layer_volume(np.zeros((2, 2, 2)), {})
