"""``medattn segment``: outputs on the source grid (NIfTI and DICOM), equal to the library's
result, provenance with the weights hash, bad inputs reported while the batch goes on,
inputs never overwritten, and the default-model rule."""

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
import tqdm
from nibabel.testing import data_path

from napari_medattn.cli import main
from napari_medattn.models.registry import DEFAULT_MODEL
from napari_medattn.inference import OutputRequest, attention_map_names, segment
from napari_medattn.inference.devices import cpu_has_native_bf16
from napari_medattn.io import read, read_volume, write_dicom_series
from napari_medattn.io.provenance import files_sha256
from napari_medattn.models import create, registry
from napari_medattn.models.card import ModelCard, default_classes
from test_cli_models import folders  # noqa: F401 (fixture: empty built-in and user folders)

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 33 x 41 x 25, 2 mm, LAS
NAMES = ["background", "dark", "bright"]
SCHEMA = Path(__file__).parents[1] / "docs" / "provenance.schema.json"


def validate_provenance(record: dict) -> None:
    """Fail unless ``record`` follows docs/provenance.schema.json (the published schema)."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(record)


def save_tiny(folder, name="tiny-unet", attention="none", seed=0):
    """A 3-class 3D U-Net small enough to run in a fraction of a second on a 2 mm head.

    Its card turns images to RAS and resamples them to 3 mm, so the pipeline has to bring
    the result back to the source grid.
    """
    torch.manual_seed(seed)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8],
              "attention": attention}
    card = ModelCard(name=name, architecture="unet", config=config,
                     classes=default_classes(NAMES), patch_size=(16, 16, 16), modality="MR",
                     spacing=(3.0, 3.0, 3.0), orientation="RAS",
                     normalization={"scheme": "zscore"}, training_data="none (untrained)",
                     license="BSD-3-Clause")
    return registry.save_model(create("unet", **config), card, folder)


@pytest.fixture
def models(folders):
    """No built-in models and one user model; returns (builtin dir, user dir, model dir)."""
    builtin, user = folders
    return builtin, user, save_tiny(user / "tiny")


def reference_labels(path, model_dir, **options):
    """What the library gives for the same file and model (the CLI must write exactly this)."""
    module, card = registry.load_model(model_dir)
    return segment(read_volume(path), module, card, device="cpu", **options)


def test_nifti_outputs_are_on_the_source_grid_and_equal_the_library(models, tmp_path, capsys):
    *_, model_dir = models
    out = tmp_path / "out"
    code = main(["segment", ANATOMICAL, "--out", str(out), "--model", "tiny-unet",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    written = out / "anatomical_labels.nii.gz"
    [labels] = read(written)
    source = read_volume(ANATOMICAL)
    assert labels.spatial_shape == source.spatial_shape == (33, 41, 25)
    np.testing.assert_array_equal(labels.affine, source.affine)
    # The file keeps the source header's geometry bit for bit (qform and sform).
    header, source_header = nib.load(written).header, nib.load(ANATOMICAL).header
    np.testing.assert_array_equal(header.get_best_affine(), source_header.get_best_affine())
    assert int(header["qform_code"]) == int(source_header["qform_code"])
    expected = reference_labels(ANATOMICAL, model_dir).labels.data
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    assert set(np.unique(expected)) <= {0, 1, 2}
    assert str(written) in capsys.readouterr().out


def test_every_dicom_series_gets_its_own_output_on_its_grid(models, tmp_path, capsys):
    *_, model_dir = models
    t1 = read_volume(ANATOMICAL, modality="MR")
    dicom = tmp_path / "dicom"
    write_dicom_series(dicom / "a", t1, series_description="T1 sag", series_number=4)
    # A second series on another grid: every other voxel of a part of the head.
    part = type(t1)(np.ascontiguousarray(t1.data[4:30:2, 3:39, 2:24]).round(),
                    t1.affine @ np.diag([2.0, 1, 1, 1]) @ _shift(4, 3, 2), "MR", {})
    write_dicom_series(dicom / "b", part, series_description="T1 sag", series_number=7)
    out = tmp_path / "out"
    assert main(["segment", str(dicom), "--out", str(out), "--model", "tiny-unet",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    series = read(dicom)
    assert [s.name for s in series] == ["T1 sag MR #4", "T1 sag MR #7"]
    for volume in series:
        stem = volume.name.replace(" ", "_").replace("_#", "_")
        [labels] = read(out / f"{stem}_labels.nii.gz")
        assert labels.spatial_shape == volume.spatial_shape
        np.testing.assert_allclose(labels.affine, volume.affine, rtol=0, atol=1e-6)
        module, card = registry.load_model(model_dir)
        expected = segment(volume, module, card, device="cpu").labels.data
        np.testing.assert_array_equal(np.asarray(labels.data), expected)
        record = json.loads((out / f"{stem}_provenance.json").read_text())
        [entry] = record["inputs"]
        assert entry["series_uid"] == volume.meta["series_uid"]
        assert entry["name"] == volume.name
        # A series' hash covers its own files only, whatever their names and order.
        assert entry["sha256"] == files_sha256(reversed(volume.meta["source_files"]))
        validate_provenance(record)


def _shift(*index):
    shift = np.eye(4)
    shift[:3, 3] = index
    return shift


def test_bad_file_is_one_sentence_and_the_batch_goes_on(models, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ANATOMICAL, inputs / "good.nii")
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    code = main(["segment", str(inputs / "broken.nii.gz"), str(inputs / "good.nii"),
                 "--out", str(out), "--model", "tiny-unet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    [line] = captured.err.strip().splitlines()
    assert line.startswith("medattn segment: broken.nii.gz is not a readable NIfTI file")
    assert line.endswith(".") and "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good_labels.nii.gz",
                                                     "good_provenance.json"]


def test_provenance_records_model_hash_and_parameters(models, tmp_path):
    *_, model_dir = models
    out = tmp_path / "out"
    assert main(["segment", ANATOMICAL, "--out", str(out), "--model", str(model_dir),
                 "--device", "cpu", "--overlap", "0.25", "--batch-size", "2"]) == 0
    record = json.loads((out / "anatomical_provenance.json").read_text())
    validate_provenance(record)
    assert record["command"] == "segment"
    assert record["model"]["name"] == "tiny-unet"
    assert record["model"]["weights_sha256"] == registry.weights_sha256(
        model_dir / registry.WEIGHTS_FILE)
    assert record["model"]["card"] == registry.load_model(model_dir)[1].to_dict()
    assert record["device"] == "cpu"
    # auto precision: bfloat16 exactly where the CPU computes it natively
    assert record["precision"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert record["parameters"]["overlap"] == 0.25 and record["parameters"]["batch_size"] == 2
    assert record["runtime_s"] >= record["details"]["segment_runtime_s"] > 0
    assert record["started_utc"] <= record["finished_utc"]
    import napari_medattn
    assert record["package_version"] == napari_medattn.__version__
    [entry] = record["inputs"]
    assert entry["path"] == ANATOMICAL
    assert entry["sha256"] == hashlib.sha256(open(ANATOMICAL, "rb").read()).hexdigest()
    np.testing.assert_array_equal(entry["affine_lps"], read_volume(ANATOMICAL).affine)
    assert record["outputs"] == {"labels": "anatomical_labels.nii.gz"}
    assert record["details"]["windows_predicted"] <= record["details"]["windows"]


def test_autocast_off_is_float32(models, tmp_path):
    *_, model_dir = models
    out = tmp_path / "out"
    assert main(["segment", ANATOMICAL, "--out", str(out), "--model", str(model_dir),
                 "--device", "cpu", "--autocast", "off"]) == 0
    record = json.loads((out / "anatomical_provenance.json").read_text())
    assert record["precision"] == "float32"
    assert record["parameters"]["use_autocast"] is False


def test_probability_uncertainty_and_attention_maps(models, tmp_path, capsys):
    _, user, _ = models
    gated = save_tiny(user / "gated", name="gated-unet", attention="gate", seed=1)
    out = tmp_path / "out"
    code = main(["segment", ANATOMICAL, "--out", str(out), "--model", "gated-unet",
                 "--device", "cpu", "--tta", "--uncertainty", "--probabilities",
                 "dark,2", "--attention"])
    assert code == 0, capsys.readouterr().err
    expected = reference_labels(ANATOMICAL, gated, outputs=OutputRequest(
        tta=True, uncertainty="variance", keep_probabilities=(1, 2)))
    source = read_volume(ANATOMICAL)
    for c, name in ((1, "dark"), (2, "bright")):
        [probability] = read(out / f"anatomical_probability_{c}_{name}.nii.gz")
        np.testing.assert_array_equal(probability.affine, source.affine)
        np.testing.assert_allclose(probability.data, expected.probabilities[c].data, atol=1e-6)
    [uncertainty] = read(out / "anatomical_uncertainty.nii.gz")
    np.testing.assert_allclose(uncertainty.data, expected.uncertainty.data, atol=1e-6)
    module, card = registry.load_model(gated)
    names = attention_map_names(module, card.patch_size)
    assert names  # the gate U-Net records its gates
    record = json.loads((out / "anatomical_provenance.json").read_text())
    assert record["parameters"]["attention_maps"] == names
    assert record["parameters"]["uncertainty"] == "variance"
    for name in names:
        [attention] = read(out / f"anatomical_attention_{name.replace('/', '_')}.nii.gz")
        assert attention.spatial_shape == source.spatial_shape
        assert 0 <= float(np.min(attention.data)) <= float(np.max(attention.data)) <= 1


def test_no_model_installed_and_none_named_is_one_sentence(models, tmp_path, capsys):
    _, user, _ = models
    shutil.rmtree(user)
    code = main(["segment", ANATOMICAL, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err == (f"medattn: The default model {DEFAULT_MODEL!r} is not installed; "
                            f"name a model with --model NAME or PATH (installed: none).\n")
    assert not (tmp_path / "out").exists()


def test_default_builtin_model_runs_when_none_is_named(models, tmp_path):
    builtin, *_ = models
    save_tiny(builtin / "default", name=DEFAULT_MODEL, seed=3)
    out = tmp_path / "out"
    assert main(["segment", ANATOMICAL, "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "anatomical_provenance.json").read_text())
    assert record["model"]["name"] == DEFAULT_MODEL


def test_outputs_never_collide_nor_overwrite_an_input(models, tmp_path, capsys):
    folder = tmp_path / "work"
    (folder / "x").mkdir(parents=True)
    (folder / "y").mkdir()
    shutil.copy(ANATOMICAL, folder / "x" / "head.nii")
    shutil.copy(ANATOMICAL, folder / "y" / "head.nii")
    # An input that is named like the first output would be, in the output folder itself.
    shutil.copy(ANATOMICAL, folder / "head_labels.nii")
    before = (folder / "head_labels.nii").read_bytes()
    code = main(["segment", str(folder / "x" / "head.nii"), str(folder / "y" / "head.nii"),
                 str(folder / "head_labels.nii"), "--out", str(folder), "--model",
                 "tiny-unet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (folder / "head_labels.nii").read_bytes() == before
    written = sorted(p.name for p in folder.glob("*_provenance.json"))
    assert written == ["head_2_provenance.json", "head_3_provenance.json",
                       "head_labels_provenance.json"]
    sources = {json.loads((folder / n).read_text())["inputs"][0]["path"] for n in written}
    assert sources == {str(folder / "x" / "head.nii"), str(folder / "y" / "head.nii"),
                       str(folder / "head_labels.nii")}


def test_folder_of_nifti_files_skips_earlier_results(models, tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(ANATOMICAL, folder / "a.nii")
    shutil.copy(ANATOMICAL, folder / "b.nii")
    out = folder / "results"
    args = ["segment", str(folder), "--out", str(out), "--model", "tiny-unet",
            "--device", "cpu"]
    assert main(args) == 0
    assert main(args) == 0  # a second run must not segment the first run's labels
    assert sorted(p.name for p in out.iterdir()) == [
        "a_labels.nii.gz", "a_provenance.json", "b_labels.nii.gz", "b_provenance.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["segment", str(empty), "--out", str(out), "--model", "tiny-unet"]) == 1
    assert capsys.readouterr().err == f"medattn segment: {empty} holds no NIfTI or DICOM files.\n"


def test_unknown_probability_class_is_one_sentence(models, tmp_path, capsys):
    code = main(["segment", ANATOMICAL, "--out", str(tmp_path / "out"), "--model",
                 "tiny-unet", "--probabilities", "liver"])
    assert code == 1
    assert capsys.readouterr().err == (
        "medattn: --probabilities names 'liver', which is not a class of the model "
        "(0=background, 1=dark, 2=bright).\n")


def test_plain_state_dict_with_architecture_config_and_patch_size(models, tmp_path, capsys):
    *_, model_dir = models
    module, _ = registry.load_model(model_dir)
    weights = tmp_path / "plain.pt"
    torch.save(module.state_dict(), weights)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8]}
    out = tmp_path / "out"
    code = main(["segment", ANATOMICAL, "--out", str(out), "--model", str(weights),
                 "--architecture", "unet", "--config", json.dumps(config),
                 "--patch-size", "16", "16", "16", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    card = ModelCard(name="plain", architecture="unet", config=config,
                     classes=default_classes(["background", "class 1", "class 2"]),
                     patch_size=(16, 16, 16))
    expected = segment(read_volume(ANATOMICAL), module, card, device="cpu").labels.data
    [labels] = read(out / "anatomical_labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    record = json.loads((out / "anatomical_provenance.json").read_text())
    assert record["model"]["weights_sha256"] == registry.weights_sha256(weights)
    assert record["model"]["card"]["patch_size"] == [16, 16, 16]
    capsys.readouterr()
    assert main(["segment", ANATOMICAL, "--out", str(out), "--model", str(weights),
                 "--architecture", "unet", "--config", "[1, 2]"]) == 1
    assert capsys.readouterr().err == ("medattn: --config must be a JSON object of "
                                       "architecture arguments.\n")


def test_progress_bar_counts_windows_on_a_terminal(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)

    class EveryUpdate(tqdm.tqdm):
        """Draws every update, however fast (tqdm's default redraws at most every 0.1 s)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", EveryUpdate)
    out = tmp_path / "out"
    assert main(["segment", ANATOMICAL, "--out", str(out), "--model", "tiny-unet",
                 "--device", "cpu", "--batch-size", "1"]) == 0
    windows = json.loads((out / "anatomical_provenance.json").read_text())["details"]["windows"]
    bar = capsys.readouterr().err
    # One update per batch (here one window each), ending at the total.
    drawn = re.findall(r"anatomical:\s+\d+%\|[^|]*\| (\d+)/(\d+)", bar)
    assert drawn[-1] == (str(windows), str(windows))
    assert [int(done) for done, _ in drawn] == list(range(windows + 1))
