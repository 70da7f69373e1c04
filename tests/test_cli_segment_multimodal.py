"""``medattn segment --modality t1=A ... --out DIR``: any subset, labels on the reference
file's exact grid, the provenance record; each bad input gets one sentence and nothing is
written."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_medattn.cli import main
from napari_medattn.models import create
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import save_model

SHAPE = (16, 16, 12)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    torch.manual_seed(0)
    net = create("dmaf_net", out_channels=4, channels=[4, 8]).eval()
    card = ModelCard(name="dmaf-tiny", architecture="dmaf_net", config=net.config,
                     classes=[{"name": n, "color": "#ff0000"} for n in
                              ("background", "necrotic core", "oedema", "enhancing tumour")],
                     modality="MR", patch_size=(16, 16, 16), in_channels=4,
                     normalization={"scheme": "zscore"})
    paths = {"model": save_model(net, card, folder / "dmaf-tiny")}
    rng = np.random.default_rng(0)
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    for k, name in enumerate(("t1", "t1ce", "flair")):
        paths[name] = folder / f"case_{name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(100 * (k + 1), 10, SHAPE).astype(np.float32),
                                 affine), paths[name])
    far = affine.copy()
    far[:3, 3] += 400.0
    paths["far"] = folder / "far_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), far), paths["far"])
    return paths


def test_subset_writes_labels_on_the_reference_grid(files, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["segment", "--model", str(files["model"]), "--modality",
                   f"flair={files['flair']}", f"T1ce={files['t1ce']}", "--out", str(out),
                   "--attention", "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["case_t1ce_attention_flair.nii.gz", "case_t1ce_attention_t1ce.nii.gz",
                       "case_t1ce_labels.nii.gz", "case_t1ce_provenance.json"]
    labels = nib.load(out / "case_t1ce_labels.nii.gz")
    source = nib.load(files["t1ce"])
    np.testing.assert_array_equal(labels.affine, source.affine)  # t1ce precedes flair
    assert labels.shape == SHAPE
    values = np.asarray(labels.dataobj)
    assert set(np.unique(values)) <= {0, 1, 2, 4}
    record = json.loads((out / "case_t1ce_provenance.json").read_text())
    assert record["command"] == "segment" and len(record["inputs"]) == 2
    details = record["details"]
    voxel_ml = 1.5 * 1.5 * 2.0 / 1000
    assert details["volumes_ml"]["WT"] == pytest.approx(np.count_nonzero(values) * voxel_ml)
    assert sorted(details["modality_weights"]) == ["flair", "t1ce"]
    assert sum(details["modality_weights"].values()) == pytest.approx(1.0)
    assert record["parameters"]["reference"] == "t1ce"
    assert "WT" in capsys.readouterr().out


@pytest.mark.parametrize(("pairs", "sentence"), [
    (lambda f: [f"t1={f['t1']}", f"pd={f['t1ce']}"], "does not know the modality 'pd'"),
    (lambda f: [f"t1={f['t1']}", f"t2={f['t1']}"], "same scan was given as t1 and t2"),
    (lambda f: [f"t1={f['t1']}", f"T1={f['t1ce']}"], "'t1' was given twice"),
    (lambda f: [f"t1={f['t1']}", f"t2={f['far']}"], "covers 0% of the t1 scan"),
    (lambda f: [f"t1={f['t1']}", "flair="], "as NAME=PATH"),
])
def test_bad_input_one_sentence_nothing_written(files, tmp_path, capsys, pairs, sentence):
    out = tmp_path / "out"
    status = main(["segment", "--model", str(files["model"]), "--modality", *pairs(files),
                   "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and sentence in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_no_modality_and_single_scan_options(files, tmp_path, capsys):
    assert main(["segment", "--model", str(files["model"]), "--out", str(tmp_path / "o")]) == 1
    assert "Give at least one INPUT" in capsys.readouterr().err
    assert main(["segment", "--model", str(files["model"]), "--modality",
                 f"t1={files['t1']}", "--tta", "--out", str(tmp_path / "o")]) == 1
    assert "--tta cannot be used with several modalities" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
