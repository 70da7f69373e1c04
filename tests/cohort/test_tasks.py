"""The other tasks as cohort adapters: evaluate writes what ``medattn evaluate`` writes
(byte for byte) with its Dice/HD95 in the table; register writes the command's outputs
with its QA figures in the table and refuses a case without a moving scan; explain writes
the maps ``medattn explain`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cohort_data import make_scans, write_csv
from napari_medattn.cli import main
from napari_medattn.cohort import run
from napari_medattn.io import read_volume, volume_like, write_nifti
from napari_medattn.metrics import evaluate_pair

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"


def test_evaluate_equals_the_command_and_fills_the_table(client, tmp_path, capsys):
    scan = read_volume(SAMPLES / "nibabel_anatomical.nii.gz")
    data = np.asarray(scan.data)
    reference = (data > np.percentile(data, 40)).astype(np.uint8) + (data > np.percentile(
        data, 80))
    prediction = np.roll(reference, 1, axis=0)
    ref = write_nifti(tmp_path / "ref.nii.gz", volume_like(scan, reference))
    pred = write_nifti(tmp_path / "pred.nii.gz", volume_like(scan, prediction))
    manifest = write_csv(tmp_path / "m.csv", [("p", str(pred), str(ref)),
                                              ("no_ref", str(pred), "")])
    result = run(manifest, "evaluate", tmp_path / "out", client=client, progress=False,
                 task_options=["--classes", "1=dark", "2=bright"])
    table = result.table.set_index("case")
    scores = {s.label: s for s in evaluate_pair(prediction, reference, scan.spacing,
                                                classes=[1, 2])}
    assert table.loc["p", "dice_dark"] == pytest.approx(scores[1].dice)
    assert table.loc["p", "hd95_mm_bright"] == pytest.approx(scores[2].hd95_mm)
    assert table.loc["no_ref", "error"] == "Case no_ref has no reference to evaluate against."
    assert main(["evaluate", str(pred), str(ref), "--out", str(tmp_path / "serial"),
                 "--classes", "1=dark", "2=bright"]) == 0
    capsys.readouterr()
    for name in ("scores.csv", "summary.csv"):
        assert (tmp_path / "out" / "cases" / "p" / name).read_bytes() == \
            (tmp_path / "serial" / name).read_bytes()


def test_register_writes_the_commands_outputs_and_its_qa(client, tmp_path):
    fixed = SAMPLES / "nibabel_anatomical.nii.gz"
    moved = SAMPLES / "nibabel_anatomical_moved.nii.gz"
    (tmp_path / "m.csv").write_text(f"case,image,moving\npair,{fixed},{moved}\n"
                                    f"alone,{fixed},\n")
    result = run(tmp_path / "m.csv", "register", tmp_path / "out", client=client,
                 progress=False, task_options=["--method", "rigid", "--levels", "2",
                                               "--iterations", "20", "--device", "cpu"])
    table = result.table.set_index("case")
    assert table.loc["alone", "error"] == "Case alone names no moving scan to register."
    assert table.loc["pair", "status"] == "done"
    folder = tmp_path / "out" / "cases" / "pair"
    qa = json.loads((folder / "qa.json").read_text())
    assert table.loc["pair", "qa_folding_percent"] == qa["folding_percent"]
    warped = read_volume(folder / "warped.nii.gz")
    np.testing.assert_array_equal(warped.affine, read_volume(fixed).affine)
    assert table.loc["pair", "output_transform"] == "cases/pair/transform.tfm"


def test_explain_writes_the_maps_the_command_writes(client, tiny_model, tmp_path, capsys):
    [scan] = make_scans(tmp_path / "scans", count=1, corrupt=None)
    options = ["--model", str(tiny_model), "--device", "cpu", "--method", "gradcam"]
    result = run(tmp_path / "scans", "explain", tmp_path / "out", client=client,
                 progress=False, task_options=options)
    assert list(result.table["maps"]) == [1]
    assert main(["explain", str(scan), "--out", str(tmp_path / "serial"), *options]) == 0
    capsys.readouterr()
    [serial_map] = [p for p in (tmp_path / "serial").iterdir() if "gradcam" in p.name]
    cohort_map = tmp_path / "out" / "cases" / "case_0" / serial_map.name
    assert cohort_map.read_bytes() == serial_map.read_bytes()
