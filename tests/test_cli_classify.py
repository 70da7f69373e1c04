"""``medattn classify``: probabilities as JSON and CSV with provenance, the same numbers as
the library call, heat maps on the scan's exact grid, bad input in one sentence."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from napari_medattn.classification import HEATMAPS, classify, heat_map
from napari_medattn.cli import main
from napari_medattn.cli.classify import HEATMAP_NAMES, TABLE
from napari_medattn.io import read_volume
from napari_medattn.models import create
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import load_model, save_model

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25, 2 mm, LAS


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny, randomly initialised MedFormer classifier (plumbing, not quality)."""
    torch.manual_seed(0)
    config = dict(spatial_dims=3, in_channels=1, out_channels=2, task="classification",
                  widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], topk=[4, 16, 4, None],
                  n_win=[4, 4, 2, 1], head_dim=8)
    card = ModelCard(name="tiny-classifier", architecture="medformer", task="classification",
                     config=config, classes=[("none", "#000000"), ("finding", "#ff0000")],
                     patch_size=(32, 32, 32), modality="MR", spacing=(3.0, 3.0, 3.0),
                     orientation="RAS", normalization={"scheme": "zscore"})
    return save_model(create("medformer", **config).eval(), card,
                      tmp_path_factory.mktemp("models") / "tiny-classifier")


def test_heatmap_names_match_the_library():
    assert HEATMAP_NAMES == HEATMAPS


def test_classify_writes_the_library_probability_and_a_heat_map_on_the_scan(classifier,
                                                                           tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["classify", ANATOMICAL, "--out", str(out), "--model", str(classifier),
                 "--heatmap", "gradcam", "--device", "cpu"]) == 0
    document = json.loads(next(out.glob("*_classification.json")).read_text())
    record = json.loads(next(out.glob("*_provenance.json")).read_text())
    (row,) = list(csv.DictReader((out / TABLE).read_text().splitlines()))
    module, card = load_model(classifier)
    volume = read_volume(ANATOMICAL)
    expected = classify(volume, module, card, device="cpu")
    assert document["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert float(row["probability"]) == pytest.approx(expected.probability, abs=1e-5)
    assert row["predicted"] == document["predicted"] == expected.predicted
    assert record["command"] == "classify" and record["model"]["name"] == "tiny-classifier"
    assert record["details"]["probabilities"]["finding"] == pytest.approx(expected.probability)
    # The heat map is the library's, on the input's exact grid (affine read back by nibabel).
    written = nib.load(next(out.glob("*_heatmap_gradcam.nii.gz")))
    source = nib.load(ANATOMICAL)
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    reference = heat_map(volume, module, card, "gradcam", device="cpu").volume
    assert np.allclose(read_volume(next(out.glob("*_heatmap_gradcam.nii.gz"))).data,
                       reference.data, atol=1e-5)
    assert "p(finding) =" in capsys.readouterr().out


def test_bad_input_and_a_detector_are_one_sentence(classifier, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "o"
    assert main(["classify", str(bad), ANATOMICAL, "--out", str(out), "--model",
                 str(classifier), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medattn classify:") and "Traceback" not in err
    rows = list(csv.DictReader((out / TABLE).read_text().splitlines()))
    assert len(rows) == 1  # the good scan still ran
    assert main(["classify", ANATOMICAL, "--out", str(out), "--model",
                 "medformer-lesion-detector"]) == 1
    assert "not a classifier" in capsys.readouterr().err
