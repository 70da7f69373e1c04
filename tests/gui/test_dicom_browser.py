"""The DICOM browser against a real Orthanc: search, retrieve and open, send labels back as
a DICOM-SEG with its SR, find them and open the SEG onto the scan; faults as one sentence;
Save as DICOM-SEG, and a map layer as a Parametric Map. (The screenshot in the docs comes
from ``scripts/make_screenshots.py dicom_browser``.)"""

import importlib.util
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from napari.layers import Image, Labels
from nibabel.testing import data_path

from napari_medattn._napari_hooks import write_image_parametric_map, write_labels_dicom_seg
from napari_medattn.display.layers import GEOMETRY_KEY
from napari_medattn.io import read_volume, write_dicom_series
from napari_medattn.io.dicom.seg import read_seg
from napari_medattn.pacs import Connection, store
from napari_medattn.widgets.dicom_browser import DicomBrowserWidget
from napari_medattn.widgets.parts.layers import INSPECT_KEY, RUN_KEY

# The Orthanc fixture lives with the PACS tests; load it from there (one definition).
_spec = importlib.util.spec_from_file_location(
    "pacs_orthanc_fixture", Path(__file__).parents[1] / "pacs" / "conftest.py")
_orthanc_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_orthanc_module)
orthanc = _orthanc_module.orthanc

PATIENT = {"PatientName": "Browser^Test", "PatientID": "BR-1", "PatientBirthDate": "",
           "PatientSex": "O", "StudyID": "1", "AccessionNumber": "",
           "ReferringPhysicianName": ""}


@pytest.fixture
def browser(make_napari_viewer, orthanc, tmp_path, monkeypatch):
    url, user, password = orthanc
    monkeypatch.setenv("MEDATTN_CACHE_DIR", str(tmp_path / "cache"))
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    files = write_dicom_series(tmp_path / "t1", t1, series_description="T1 browser",
                               series_number=5, patient=PATIENT)
    store(Connection(url, username=user, password=password), files)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 900)
    widget = DicomBrowserWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right", name="DICOM browser")
    widget.url.setText(url)
    widget.auth.setCurrentText("basic")
    widget.user.setText(user)
    widget.secret.setText(password)
    return viewer, widget, read_volume(tmp_path / "t1")


def _finish(qtbot, widget):
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.finished, timeout=60_000)
    qtbot.wait(20)


def test_search_retrieve_open_send_seg_and_open_it_on_the_scan(browser, qtbot, tmp_path):
    viewer, widget, original = browser
    assert widget.verify.isChecked()
    widget.patient.setText("Browser*")
    widget.modality.setCurrentText("MR")
    widget.search()
    _finish(qtbot, widget)
    assert widget.table.rowCount() == 1
    assert widget.table.item(0, 4).text() == "T1 browser"
    assert not widget.run_button.isEnabled()
    widget.table.selectRow(0)
    assert widget.run_button.isEnabled()
    widget.run_button.click()
    _finish(qtbot, widget)
    (scan,) = [layer for layer in viewer.layers if isinstance(layer, Image)]
    geometry = scan.metadata[GEOMETRY_KEY]
    np.testing.assert_array_equal(np.asarray(scan.data), original.canonical().data)
    np.testing.assert_allclose(geometry.affine, original.canonical().affine)

    labels = (np.asarray(scan.data) > np.percentile(scan.data, 90)).astype(np.uint8)
    drawn = viewer.add_labels(labels, name="bright", scale=scan.scale,
                              translate=scan.translate, units=scan.units,
                              metadata={GEOMETRY_KEY: geometry})
    assert widget.labels.currentText() == "bright"
    widget.send()
    _finish(qtbot, widget)
    assert "Stored bright as DICOM-SEG with its measurement report" in widget.status.text()
    widget.modality.setCurrentText("SR")  # the report went with it
    widget.search()
    _finish(qtbot, widget)
    assert widget.table.rowCount() == 1 and widget.table.item(0, 2).text() == "SR"
    widget.modality.setCurrentText("SEG")
    widget.search()
    _finish(qtbot, widget)
    assert widget.table.rowCount() == 1
    widget.table.selectRow(0)
    widget.run_button.click()
    _finish(qtbot, widget)
    opened = [layer for layer in viewer.layers if isinstance(layer, Labels)
              and layer is not drawn]
    assert len(opened) == 1
    np.testing.assert_array_equal(np.asarray(opened[0].data), labels)
    np.testing.assert_allclose(opened[0].scale, scan.scale)
    np.testing.assert_allclose(opened[0].translate, scan.translate)
    viewer.layers.selection.active = scan
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.shape[0] > 500


def test_wrong_password_and_server_down_are_one_sentence(browser, qtbot):
    _, widget, _ = browser
    widget.secret.setText("wrong")
    widget.search()
    _finish(qtbot, widget)
    assert widget.job.outcome == "failed"
    assert widget.table.rowCount() == 0
    widget.url.setText("http://127.0.0.1:9/dicom-web")
    widget.search()
    _finish(qtbot, widget)
    assert widget.job.outcome == "failed"


def test_save_labels_as_dicom_seg_through_the_writer_hook(tmp_path):
    folder = tmp_path / "series"
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    write_dicom_series(folder, t1, series_description="T1", series_number=2, patient=PATIENT)
    canonical = read_volume(folder).canonical()
    labels = np.zeros(canonical.spatial_shape, np.uint8)
    labels[5:9, 10:20, 10:14] = 2
    meta = {"name": "lesions", "metadata": {GEOMETRY_KEY: canonical},
            "features": {"class": ["background", "oedema", "tumour"]}}
    (written,) = write_labels_dicom_seg(str(tmp_path / "out.dcm"), labels, meta)
    back = read_seg(written, reference=canonical)
    np.testing.assert_array_equal(back.data, labels)
    assert [c[0] for c in back.meta["classes"]] == ["background", "oedema", "tumour"]
    with pytest.warns(UserWarning, match="does not come from a DICOM series"):
        assert write_labels_dicom_seg(str(tmp_path / "x.dcm"), labels,
                                      {"metadata": {GEOMETRY_KEY: t1.canonical()}}) == []


def test_opening_a_seg_places_it_on_the_open_scan_it_references(make_napari_viewer,
                                                                  tmp_path, add_layer):
    from napari_medattn._napari_hooks import read_layers

    viewer = make_napari_viewer()
    folder = tmp_path / "series"
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    write_dicom_series(folder, t1, series_description="T1", series_number=2, patient=PATIENT)
    (scan_data,) = read_layers(str(folder))
    scan = add_layer(viewer, scan_data)
    geometry = scan.metadata[GEOMETRY_KEY]
    labels = np.zeros(geometry.spatial_shape, np.uint8)
    labels[3:6, 8:12, 9:11] = 1  # within a few slices: the SEG's own grid is smaller
    drawn = write_labels_dicom_seg(str(tmp_path / "seg.dcm"), labels,
                                   {"metadata": {GEOMETRY_KEY: geometry}})[0]
    ((data, kwargs, kind),) = read_layers(drawn)
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)  # the scan's whole grid, not the SEG's
    np.testing.assert_allclose(kwargs["scale"], scan.scale)
    np.testing.assert_allclose(kwargs["translate"], scan.translate)
    viewer.layers.remove(scan)
    ((alone, alone_kwargs, _),) = read_layers(drawn)  # no scan open: its own frames
    assert alone.shape != labels.shape and int(alone.sum()) == int(labels.sum())
    np.testing.assert_allclose(alone_kwargs["scale"], scan.scale)


def test_save_a_map_layer_as_a_parametric_map_through_the_writer_hook(tmp_path, dciodvfy):
    folder = tmp_path / "series"
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    write_dicom_series(folder, t1, series_description="T1", series_number=2, patient=PATIENT)
    canonical = read_volume(folder).canonical()
    values = np.random.default_rng(0).random(canonical.spatial_shape).astype(np.float32)
    for tag, label in (({RUN_KEY: {"output": "probability 1"}}, "PROB"),
                       ({RUN_KEY: {"output": "uncertainty"}}, "UNC"),
                       ({INSPECT_KEY: {"output": "gradcam decoder.0"}}, "EXPL")):
        path = tmp_path / f"{label}.dcm"
        meta = {"name": "map", "metadata": {GEOMETRY_KEY: canonical, **tag}}
        assert write_image_parametric_map(str(path), values, meta) == [str(path)]
        pmap = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
        mapping = pmap.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.LUTLabel == label
    assert dciodvfy(path)[0] == []
    # Every voxel, placed by the map's own frame positions, holds the layer's value there.
    placed = pmap.get_volume()
    mm = np.indices(placed.array.shape).reshape(3, -1).T @ placed.affine[:3, :3].T \
        + placed.affine[:3, 3]
    index = np.round((mm - canonical.affine[:3, 3])
                     @ np.linalg.inv(canonical.affine[:3, :3]).T).astype(int)
    np.testing.assert_allclose(placed.array.ravel(), values[tuple(index.T)], atol=1e-6)
    with pytest.warns(UserWarning, match="not a map computed by napari-medattn"):
        assert write_image_parametric_map(str(tmp_path / "scan.dcm"), values,
                                          {"metadata": {GEOMETRY_KEY: canonical}}) == []
    with pytest.warns(UserWarning, match="does not come from a DICOM series"):
        assert write_image_parametric_map(
            str(tmp_path / "x.dcm"), values,
            {"metadata": {GEOMETRY_KEY: t1.canonical(),
                          RUN_KEY: {"output": "attention a"}}}) == []
    assert not (tmp_path / "scan.dcm").exists() and not (tmp_path / "x.dcm").exists()
