"""npe2 reader, writers, sample data and error notifications in a real viewer."""

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from npe2 import PluginManager
from pydicom.data import get_testdata_file

from napari_medattn._napari_hooks import get_reader, read_layers
from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.io import Volume, read, read_volume
from napari_medattn.io.dicom.write import write_dicom_series

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"


@pytest.fixture
def notes():
    """Collect (severity, message) of every napari notification during the test."""
    seen = []

    def record(notification):
        seen.append((notification.severity, str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def test_reader_claims_nifti_and_dicom_only(tmp_path):
    bare = tmp_path / "IM0001"  # DICOM files often have no extension
    shutil.copy(get_testdata_file("CT_small.dcm"), bare)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    for path in [SAMPLES / "mni152_t1.nii.gz", SAMPLES / "mr_series", bare,
                 get_testdata_file("DICOMDIR"), SAMPLES / "CT_small.dcm"]:
        assert get_reader(str(path)) is read_layers, path
    assert get_reader(str(text)) is None
    assert get_reader([str(bare), str(text)]) is None


def test_every_manifest_sample_exists_and_loads_small_ones(make_napari_viewer):
    viewer = make_napari_viewer()  # discovers the installed plugins
    manifest = PluginManager.instance().get_manifest("napari-medattn")
    keys = {sample.key for sample in manifest.contributions.sample_data}
    assert keys == {"mni152_t1", "mni152_tissue", "nibabel_anatomical",
                    "nibabel_anatomical_moved", "dipy_aniso_vox", "ct_small", "mr_series",
                    "synthetic_ct_head", "synthetic_fdg_pet", "synthetic_pet_ct"}
    for key, name, modality in [("nibabel_anatomical", "nibabel_anatomical", "MR"),
                                ("ct_small", "CT #1", "CT"),
                                ("mr_series", "T1 MNI152 axial MR #1", "MR")]:
        layers = viewer.open_sample("napari-medattn", key)
        assert [layer.name for layer in layers] == [name]
        assert layers[0].metadata[GEOMETRY_KEY].modality == modality
    # The CT opens in a soft-tissue window (HU), the MR in percentile limits.
    assert tuple(viewer.layers["CT #1"].contrast_limits) == (-135.0, 215.0)
    # The synthetic PET/CT pair opens as two layers, the PET in SUV.
    ct, pet = viewer.open_sample("napari-medattn", "synthetic_pet_ct")
    assert (ct.metadata[GEOMETRY_KEY].modality, pet.metadata[GEOMETRY_KEY].modality) == ("CT", "PT")
    assert pet.metadata[GEOMETRY_KEY].meta["units"] == "SUV"


def test_folder_with_two_series_gives_one_named_layer_each(make_napari_viewer, tmp_path):
    anatomy = read_volume(SAMPLES / "nibabel_anatomical.nii.gz").canonical()
    data = np.ascontiguousarray(anatomy.data)
    study = "1.2.826.0.1.3680043.8.498.1"
    write_dicom_series(tmp_path, Volume(data, anatomy.affine, "MR"), study_uid=study,
                       series_description="T1 axial", series_number=3,
                       file_names=[f"a{i:03d}.dcm" for i in range(data.shape[0])])
    write_dicom_series(tmp_path, Volume(data - 1000, anatomy.affine, "CT"), study_uid=study,
                       series_description="CT body", series_number=4,
                       rescale_intercept=-1024,
                       file_names=[f"b{i:03d}.dcm" for i in range(data.shape[0])])
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path), plugin="napari-medattn")
    expected = {volume.name: volume for volume in read(tmp_path)}
    assert len(layers) == 2 and {layer.name for layer in layers} == set(expected)
    for layer in layers:
        assert np.array_equal(layer.data, expected[layer.name].canonical().data)
    ct = next(layer for layer in layers if layer.metadata[GEOMETRY_KEY].modality == "CT")
    assert np.array_equal(ct.data, data - 1000)


def test_labels_drawn_on_a_scan_save_with_its_exact_affine(make_napari_viewer, tmp_path):
    source = tmp_path / "moved.nii.gz"
    shutil.copy(SAMPLES / "nibabel_anatomical_moved.nii.gz", source)  # oblique + LAS
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(source), plugin="napari-medattn")
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), scale=image.scale,
                               translate=image.translate)
    labels.data[10:14, 5:9, 7:9] = 2
    out = tmp_path / "labels.nii.gz"
    assert labels.save(str(out), plugin="napari-medattn") == [str(out)]
    written, original = nib.load(out), nib.load(source)
    assert np.array_equal(written.affine, original.affine)
    assert written.shape == original.shape
    back = read_volume(out)
    assert np.array_equal(back.affine, read_volume(source).affine)
    assert np.array_equal(back.canonical().data, labels.data)


def test_image_layer_saves_bit_for_bit_and_never_over_its_source(make_napari_viewer,
                                                                 tmp_path):
    source = tmp_path / "anat.nii.gz"
    shutil.copy(SAMPLES / "nibabel_anatomical.nii.gz", source)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(source), plugin="napari-medattn")
    out = tmp_path / "copy.nii.gz"
    assert image.save(str(out), plugin="napari-medattn") == [str(out)]
    written, original = nib.load(out), nib.load(source)
    assert np.array_equal(written.affine, original.affine)
    assert np.array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    before = source.read_bytes()
    with pytest.warns(UserWarning):
        assert image.save(str(source), plugin="napari-medattn") == []
    assert source.read_bytes() == before


def test_writer_refuses_layers_without_geometry(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((4, 5, 6), np.uint8))
    with pytest.warns(UserWarning, match="no patient geometry"):
        assert labels.save(str(tmp_path / "x.nii.gz"), plugin="napari-medattn") == []
    assert not (tmp_path / "x.nii.gz").exists()


def test_corrupt_file_gives_one_error_sentence(make_napari_viewer, tmp_path, notes):
    raw = gzip.decompress((SAMPLES / "nibabel_anatomical.nii.gz").read_bytes())
    broken = tmp_path / "broken.nii"
    broken.write_bytes(raw[: len(raw) // 2])  # truncated voxel data
    viewer = make_napari_viewer()
    assert viewer.open(str(broken), plugin="napari-medattn") == []
    assert len(viewer.layers) == 0
    errors = [message for severity, message in notes
              if severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and "broken.nii" in errors[0]
    assert "\n" not in errors[0] and "Traceback" not in errors[0]


def _five_d(folder):
    path = folder / "5d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4)), path)
    return path


def _no_pixels(folder):
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del dataset.PixelData
    path = folder / "nopix.dcm"
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("make, words", [
    (_five_d, "5 dimensions"),
    (lambda folder: get_testdata_file("test-SR.dcm"), "no images"),
    (_no_pixels, "without pixel data"),
])
def test_bad_input_is_one_sentence_never_a_layer(make_napari_viewer, tmp_path, notes,
                                                 make, words):
    viewer = make_napari_viewer()
    assert viewer.open(str(make(tmp_path)), plugin="napari-medattn") == []
    errors = [message for severity, message in notes
              if severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0]


def test_nan_voxels_open_with_one_warning(make_napari_viewer, tmp_path, notes):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-medattn")
    warnings = [message for severity, message in notes
                if severity == NotificationSeverity.WARNING]
    assert len(warnings) == 1 and "NaN" in warnings[0]
    assert np.isfinite(layer.contrast_limits).all()


def test_oblique_scan_one_notice_and_exact_affine(make_napari_viewer, notes):
    path = SAMPLES / "nibabel_anatomical_moved.nii.gz"
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-medattn")
    warnings = [message for severity, message in notes
                if severity == NotificationSeverity.WARNING]
    assert len(warnings) == 1 and "oblique" in warnings[0]
    kept = layer.metadata[GEOMETRY_KEY]
    assert np.array_equal(kept.affine, read_volume(path).canonical().affine)
    assert kept.is_oblique
