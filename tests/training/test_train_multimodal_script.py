"""scripts/train_multimodal.py at a toy size: both protocols train, the table covers the 15
subsets and its means match the per-case rows."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

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
        cases.append({"x": torch.from_numpy(x.astype(np.float32)), "labels": labels,
                      "target": torch.from_numpy(np.searchsorted([0, 1, 2, 4], labels)),
                      "spacing": np.array([2.0, 2.0, 2.0])})
    return cases


def test_toy_protocol(script, one_torch_thread):
    cases = _toy_cases(2)
    args = argparse.Namespace(seed=0, lr=2e-3, no_distillation=False, no_monitoring=False,
                              minutes=5, max_steps=2, batch=2, distillation_weight=0.1,
                              missing_rates=(0.3, 0.6, 0.2, 0.5))
    rows, runs = [], {}
    for kind in ("dmaf", "early"):
        model = script.build(kind, 0)
        runs[kind] = script.train(model, kind, cases, args)
        assert runs[kind]["steps"] == 2 and np.isfinite(runs[kind]["final_loss"])
        rows += script.evaluate(model, kind, cases[:1])
    # The monitor ran for DMAF only (its weights moved off 1); early fusion has none.
    assert not np.allclose(runs["dmaf"]["modality_weights"], 1.0)
    assert runs["early"]["modality_weights"] == [1.0] * 4
    assert len(rows) == 2 * 15
    csv_text, table = script.tables(rows, runs)
    assert csv_text.count("\n") == 31
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 15 + 1
    mean_cell = lines[-1].split("|")[2].strip("* ")
    expected = 100 * np.mean([r["dice_WT"] for r in rows if r["model"] == "dmaf"])
    assert float(mean_cell) == pytest.approx(expected, abs=0.05)
