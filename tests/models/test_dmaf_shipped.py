"""The shipped dmaf-brain-tumour: loads by name as a multimodal model within 30 MB, its card
says plainly what it was trained on, and its figures are the ones docs/multimodal.md shows
(both written by scripts/train_multimodal.py summarise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from napari_medattn.inference.multimodal import MULTIMODAL_TASK
from napari_medattn.models.registry import find_model, load_model

ROOT = Path(__file__).resolve().parents[2]


def test_loads_as_a_multimodal_model(one_torch_thread):
    entry = find_model("dmaf-brain-tumour")
    weights = entry.path / "weights.safetensors"
    assert weights.stat().st_size <= 30 * 2 ** 20
    module, card = load_model("dmaf-brain-tumour")
    assert card.task == MULTIMODAL_TASK and card.architecture == "dmaf_net"
    assert card.config["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert [c.name for c in card.classes] == ["background", "necrotic core", "oedema",
                                              "enhancing tumour"]
    assert "Synthetic tumours in one template's anatomy" in card.training_data
    assert "short CPU training" in card.training_procedure
    assert "Not for clinical use" in card.intended_use
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        out = module.eval()(x, torch.tensor([True, False, False, True]))
    assert out.shape == (1, 4, 16, 16, 16) and torch.isfinite(out).all()


def test_card_figures_are_the_documented_ones():
    _, card = load_model("dmaf-brain-tumour")
    page = (ROOT / "docs" / "multimodal.md").read_text()
    dice = page.split("<!-- multimodal-table:start -->")[1].split("HD95")[0]
    means = re.search(r"\*\*mean of 15\*\* \| (.*) \|", dice).group(1).split(" | ")
    documented = [float(cell.split(" ± ")[0]) for cell in means]
    carded = [100 * card.metrics[f"{model}_mean15_dice_{region}"]
              for model in ("dmaf", "region", "early") for region in ("WT", "TC", "ET")]
    assert documented == pytest.approx(carded, abs=0.051)
