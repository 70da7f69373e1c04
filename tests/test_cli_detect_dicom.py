"""``medattn detect --format dicom-seg``: on a DICOM scan, a TID 1500 SR holding every box of
the CSV (edge lengths, score, centre on the nearest image), valid by dciodvfy; on a NIfTI
scan one sentence before the detector runs."""

import csv
import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path
from test_cli_detect import detector  # noqa: F401 (fixture: a tiny MedFormer detector)

from napari_medattn.cli import main
from napari_medattn.io import read_volume, write_dicom_series

ANATOMICAL = os.path.join(data_path, "anatomical.nii")


def test_detect_writes_an_sr_of_the_boxes(detector, tmp_path, capsys,  # noqa: F811
                                          dciodvfy):
    series = tmp_path / "series"
    write_dicom_series(series, read_volume(ANATOMICAL, modality="MR"),
                       series_description="T1", patient={"PatientName": "Detect^Test", "PatientID": "D1"})
    out = tmp_path / "out"
    assert main(["detect", str(series), "--out", str(out), "--model", str(detector),
                 "--threshold", "0", "--device", "cpu", "--autocast", "off",
                 "--format", "dicom-seg"]) == 0
    rows = list(csv.DictReader(open(next(out.glob("*_detections.csv")))))
    (sr_path,) = out.glob("*_detections_sr.dcm")
    assert not list(out.glob("*_detections_seg.dcm"))  # the detector's boxes carry no mask
    assert dciodvfy(sr_path)[0] == []
    report = hd.sr.srread(sr_path)
    assert report.PatientID == "D1"
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(rows) > 0
    headers = {h.SOPInstanceUID: h for h in (pydicom.dcmread(f, stop_before_pixels=True)
                                             for f in series.iterdir())}
    for group, row in zip(groups, rows):
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        sizes = sorted((float(row[f"size_{a}_mm"]) for a in "012"), reverse=True)
        assert [values["Major Axis"], values["Minor Axis"], values["Perpendicular Axis"]] \
            == pytest.approx(sizes, abs=1e-3)
        assert values["Score"] == pytest.approx(float(row["score"]), abs=1e-4)
        centre = np.array([float(row[f"centre_{a}_mm"]) for a in "xyz"])
        np.testing.assert_allclose(np.asarray(group.roi.graphic_data).ravel(), centre,
                                   atol=1e-3)
        # Placed on the image whose plane is nearest to the centre (closer than half a
        # slice: the series' slices are 2 mm apart).
        (image,) = group.roi.source_images_for_segmentation
        header = headers[image.referenced_sop_instance_uid]
        cosines = np.asarray(header.ImageOrientationPatient, float)
        normal = np.cross(cosines[:3], cosines[3:])
        assert abs((centre - np.asarray(header.ImagePositionPatient, float)) @ normal) <= 1.0
    assert "detections_sr.dcm" in capsys.readouterr().out


def test_dicom_seg_of_a_nifti_scan_is_one_sentence(detector, tmp_path, capsys):  # noqa: F811
    assert main(["detect", ANATOMICAL, "--out", str(tmp_path / "out"), "--model",
                 str(detector), "--format", "dicom-seg", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not come from a DICOM series" in err
    assert list((tmp_path / "out").iterdir()) == []
