"""``medattn models``: built-in and user models listed with their cards, the default marked,
broken model folders reported while the others are still listed."""

import json

import pytest
import torch

from napari_medattn.cli import main
from napari_medattn.cli.models import FIELD_WIDTH
from napari_medattn.models.registry import DEFAULT_MODEL, default_model
from napari_medattn.errors import ModelError
from napari_medattn.models import create, registry
from napari_medattn.models.card import ModelCard, default_classes


def save(folder, name, **card_fields):
    torch.manual_seed(0)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8]}
    card = ModelCard(name=name, architecture="unet", config=config,
                     classes=default_classes(["background", "lesion"]), patch_size=(16, 16, 8),
                     **card_fields)
    return registry.save_model(create("unet", **config), card, folder)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Empty built-in and user model folders (and no MEDATTN_MODEL_PATH), in tmp_path."""
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    builtin.mkdir()
    monkeypatch.setattr(registry, "BUILTIN_DIR", builtin)
    monkeypatch.setattr(registry, "user_model_dir", lambda: user)
    monkeypatch.delenv("MEDATTN_MODEL_PATH", raising=False)
    return builtin, user


def test_lists_a_saved_user_model_with_its_card(folders, capsys):
    _, user = folders
    folder = save(user / "mine", "my-lesions", modality="CT", spacing=(0.8, 0.8, 2.5),
                  normalization={"scheme": "ct_window", "window": [-100, 200]},
                  training_data="20 CTs of our site", metrics={"dice_lesion": 0.8125},
                  evaluated_on="5 held-out CTs", license="CC-BY-4.0")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "my-lesions  [user]"
    width = 2 + FIELD_WIDTH
    fields = {line[:width].strip(): line[width:] for line in lines[1:]}
    assert fields["location"] == str(folder)
    assert fields["classes"] == "0 background (#000000), 1 lesion (#e6194b)"
    assert fields["modality"] == "CT"
    assert fields["spacing"] == "0.8 x 0.8 x 2.5 mm"
    assert fields["patch size"] == "16 x 16 x 8 voxels"
    assert fields["normalisation"] == "ct_window, window=[-100, 200]"
    assert fields["training data"] == "20 CTs of our site"
    assert fields["metrics"] == "dice_lesion=0.8125"
    assert fields["licence"] == "CC-BY-4.0"
    assert fields["weights sha256"] == registry.weights_sha256(folder / registry.WEIGHTS_FILE)
    assert fields["architecture"].startswith("unet {")


def test_json_lists_builtin_first_with_full_cards_and_marks_the_default(folders, capsys):
    builtin, user = folders
    save(builtin / "b", DEFAULT_MODEL)
    save(builtin / "a", "other-builtin")
    save(user / "u", "user-model")
    assert main(["models", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["source"], m["default"]) for m in document] == [
        ("other-builtin", "builtin", False), (DEFAULT_MODEL, "builtin", True),
        ("user-model", "user", False)]
    for entry in document:
        card = ModelCard.read(f"{entry['path']}/{registry.CARD_FILE}")
        assert entry["card"] == json.loads(card.to_json())
    assert default_model().path == builtin / "b"


def test_broken_user_model_is_reported_and_the_others_listed(folders, capsys):
    _, user = folders
    save(user / "good", "good-model")
    save(user / "bad", "bad-model")
    (user / "bad" / registry.CARD_FILE).write_text("{not json")
    assert main(["models"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "good-model  [user]"
    assert "bad-model" not in captured.out
    [line] = captured.err.splitlines()
    assert line.startswith(f"medattn models: Skipped the model in {user / 'bad'}: The model "
                           f"card is not valid JSON")


def test_nothing_installed(folders, capsys):
    _, user = folders
    assert main(["models"]) == 0
    assert capsys.readouterr().out == (
        f"No models are installed (built-in weights are missing and there are no user "
        f"models in {user}).\n")
    with pytest.raises(ModelError, match=f"default model '{DEFAULT_MODEL}' is not installed"):
        default_model()
