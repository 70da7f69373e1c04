"""``medattn segment --format dicom-seg``: the label map as a DICOM-SEG on the source series,
equal to the library's labels, naming the model and its weights hash, with its TID 1500
SR of class volumes (counted from the labels) referencing the SEG's segments; both valid
by dciodvfy."""

import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path
from test_cli_models import folders  # noqa: F401 (fixture: empty built-in and user folders)
from test_cli_segment import models, reference_labels  # noqa: F401 (fixture, helper)

from napari_medattn.cli import main
from napari_medattn.io import read_volume, write_dicom_series
from napari_medattn.io.dicom.seg import read_seg
from napari_medattn.models import registry


def test_segment_writes_a_seg_on_the_dicom_series(models, tmp_path, capsys,  # noqa: F811
                                                   dciodvfy):
    _, _, model_dir = models
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    series = tmp_path / "series"
    write_dicom_series(series, t1, series_description="T1 sag", series_number=4,
                       patient={"PatientName": "Cli^Test", "PatientID": "C1"})
    out = tmp_path / "out"
    assert main(["segment", str(series), "--out", str(out), "--model", "tiny-unet",
                 "--device", "cpu", "--format", "dicom-seg"]) == 0
    (seg_path,) = out.glob("*_labels.dcm")
    assert not list(out.glob("*_labels.nii.gz"))
    scan = read_volume(series)
    labels = read_seg(seg_path, reference=scan)
    expected = reference_labels(series, model_dir).labels.data
    np.testing.assert_array_equal(labels.data, expected)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "tiny-unet"
    _, card = registry.load_model(model_dir)
    assert card.weights_sha256
    assert algorithm.AlgorithmParameters == f"weights_sha256={card.weights_sha256}"
    # The SR beside it: one volume group per class present, referencing its segment, with
    # the volume counted from the labels (voxels x voxel volume), and lesion groups.
    (sr_path,) = out.glob("*_measurements.dcm")
    for path in (seg_path, sr_path):
        assert dciodvfy(path)[0] == []
    report = hd.sr.srread(sr_path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    by_segment = {g.referenced_segment.referenced_segment_numbers[0]: g for g in groups
                  if g.referenced_segment is not None}
    voxel_ml = abs(np.linalg.det(scan.affine[:3, :3])) / 1000.0
    present = [int(v) for v in np.unique(expected) if v]
    assert sorted(by_segment) == present
    for label, group in by_segment.items():
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        (volume,) = group.get_measurements()
        assert volume.value == pytest.approx((expected == label).sum() * voxel_ml, rel=1e-6)
    lesions = [g for g in groups if g.referenced_segment is None]
    assert lesions and all(g.roi.graphic_type.value == "POINT" for g in lesions)
    assert sum(m.value for g in lesions for m in g.get_measurements()
               if m.name.meaning == "Volume") == pytest.approx((expected > 0).sum() * voxel_ml)
    assert report.PatientID == seg.PatientID == "C1"

def test_dicom_seg_of_a_nifti_input_is_one_sentence(models, tmp_path, capsys):  # noqa: F811
    code = main(["segment", os.path.join(data_path, "anatomical.nii"), "--out",
                 str(tmp_path / "out"), "--model", "tiny-unet", "--device", "cpu",
                 "--format", "dicom-seg"])
    assert code == 1
    err = capsys.readouterr().err
    assert "does not come from a DICOM series" in err and err.count("\n") == 1
    assert list((tmp_path / "out").iterdir()) == []  # refused before any work
