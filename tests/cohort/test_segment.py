"""``segment`` over a cohort on two single-thread workers equals the serial ``medattn
segment`` byte for byte, the corrupt case carries the command's own sentence, a rerun does
nothing in a tenth of the time, a changed parameter reruns every case, and the results
table holds the per-class volumes and, where a reference exists, Dice and HD95 equal to
the metrics module's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cohort_data import make_scans, write_csv

from napari_medattn.cli import main
from napari_medattn.cohort import run
from napari_medattn.io import read_volume, volume_like, write_nifti
from napari_medattn.metrics import evaluate_pair

#: Provenance keys that differ between any two runs (clock readings).
VOLATILE = {"runtime_s", "started_utc", "finished_utc"}


def comparable(record: dict) -> dict:
    record = {k: v for k, v in record.items() if k not in VOLATILE}
    record["details"] = {k: v for k, v in record["details"].items() if not k.endswith("_s")}
    return record


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    return make_scans(tmp_path_factory.mktemp("scans") / "scans")


def test_parallel_equals_serial_and_reruns_do_only_what_changed(client, tiny_model, scans,
                                                                tmp_path, capsys):
    options = ["--model", str(tiny_model), "--device", "cpu"]
    inputs_before = {p: p.read_bytes() for p in scans}
    started = time.perf_counter()
    result = run(scans[0].parent, "segment", tmp_path / "cohort", task_options=options,
                 client=client, progress=False)
    first_s = time.perf_counter() - started
    table = result.table.set_index("case")
    assert list(table.index) == [f"case_{i}" for i in range(8)]
    assert (table.drop("case_3")["status"] == "done").all()

    for path in scans:  # the serial command, one case at a time, into its own folder
        case = path.name.removesuffix(".nii.gz")
        code = main(["segment", str(path), "--out", str(tmp_path / "serial" / case), *options])
        err = capsys.readouterr().err
        cohort_dir = tmp_path / "cohort" / "cases" / case
        if case == "case_3":
            assert code == 1
            assert table.loc[case, "status"] == "failed"
            assert table.loc[case, "error_kind"] == "input"
            assert err.strip() == f"medattn segment: {table.loc[case, 'error']}"
            continue
        serial = sorted(p.name for p in (tmp_path / "serial" / case).iterdir())
        assert serial == [f"{case}_labels.nii.gz", f"{case}_provenance.json"]
        assert sorted(p.name for p in cohort_dir.iterdir()) == sorted([*serial, "case.json"])
        labels = f"{case}_labels.nii.gz"
        assert (cohort_dir / labels).read_bytes() == \
            (tmp_path / "serial" / case / labels).read_bytes()
        provenance = [json.loads(p.read_text()) for p in
                      (cohort_dir / f"{case}_provenance.json",
                       tmp_path / "serial" / case / f"{case}_provenance.json")]
        assert comparable(provenance[0]) == comparable(provenance[1])
        # The table's volumes are those of the label map written, in mL.
        written = read_volume(cohort_dir / labels)
        voxel_ml = abs(np.linalg.det(written.affine[:3, :3])) / 1000
        for label, name in ((1, "dark"), (2, "bright")):
            expected = np.count_nonzero(np.asarray(written.data) == label) * voxel_ml
            assert table.loc[case, f"volume_ml_{name}"] == pytest.approx(expected)
        assert table.loc[case, "output_labels"] == f"cases/{case}/{labels}"
    assert {p: p.read_bytes() for p in scans} == inputs_before

    started = time.perf_counter()
    again = run(scans[0].parent, "segment", tmp_path / "cohort", task_options=options,
                client=client, progress=False)
    rerun_s = time.perf_counter() - started
    assert again.ran == 0 and again.skipped == 8
    assert rerun_s < 0.1 * first_s, (rerun_s, first_s)

    changed = [*options, "--overlap", "0.25"]
    redone = run(scans[0].parent, "segment", tmp_path / "cohort", task_options=changed,
                 client=client, rerun_changed=True, progress=False)
    assert redone.ran == 8
    record = json.loads((tmp_path / "cohort" / "cases" / "case_0" /
                         "case_0_provenance.json").read_text())
    assert record["parameters"]["overlap"] == 0.25


def test_references_give_dice_and_hd95_of_the_metrics_module(client, tiny_model, scans,
                                                             tmp_path):
    # A reference for two cases: the dark/bright split of the scan itself (any label map on
    # the scan's grid will do; the figures must be the metrics module's for it).
    rows = []
    for path in scans[:2]:
        scan = read_volume(path)
        data = np.asarray(scan.data)
        reference = np.where(data > np.percentile(data, 70), 2, data > np.percentile(data, 30))
        ref_path = write_nifti(tmp_path / f"{path.name.removesuffix('.nii.gz')}_ref.nii.gz",
                               volume_like(scan, reference.astype(np.uint8)))
        rows.append((path.name.removesuffix(".nii.gz"), str(path), str(ref_path)))
    rows.append(("no_reference", str(scans[4]), ""))
    manifest = write_csv(tmp_path / "cases.csv", rows)
    result = run(manifest, "segment", tmp_path / "cohort",
                 task_options=["--model", str(tiny_model), "--device", "cpu"], client=client,
                 progress=False)
    table = result.table.set_index("case")
    for case, _, ref in rows[:2]:
        labels = read_volume(tmp_path / "cohort" / table.loc[case, "output_labels"])
        scores = {s.label: s for s in evaluate_pair(labels, read_volume(ref), classes=[1, 2])}
        for label, name in ((1, "dark"), (2, "bright")):
            assert table.loc[case, f"dice_{name}"] == pytest.approx(scores[label].dice)
            assert table.loc[case, f"hd95_mm_{name}"] == pytest.approx(scores[label].hd95_mm)
    assert pd.isna(table.loc["no_reference", "dice_dark"])
    assert (tmp_path / "cohort" / "summary_dice.png").is_file()
    assert (tmp_path / "cohort" / "summary_volumes.png").is_file()
    parquet = pd.read_parquet(tmp_path / "cohort" / "results.parquet")
    pd.testing.assert_frame_equal(parquet.set_index("case"), table, check_dtype=False)
