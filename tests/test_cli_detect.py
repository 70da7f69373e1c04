"""``medattn detect``: boxes as CSV and JSON in patient mm with provenance, the same boxes
as the library call, an empty result said plainly, bad input in one sentence."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from napari_medattn.cli import main
from napari_medattn.detection.detector import detect
from napari_medattn.io import read_volume
from napari_medattn.models import create
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import load_model, save_model

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25, 2 mm, LAS


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny, randomly initialised MedFormer detector (plumbing, not quality)."""
    torch.manual_seed(0)
    config = dict(spatial_dims=3, in_channels=1, out_channels=5, task="segmentation",
                  widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], topk=[4, 16, 4, None],
                  n_win=[4, 4, 2, 1], head_dim=8)
    card = ModelCard(name="tiny-detector", architecture="medformer", task="detection",
                     config=config, classes=[("background", "#000000"), ("a", "#ff0000"),
                                             ("b", "#00ff00")],
                     patch_size=(32, 32, 32), modality="MR", spacing=(4.0, 4.0, 4.0),
                     orientation="RAS", normalization={"scheme": "zscore"})
    return save_model(create("medformer", **config).eval(), card,
                      tmp_path_factory.mktemp("models") / "tiny-detector")


def test_detect_writes_boxes_in_mm_like_the_library(detector, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", ANATOMICAL, "--out", str(out), "--model", str(detector),
                 "--threshold", "0", "--device", "cpu", "--autocast", "off"]) == 0
    rows = list(csv.DictReader(open(next(out.glob("*_detections.csv")))))
    document = json.loads(next(out.glob("*_detections.json")).read_text())
    record = json.loads(next(out.glob("*_provenance.json")).read_text())
    assert len(rows) == len(document["detections"]) == record["details"]["detections"] > 0
    assert record["model"]["name"] == "tiny-detector" and record["command"] == "detect"
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows),
                                                       reverse=True)
    # The same boxes as the library call on the same volume.
    module, card = load_model(detector)
    expected = detect(read_volume(ANATOMICAL), module, card, device="cpu", min_score=0.0,
                      use_autocast=False).detections
    assert np.allclose([[float(r[f"centre_{a}_mm"]) for a in "xyz"] for r in rows],
                       [d.centre_mm for d in expected], atol=1e-3)
    # Every centre lies inside the scan, in patient mm.
    volume = read_volume(ANATOMICAL)
    corners = np.array([[i, j, k] for i in (0, 32) for j in (0, 40) for k in (0, 24)], float)
    mm = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    centres = np.array([d["centre_mm"] for d in document["detections"]])
    assert (centres >= mm.min(0) - 4).all() and (centres <= mm.max(0) + 4).all()
    assert "lesion box(es)" in capsys.readouterr().out


def test_no_detection_is_a_result(detector, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["detect", ANATOMICAL, "--out", str(out), "--model", str(detector),
                 "--threshold", "1", "--device", "cpu"]) == 0
    assert "no lesion scored 1 or more" in capsys.readouterr().out
    assert next(out.glob("*_detections.csv")).read_text().count("\n") == 1  # header only


def test_bad_input_and_wrong_model_are_one_sentence(detector, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert main(["detect", str(bad), "--out", str(tmp_path / "o"), "--model",
                 str(detector)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medattn detect:") and "Traceback" not in err
    assert main(["detect", ANATOMICAL, "--out", str(tmp_path / "o"), "--model", str(detector),
                 "--threshold", "2"]) == 1
    assert "--threshold" in capsys.readouterr().err
