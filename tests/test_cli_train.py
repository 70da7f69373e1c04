"""``medattn train``: one tiny epoch on an MSD folder, and one-sentence refusals."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from napari_medattn.cli import main
from napari_medattn.models.registry import load_model


def _msd_folder(root, cases=3):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(cases):
        label = np.zeros((18, 18, 18), np.uint8)
        label[4 + i:12 + i, 5:13, 3:11] = 1
        image = (label * 80.0 + np.random.default_rng(i).normal(40, 5, label.shape))
        affine = np.diag([1.2, 1.2, 1.5, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine),
                 root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "ball"}, "modality": {"0": "MR"},
        "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                     for i in range(cases)]}))
    return root


def test_train_one_tiny_epoch(tmp_path, capsys):
    data = _msd_folder(tmp_path / "data")
    code = main(["train", "--data", str(data), "--model", "unet", "--config",
                 '{"channels": [4, 8]}', "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--steps-per-epoch", "2", "--patch-size", "16", "16", "16", "--device", "cpu",
                 "--augment", "none", "--no-progress", "--name", "tiny-ball"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Trained tiny-ball for 1 epoch(s)" in out and "validation Dice" in out
    module, card = load_model(tmp_path / "run" / "best")
    assert card.name == "tiny-ball" and card.class_names == ["background", "ball"]
    # Spacing defaults to the training cases' median, in the cases' canonical axis order.
    assert np.allclose(sorted(card.spacing), [1.2, 1.2, 1.5])
    assert "2 case(s)" in card.training_data and "1 held-out case(s) (c" in card.evaluated_on
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1

    # Fine-tuning: --init takes the config from the model's card.
    code = main(["train", "--data", str(data), "--model", "unet", "--init",
                 str(tmp_path / "run" / "best"), "--out", str(tmp_path / "tuned"), "--epochs",
                 "1", "--steps-per-epoch", "1", "--patch-size", "16", "16", "16", "--device",
                 "cpu", "--augment", "none", "--no-progress"])
    assert code == 0
    _, tuned = load_model(tmp_path / "tuned" / "last")
    assert tuned.config == card.config
    assert tuned.training_procedure.startswith("Fine-tuned from tiny-ball")


def test_refusals_are_one_sentence(tmp_path, capsys):
    missing = main(["train", "--data", str(tmp_path / "nowhere"), "--model", "unet",
                    "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert missing == 1 and error.startswith("medattn: ") and "does not exist" in error
    assert len(error.splitlines()) == 1
    data = _msd_folder(tmp_path / "data", cases=1)
    unknown = main(["train", "--data", str(data), "--model", "resnet",
                    "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert unknown == 1 and "Unknown architecture 'resnet'" in error
    assert len(error.splitlines()) == 1
