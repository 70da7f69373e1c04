"""scripts/train_multimodal.py at a toy size: the three models and an ablation variant
train under one protocol, the summary's table covers the 15 subsets with means that match
the per-case rows, and the shipped DMAF model loads with the weights that were trained."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medattn.models.registry import load_model
from napari_medattn.training.multimodal_table import PAGE_MARKERS, summarise_runs

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_multimodal.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_multimodal_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_cases(n: int) -> list[dict]:
    """Cubes whose label is readable from the intensities: the nets can only get it right
    by reading the present modalities."""
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(n):
        labels = np.zeros((16, 16, 16), np.uint8)
        c = rng.integers(5, 11, 3)
        labels[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 4:c[2] + 4] = 2
        labels[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 4
        labels[c[0], c[1], c[2]] = 1
        x = np.stack([labels.astype(np.float32) * s + rng.normal(0, 0.1, labels.shape)
                      for s in (1, 2, -1, 3)])
        cases.append({"x": x.astype(np.float32), "labels": labels,
                      "target": np.searchsorted([0, 1, 2, 4], labels),
                      "spacing": np.array([2.0, 2.0, 2.0]), "tumour": np.argwhere(labels > 0),
                      "head": (np.zeros(3, int), np.full(3, 16))})
    return cases


def test_toy_protocol_table_and_shipped_model(script, one_torch_thread, tmp_path):
    cases = _toy_cases(2)
    args = argparse.Namespace(lr=2e-3, steps=2, batch=2, crop=12, distillation_weight=0.1,
                              missing_rates=(0.3, 0.6, 0.2, 0.5))
    runs = tmp_path / "runs"
    runs.mkdir()
    trained = {}
    for variant in ("dmaf", "region", "early", "dmaf-no-prototype"):
        model = script.build(variant, 0)
        facts = script.train(model, variant, cases, args, seed=0)
        assert facts["steps"] == 2 and np.isfinite(facts["final_loss"])
        moved = not np.allclose(facts["modality_weights"], 1.0)
        assert moved == variant.startswith("dmaf")  # only DMAF runs the monitor
        facts.update(test=script.evaluate(model, variant, cases[:1]),
                     val=script.evaluate(model, variant, cases[1:]), cpu_s=1.0,
                     parameters=7, config=model.config, architecture=model.architecture,
                     protocol={"steps": 2, "batch": 2, "lr": 2e-3, "crop": 12, "eval_crop": 16,
                               "missing_rates": [0.3, 0.6, 0.2, 0.5],
                               "distillation_weight": 0.1, "train_cases": 2,
                               "data": "synthetic"})
        assert len(facts["test"]) == 15
        (runs / f"{variant}_seed0.json").write_text(json.dumps(facts))
        trained[variant] = model
    from safetensors.torch import save_file
    save_file(trained["dmaf"].state_dict(), str(runs / "dmaf_seed0.safetensors"))

    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\n{PAGE_MARKERS[0]}\nold\n{PAGE_MARKERS[1]}\n\nkept\n")
    ship = tmp_path / "dmaf-toy"
    assert summarise_runs(runs, tmp_path / "out", page, ship, (2.0, 2.0, 2.0)) == 0
    text = page.read_text()
    assert text.startswith("# Title") and text.endswith("kept\n") and "old" not in text
    dice = text.split("| subset |")[1].split("\n\n")[0].strip().splitlines()
    assert len(dice) == 2 + 15 + 1
    mean_cell = dice[-1].split("|")[2].strip("* ")
    rows = json.loads((runs / "dmaf_seed0.json").read_text())["test"]
    assert float(mean_cell) == pytest.approx(100 * np.mean([r["dice_WT"] for r in rows]),
                                             abs=0.05)
    assert "| dmaf-no-prototype | 1 |" in text
    module, card = load_model(ship)
    assert card.config["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert card.in_channels == 4 and card.spacing == (2.0, 2.0, 2.0)
    assert "Synthetic tumours in one template's anatomy" in card.training_data
    x = torch.from_numpy(cases[0]["x"])[None]
    with torch.no_grad():
        assert torch.equal(module.eval()(x, None), trained["dmaf"].eval()(x, None))
