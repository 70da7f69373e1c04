"""scripts/ablation.py end to end at a toy size: data, runs, resume, report, figure."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("nilearn")  # the synthetic cases are made from its MNI152 template

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ablation.py"
TOY = ["--variants", "none", "se", "--seeds", "3", "--steps", "2", "--patch", "16",
       "--channels", "4", "8", "--train-cases", "1", "--val-cases", "1"]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(ablation):
    """scripts/ablation_results.py, as the ablation script imported it."""
    import sys

    return sys.modules["ablation_results"]


@pytest.fixture(scope="module")
def toy_run(ablation, results, tmp_path_factory):
    """One toy ablation (2 variants x 1 seed x 2 steps) with a hand-written discussion."""
    root = tmp_path_factory.mktemp("ablation")
    markdown = root / "ablation.md"
    markdown.write_text(f"# Ablation\n\nintro\n\n{results.START}\nold\n{results.END}\n\n"
                        f"discussion stays\n", encoding="utf-8")
    ablation.main(["all", "--data", str(root / "data"), "--out", str(root / "out"),
                   "--markdown", str(markdown), "--figure", str(root / "ablation.png"), *TOY])
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_one_csv_per_run_with_valid_scores(toy_run, ablation):
    runs = sorted((toy_run / "out" / "runs").glob("*.csv"))
    assert [p.name for p in runs] == ["none_seed3.csv", "se_seed3.csv"]
    for path in runs:
        (row,) = _rows(path)
        assert (row["seed"], row["steps"], row["patch"], row["channels"]) == ("3", "2", "16", "4 8")
        dice = [float(row[f"dice_{c}"]) for c in ablation.FOREGROUND]
        assert all(0.0 <= d <= 1.0 for d in dice)
        assert float(row["dice_mean"]) == pytest.approx(sum(dice) / 3)
        # Every class is in the reference, so a finite HD95 mean or all classes missing.
        hd95, missing = float(row["hd95_mean"]), int(row["hd95_missing"])
        assert 0 <= missing <= 3
        assert (hd95 > 0) if missing < 3 else math.isnan(hd95)
        assert all(float(row[f"ref_ml_{c}"]) > 10 for c in ablation.FOREGROUND)  # brain tissue
        assert float(row["train_seconds"]) > 0 and 0 < float(row["final_loss"]) < 10


def test_complexity_matches_the_library_counts(toy_run, ablation):
    from napari_medattn.models.complexity import count_flops, count_parameters

    rows = {r["variant"]: r for r in _rows(toy_run / "out" / "complexity.csv")}
    assert set(rows) == {"none", "se"}
    for variant, row in rows.items():
        model = ablation.build(variant, [4, 8])
        assert int(row["params"]) == count_parameters(model)
        assert float(row["gflops"]) == pytest.approx(count_flops(model, (1, 1, 16, 16, 16)) / 1e9)
        assert float(row["latency_ms"]) > 0
    # SE adds its excitation weights to the same skeleton.
    assert int(rows["se"]["params"]) > int(rows["none"]["params"])


def test_report_rewrites_only_the_table(toy_run, results):
    text = (toy_run / "ablation.md").read_text(encoding="utf-8")
    assert text.startswith("# Ablation\n\nintro\n\n") and text.endswith("discussion stays\n")
    assert "\nold\n" not in text
    table = text.split(results.START)[1].split(results.END)[0]
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0] for line in body[1:]] == ["| plain", "| SE"]
    run = _rows(toy_run / "out" / "runs" / "se_seed3.csv")[0]
    plain = _rows(toy_run / "out" / "runs" / "none_seed3.csv")[0]
    cells = body[2].split(" | ")
    assert cells[5] == f"{float(run['dice_mean']):.3f}"  # one seed: a mean without SD
    delta = 100 * (float(run["dice_mean"]) - float(plain["dice_mean"]))
    assert cells[6] == f"{delta:+.1f}"
    assert cells[9] == f"{int(float(run['pred_ml_CSF']) > 0)} of 1"  # runs predicting CSF
    results = {r["variant"]: r for r in _rows(toy_run / "out" / "results.csv")}
    assert results["se"]["n"] == "1" and math.isnan(float(results["se"]["dice_mean_sd"]))
    assert (toy_run / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs_and_refuses_another_protocol(toy_run, ablation, capsys):
    out = toy_run / "out"
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.csv")}
    common = ["run", "--data", str(toy_run / "data"), "--out", str(out)]
    with pytest.raises(SystemExit, match="pass --resume"):
        ablation.main([*common, *TOY])
    ablation.main([*common, *TOY, "--resume"])
    assert "2 runs already finished, 0 to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.csv")} == stamps
    other = [*TOY[:TOY.index("--steps")], "--steps", "3", *TOY[TOY.index("--steps") + 2:]]
    with pytest.raises(SystemExit, match="another --out folder"):
        ablation.main([*common, *other, "--resume"])


def test_csf_diagnostic_agrees_with_the_metrics(toy_run, ablation, tmp_path):
    from napari_medattn.inference import segment
    from napari_medattn.io.volume import Volume
    from napari_medattn.metrics import evaluate_pair
    from napari_medattn.models.registry import load_model
    from napari_medattn.training.config import TrainingConfig
    from napari_medattn.training.loop import train

    train_cases, val_cases = ablation.load_data(toy_run / "data", 1, 1)
    run = TrainingConfig("unet", {"spatial_dims": 3, "channels": [4, 8]},
                         patch_size=(16, 16, 16), spacing=ablation.builtin.SPACING_MM,
                         orientation="RAS", modality="MR", epochs=1, steps_per_epoch=3)
    result = train(run, train_cases, classes=ablation.builtin.CLASSES,
                   out_dir=tmp_path / "toy", device="cpu", progress_bar=False)
    (row,) = ablation.csf_diagnostic([str(result.last)], val_cases)
    case = val_cases[0]
    module, card = load_model(result.last, device="cpu")
    image = Volume(case.image.data[0], case.image.affine, "MR", {})
    labels = segment(image, module, card, device="cpu", use_autocast=False).labels
    csf = evaluate_pair(labels, case.label, classes=[1])[0]
    # CSF wins inside the reference CSF exactly where the segmentation finds it.
    assert row["csf_voxels"] == csf.ref_voxels
    assert row["csf_wins"] == pytest.approx(csf.sensitivity if csf.ref_voxels else 0.0)
    assert 0.0 <= row["csf_wins"] + row["csf_second"] <= 1.0
    assert 0.0 <= row["p_csf_mean"] <= row["p_csf_p95"] <= row["p_csf_max_anywhere"] <= 1.0
    assert row["most_often_wins"] in card.class_names
