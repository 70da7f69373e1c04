"""``medattn explain``: maps on the source grid equal to the library's, the provenance
record, bad inputs reported while the others run, methods that do not apply refused;
``--format dicom``: Parametric Maps (dciodvfy-valid) and derived series with the same values."""

import json
import os

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path
from test_cli_models import folders  # noqa: F401 (fixture: empty built-in and user folders)
from test_cli_segment import save_tiny, validate_provenance

from napari_medattn.cli import main
from napari_medattn.cli.explain import METHOD_NAMES
from napari_medattn.explain import METHODS, explain
from napari_medattn.io import read, read_volume, write_dicom_series
from napari_medattn.models import registry

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25, 2 mm, LAS


@pytest.fixture
def gated(folders):
    """One user model: the tiny 3-class U-Net of the segment tests, with attention gates."""
    _, user = folders
    return save_tiny(user / "tiny", name="tiny-gate", attention="gate")


def test_maps_are_written_on_the_source_grid_with_provenance(gated, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", ANATOMICAL, "--out", str(out), "--model", "tiny-gate",
                 "--device", "cpu", "--class", "bright", "--method", "gradcam", "gate"])
    assert code == 0, capsys.readouterr().err
    source = read_volume(ANATOMICAL)
    module, card = registry.load_model(gated)
    expected = explain(source, module, card, "gradcam", target_class=2, device="cpu")[0]
    [written] = read(out / "anatomical_gradcam_decoder.0_bright.nii.gz")
    assert written.spatial_shape == source.spatial_shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    header = nib.load(out / "anatomical_gradcam_decoder.0_bright.nii.gz").header
    np.testing.assert_allclose(header.get_best_affine(),
                               nib.load(ANATOMICAL).header.get_best_affine(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(written.data), expected.volume.data, atol=1e-6)
    assert (out / "anatomical_gate_decoder.0.gate.nii.gz").exists()
    record = json.loads((out / "anatomical_provenance.json").read_text())
    validate_provenance(record)
    assert record["command"] == "explain" and record["device"] == "cpu"
    assert record["model"]["name"] == "tiny-gate"
    assert record["model"]["weights_sha256"] == card.weights_sha256
    maps = record["details"]["maps"]
    assert [(m["method"], m["layer"], m["target"]) for m in maps] == [
        ("gradcam", "decoder.0", 2), ("gate", "decoder.0.gate", None)]
    assert record["inputs"][0]["shape"] == [33, 41, 25]
    assert sorted(record["outputs"].values()) == sorted(m["file"] for m in maps)


def test_faithfulness_numbers_go_into_the_provenance(gated, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", ANATOMICAL, "--out", str(out), "--model", "tiny-gate",
                 "--device", "cpu", "--method", "occlusion", "--faithfulness"]) == 0
    [entry] = json.loads((out / "anatomical_provenance.json").read_text())["details"]["maps"]
    assert entry["layer"] is None and entry["target"] == 1
    assert set(entry["faithfulness"]) == {"deletion_auc", "insertion_auc", "stability",
                                          "telling", "reason"}


def test_a_bad_input_is_one_sentence_and_the_others_still_run(gated, tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    code = main(["explain", str(broken), ANATOMICAL, "--out", str(out), "--model",
                 "tiny-gate", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    [line] = captured.err.strip().splitlines()
    assert line.startswith("medattn explain: ") and "Traceback" not in captured.err
    assert (out / "anatomical_gradcam_decoder.0_dark.nii.gz").exists()


def test_a_method_the_model_lacks_is_refused_before_any_work(folders, tmp_path, capsys):
    _, user = folders
    save_tiny(user / "plain", name="tiny-plain")
    out = tmp_path / "out"
    code = main(["explain", ANATOMICAL, "--out", str(out), "--model", "tiny-plain",
                 "--method", "gate"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == ("medattn: gate does not apply to tiny-plain, which has no attention "
                           "gates; methods that apply: gradcam, gradcam++, hirescam, layercam, "
                           "occlusion.")
    assert not out.exists()


def test_the_cli_offers_exactly_the_library_methods():
    assert METHOD_NAMES == METHODS


def test_region_restricts_the_target_and_a_mismatched_one_is_refused(gated, tmp_path, capsys):
    source = nib.load(ANATOMICAL)
    mask = np.zeros(source.shape, np.uint8)
    mask[10:20, 15:25, 8:16] = 3
    region_file = tmp_path / "region.nii.gz"
    nib.save(nib.Nifti1Image(mask, source.affine, source.header), region_file)
    out = tmp_path / "out"
    assert main(["explain", ANATOMICAL, "--out", str(out), "--model", "tiny-gate",
                 "--device", "cpu", "--method", "hirescam", "--region", str(region_file)]) == 0
    module, card = registry.load_model(gated)
    volume = read_volume(ANATOMICAL)
    expected = explain(volume, module, card, "hirescam", region=mask != 0, device="cpu")[0]
    whole = explain(volume, module, card, "hirescam", device="cpu")[0]
    [written] = read(out / "anatomical_hirescam_decoder.0_dark.nii.gz")
    np.testing.assert_allclose(np.asarray(written.data), expected.volume.data, atol=1e-6)
    assert not np.allclose(expected.volume.data, whole.volume.data, atol=1e-3)
    record = json.loads((out / "anatomical_provenance.json").read_text())
    assert record["parameters"]["region"] == str(region_file)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), small)
    code = main(["explain", ANATOMICAL, "--out", str(tmp_path / "out2"), "--model",
                 "tiny-gate", "--device", "cpu", "--region", str(small)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "region has shape (4, 4, 4)" in err[0]


def test_dicom_maps_are_parametric_maps_and_derived_series(gated, tmp_path, capsys,
                                                           dciodvfy):
    series = tmp_path / "series"
    write_dicom_series(series, read_volume(ANATOMICAL, modality="MR"),
                       series_description="T1", patient={"PatientName": "Explain^Test",
                                                         "PatientID": "E1"})
    out = tmp_path / "out"
    assert main(["explain", str(series), "--out", str(out), "--model", "tiny-gate",
                 "--device", "cpu", "--class", "bright", "--format", "dicom", "--method",
                 "gradcam", "gate"]) == 0, capsys.readouterr().err
    scan = read_volume(series)
    module, card = registry.load_model(gated)
    expected = explain(scan, module, card, "gradcam", target_class=2, device="cpu")[0]
    (pmap_path,) = out.glob("*_gradcam_decoder.0_bright.dcm")
    assert not list(out.glob("*.nii.gz"))
    assert dciodvfy(pmap_path)[0] == []
    (gate_path,) = out.glob("*_gate_decoder.0.gate.dcm")
    # Grad-CAM is an explanation; attention gates are the model's own attention.
    assert [pydicom.dcmread(path, stop_before_pixels=True).SharedFunctionalGroupsSequence[0]
            .RealWorldValueMappingSequence[0].LUTLabel for path in (pmap_path, gate_path)] \
        == ["EXPL", "ATTN"]
    # The Parametric Map's frames, placed by its own positions, hold the map's values.
    placed = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(pmap_path)).get_volume()
    mm = np.indices(placed.array.shape).reshape(3, -1).T @ placed.affine[:3, :3].T \
        + placed.affine[:3, 3]
    index = np.round((mm - scan.affine[:3, 3]) @ np.linalg.inv(scan.affine[:3, :3]).T)
    np.testing.assert_allclose(placed.array.ravel(),
                               np.asarray(expected.volume.data)[tuple(index.astype(int).T)],
                               atol=1e-6)
    # The derived series opens as an ordinary scan with the same values (to 1/1000).
    (derived_folder,) = out.glob("*_gradcam_decoder.0_bright_derived")
    (derived,) = read(derived_folder)
    np.testing.assert_allclose(np.asarray(derived.data), np.asarray(expected.volume.data),
                               atol=5e-4 + 1e-6)
    record = json.loads(next(out.glob("*_provenance.json")).read_text())
    assert set(record["outputs"].values()) == {pmap_path.name, derived_folder.name,
                                               gate_path.name, f"{gate_path.stem}_derived"}
    # A NIfTI scan: one sentence before any map is computed.
    assert main(["explain", ANATOMICAL, "--out", str(tmp_path / "nifti"), "--model",
                 "tiny-gate", "--device", "cpu", "--format", "dicom"]) == 1
    assert "does not come from a DICOM series" in capsys.readouterr().err
    assert list((tmp_path / "nifti").iterdir()) == []
