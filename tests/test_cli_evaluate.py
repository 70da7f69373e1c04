"""``medattn evaluate``: printed table, CSV and JSON values equal the library's; bad cases
reported on stderr in one sentence with a non-zero exit while the others are scored."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.cli import main
from napari_medattn.metrics import METRICS, evaluate_folders


def save(path, labels, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([1.0, 0.7, 2.5, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(labels, affine), str(path))


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    ref = np.zeros((16, 18, 12), np.uint8)
    ref[3:10, 4:12, 2:8] = 1
    ref[11:14, 13:16, 8:11] = 2
    for name, shift in (("c01", 1), ("c02", 2)):
        save(ref_dir / f"{name}.nii.gz", ref)
        save(pred_dir / f"{name}.nii.gz", np.roll(ref, shift, axis=0))
    missed = np.where(ref == 2, 0, ref).astype(np.uint8)  # class 2 missed: inf distances
    save(ref_dir / "c03.nii.gz", ref)
    save(pred_dir / "c03.nii.gz", missed)
    return pred_dir, ref_dir


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folders_table_csv_json_equal_library(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    out = tmp_path / "out"
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--out", str(out),
                 "--classes", "1=liver", "2=tumour"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    expected = evaluate_folders(pred_dir, ref_dir, classes=[1, 2],
                                class_names={1: "liver", 2: "tumour"})

    table = printed.out.splitlines()
    assert table[0].split()[:4] == ["case", "class", "Dice", "IoU"]
    c01_liver = next(line.split() for line in table if line.startswith("c01") and "liver" in line)
    first = expected.scores[0]
    assert float(c01_liver[2]) == pytest.approx(first.dice, abs=5e-4)
    assert float(c01_liver[4]) == pytest.approx(first.hd95_mm, abs=5e-4)
    assert any("skipped: hd95_mm 1" in line for line in table)  # c03's missed tumour

    rows = csv_rows(out / "scores.csv")
    assert len(rows) == len(expected.scores) == 6
    for row, scores in zip(rows, expected.scores):
        assert (row["case"], int(row["label"]), row["name"]) == (scores.case, scores.label,
                                                                 scores.name)
        for metric in METRICS:
            assert float(row[metric]) == pytest.approx(getattr(scores, metric), rel=0,
                                                       nan_ok=True), metric
    assert math.isinf(float(rows[-1]["hd95_mm"]))

    summary = csv_rows(out / "summary.csv")
    assert [(r["scope"], r["case"]) for r in summary][:3] == [("case", "c01"), ("case", "c02"),
                                                             ("case", "c03")]
    for row, mean in zip(summary, expected.summary):
        assert int(row["n"]) == mean.n
        for metric in METRICS:
            assert float(row[metric]) == pytest.approx(mean.means[metric], nan_ok=True)
            assert int(row[f"excluded_{metric}"]) == mean.excluded[metric]

    document = json.loads((out / "evaluation.json").read_text())
    assert document["problems"] == []
    for row, scores in zip(document["scores"], expected.scores):
        for metric in METRICS:
            value = getattr(scores, metric)
            assert row[metric] == (value if math.isfinite(value) else None)
    assert "Both masks empty" in document["conventions"]
    assert not list(out.glob(".*partial"))


def test_two_files(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    out = tmp_path / "single"
    assert main(["evaluate", str(pred_dir / "c02.nii.gz"), str(ref_dir / "c02.nii.gz"),
                 "--out", str(out)]) == 0
    rows = csv_rows(out / "scores.csv")
    assert [(r["case"], r["label"]) for r in rows] == [("c02", "1"), ("c02", "2")]
    assert float(rows[0]["hd95_mm"]) == pytest.approx(2.0)  # shifted 2 voxels of 1 mm
    assert "c02" in capsys.readouterr().out


def test_bad_case_one_sentence_on_stderr_others_still_scored(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    ref = nib.load(ref_dir / "c02.nii.gz").get_fdata().astype(np.uint8)
    save(pred_dir / "c02.nii.gz", ref, origin=(0.0, 3.0, 0.0))
    out = tmp_path / "out"
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--out", str(out)]) == 1
    printed = capsys.readouterr()
    [message] = printed.err.splitlines()
    assert message.startswith("medattn evaluate: Case c02: the prediction and reference grids")
    assert {r["case"] for r in csv_rows(out / "scores.csv")} == {"c01", "c03"}
    problems = json.loads((out / "evaluation.json").read_text())["problems"]
    assert [p["case"] for p in problems] == ["c02"]


@pytest.mark.parametrize("args, sentence", [
    (["--classes", "liver"], "--classes takes LABEL or LABEL=NAME"),
    (["--classes", "-1"], "non-negative"),
])
def test_bad_classes(folders, tmp_path, capsys, args, sentence):
    pred_dir, ref_dir = folders
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--out", str(tmp_path / "o"),
                 *args]) == 1
    err = capsys.readouterr().err
    assert sentence in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_path(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
