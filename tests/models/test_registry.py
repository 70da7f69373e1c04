import dataclasses
import json
import pickle
import zipfile

import pytest
import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import create
from napari_medattn.models import registry
from napari_medattn.models.card import ClassInfo, ModelCard
from napari_medattn.models.registry import (
    builtin_models,
    list_models,
    load_model,
    read_state_dict,
    save_model,
    weights_sha256,
)

CONFIG = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8]}


def make_card(**changes):
    card = ModelCard(
        name="tiny-unet", architecture="unet", config=dict(CONFIG),
        classes=[ClassInfo("background", "#000000"), ClassInfo("liver", "#aa3300"),
                 {"name": "spleen", "color": "#00FF00"}],
        patch_size=(16, 16, 16), modality="CT", spacing=(1.5, 1.5, 2.0), orientation="RAS",
        normalization={"scheme": "ct_window", "window": [-160, 240]},
        training_data="synthetic spheres (scripts/make_synthetic.py, seed 0)",
        training_procedure="5 epochs of the training loop", metrics={"dice_liver": 0.91},
        evaluated_on="20 held-out synthetic volumes", license="BSD-3-Clause")
    return dataclasses.replace(card, **changes) if changes else card


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return create("unet", **CONFIG)


def same_outputs(a, b):
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# ----------------------------------------------------------------------------- card


def test_card_json_round_trip():
    card = make_card()
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.classes[2] == ClassInfo("spleen", "#00ff00")
    assert again.patch_size == (16, 16, 16) and again.spacing == (1.5, 1.5, 2.0)
    assert again.class_names == ["background", "liver", "spleen"] and again.num_classes == 3
    assert "not for clinical use" in again.intended_use


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown field(s) colour"),
    ({"patch_size": [16, 0, 16]}, "patch size"),
    ({"spacing": [1.0, 1.0]}, "spacing"),
    ({"orientation": "RAR"}, "orientation"),
    ({"modality": "XR"}, "modality"),
    ({"classes": [{"name": "bg", "color": "red"}]}, "colour 'red'"),
    ({"normalization": {"scheme": "ct_window"}}, "needs window"),
    ({"metrics": {"dice": "high"}}, "metrics"),
    ({"card_version": 99}, "newer napari-medattn"),
])
def test_card_validation_messages(change, message):
    data = make_card().to_dict()
    data.update(change)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelCard.from_dict(data)


def test_card_missing_fields_and_bad_json():
    with pytest.raises(ModelError, match="lacks the field"):
        ModelCard.from_dict({"name": "x"})
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelCard.from_json("{name: x}")


# ----------------------------------------------------------------------------- our format


def test_save_and_load_round_trip(tmp_path):
    net = tiny_net()
    folder = save_model(net, make_card(), tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "weights.safetensors"]
    card_on_disk = json.loads((folder / "card.json").read_text())
    assert card_on_disk["weights_sha256"] == weights_sha256(folder / "weights.safetensors")
    loaded, card = load_model(folder)
    assert same_outputs(net, loaded) and not loaded.training
    assert card == dataclasses.replace(make_card(), weights_sha256=card_on_disk["weights_sha256"])


def test_saving_removes_only_its_own_temporaries(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "notes.tmp").write_text("the user's own notes")
    (folder / "weights.safetensors.tmp").write_text("also the user's")
    save_model(tiny_net(), make_card(), folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "card.json", "notes.tmp", "weights.safetensors", "weights.safetensors.tmp"]
    assert (folder / "notes.tmp").read_text() == "the user's own notes"
    good = {p.name: p.read_bytes() for p in folder.iterdir()}

    # A failure half-way (here: while hashing the new weights) keeps the old model whole.
    def fail(path):
        raise OSError("disk full")

    monkeypatch.setattr(registry, "weights_sha256", fail)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_net(seed=5), make_card(), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == good


def test_damaged_weights_are_detected(tmp_path):
    folder = save_model(tiny_net(), make_card(), tmp_path / "tiny")
    other = tiny_net(seed=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(folder / "weights.safetensors"))
    with pytest.raises(ModelError, match="do not match the hash"):
        load_model(folder)


def test_builtin_and_user_models_are_found(tmp_path, monkeypatch):
    assert builtin_models(tmp_path / "empty") == []
    (tmp_path / "empty").mkdir()
    assert builtin_models(tmp_path / "empty") == []
    save_model(tiny_net(), make_card(), tmp_path / "shipped" / "tiny")
    assert [e.name for e in builtin_models(tmp_path / "shipped")] == ["tiny-unet"]

    monkeypatch.setattr(registry, "BUILTIN_DIR", tmp_path / "shipped")
    monkeypatch.setattr(registry, "user_model_dir", lambda: tmp_path / "user")
    save_model(tiny_net(2), make_card(name="mine"), tmp_path / "user" / "mine")
    save_model(tiny_net(3), make_card(name="from-env"), tmp_path / "env" / "a")
    save_model(tiny_net(4), make_card(name="tiny-unet"), tmp_path / "env" / "clash")
    monkeypatch.setenv("MEDATTN_MODEL_PATH", str(tmp_path / "env"))
    entries = list_models()
    assert [(e.name, e.source) for e in entries] == [
        ("tiny-unet", "builtin"), ("from-env", "user"), ("mine", "user")]
    module, card = load_model("mine")
    assert card.name == "mine" and same_outputs(module, tiny_net(2))
    with pytest.raises(ModelError, match="no model called 'nope'.*tiny-unet, from-env, mine"):
        load_model("nope")
    # A broken user card: listing with a problems list skips it and says why.
    broken = tmp_path / "env" / "broken"
    save_model(tiny_net(), make_card(name="broken"), broken)
    (broken / "card.json").write_text('{"name": "broken"}')
    with pytest.raises(ModelError, match="lacks the field"):
        list_models()
    problems = []
    assert [e.name for e in list_models(problems)] == ["tiny-unet", "from-env", "mine"]
    assert len(problems) == 2
    assert "broken" in problems[0] and "lacks the field" in problems[0]
    assert "the name 'tiny-unet' is taken by" in problems[1]


def test_user_model_dir_is_per_user():
    path = registry.user_model_dir()
    assert path.name == "models" and path.parent.name == "napari-medattn"


# ----------------------------------------------------------------------------- .pt files


def test_state_dict_pt_with_a_chosen_architecture(tmp_path):
    net = tiny_net()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    for name in ("plain.pt", "checkpoint.pth"):
        loaded, card = load_model(tmp_path / name, architecture="unet", config=CONFIG,
                                  card=make_card())
        assert same_outputs(net, loaded) and card.name == "tiny-unet"
        assert card.weights_sha256 == weights_sha256(tmp_path / name)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "bare.safetensors"))
    loaded, _ = load_model(tmp_path / "bare.safetensors", architecture="unet", config=CONFIG,
                           card=make_card())
    assert same_outputs(net, loaded)
    # A card beside the weights (same stem) is used when none is passed.
    (tmp_path / "bare.json").write_text(make_card(name="beside").to_json())
    assert load_model(tmp_path / "bare.safetensors")[1].name == "beside"
    # A callable architecture and no card: classes and window come from the config.
    small = nn.Conv3d(1, 2, 3, padding=1)
    torch.save(small.state_dict(), tmp_path / "conv.pt")

    def factory(in_channels, out_channels, patch_size):
        return nn.Conv3d(in_channels, out_channels, 3, padding=1)

    loaded, card = load_model(tmp_path / "conv.pt", architecture=factory,
                              config={"in_channels": 1, "out_channels": 2, "patch_size": 8})
    assert card.num_classes == 2 and card.patch_size == (8, 8, 8) and card.architecture == "factory"
    assert same_outputs(small, loaded)
    with pytest.raises(ModelError, match="say which architecture"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(tmp_path / "plain.pt", architecture="unet", card=make_card(),
                   config={**CONFIG, "channels": [4, 16]})


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    zipped = tmp_path / "zipped.pt"
    torch.save({"weight": torch.zeros(2), "evil": Payload(marker)}, zipped)
    assert not marker.exists()  # saving did not run the payload
    for path in (raw, zipped):
        with pytest.raises(ModelError, match="refuses to unpickle code"):
            read_state_dict(path)
        with pytest.raises(ModelError, match="refuses to unpickle code"):
            load_model(path, architecture="unet", config=CONFIG, card=make_card())
    assert not marker.exists()


def test_torchscript_is_refused(tmp_path):
    path = tmp_path / "model.ts"
    torch.jit.script(nn.Conv3d(1, 2, 1)).save(str(path))
    with pytest.raises(ModelError, match="TorchScript"):
        load_model(path)


# ----------------------------------------------------------------------------- MONAI bundles


def write_bundle(root, network_def, net):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    inference = {
        "num_classes": 3,
        "network_def": network_def,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16],
                    "sw_batch_size": 4},
    }
    metadata = {
        "name": "Tiny spleen bundle", "version": "0.1.0", "description": "A test bundle.",
        "copyright": "Apache-2.0", "data_source": "synthetic",
        "network_data_format": {
            "inputs": {"image": {"modality": "CT", "num_channels": 1,
                                 "spatial_shape": [16, 16, 16]}},
            "outputs": {"pred": {"num_channels": 3,
                                 "channel_def": {"0": "background", "1": "spleen", "2": "liver"}}},
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


MONAI_DEF = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
             "out_channels": "@num_classes", "channels": [4, 8], "strides": [2],
             "num_res_units": 0}


def monai_net():
    from monai.networks.nets import UNet

    torch.manual_seed(7)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=[4, 8], strides=[2],
                num_res_units=0)


def test_monai_bundle_folder_and_zip(tmp_path):
    net = monai_net()
    bundle = write_bundle(tmp_path / "spleen_bundle", MONAI_DEF, net)
    loaded, card = load_model(bundle)
    assert same_outputs(net, loaded)
    assert card.weights_sha256 == weights_sha256(bundle / "models" / "model.pt")
    assert card.architecture == "monai:UNet" and card.config["out_channels"] == 3
    assert card.class_names == ["background", "spleen", "liver"]
    assert card.modality == "CT" and card.spacing == (1.5, 1.5, 2.0) and card.orientation == "RAS"
    assert card.normalization == {"scheme": "ct_window", "window": [-57.0, 164.0]}
    assert card.patch_size == (16, 16, 16) and card.license == "Apache-2.0"
    # The bundle's network saved in this package's format loads back the same.
    again, again_card = load_model(save_model(loaded, card, tmp_path / "converted"))
    assert same_outputs(net, again) and again_card.architecture == "monai:UNet"

    archive = tmp_path / "spleen_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in bundle.rglob("*"):
            zf.write(path, path.relative_to(tmp_path))
    zipped, zipped_card = load_model(archive)
    assert same_outputs(net, zipped) and zipped_card.class_names == card.class_names


@pytest.mark.parametrize("network_def, message", [
    ({**MONAI_DEF, "channels": "$[4, 8]"}, "refuses to execute code"),
    ({"_target_": "os.system", "command": "true"}, "only networks of monai.networks.nets"),
    ({**MONAI_DEF, "_mode_": "callable"}, "_mode_"),
])
def test_monai_bundle_with_code_is_refused(tmp_path, network_def, message):
    bundle = write_bundle(tmp_path / "bad", network_def, monai_net())
    with pytest.raises(ModelError, match=message):
        load_model(bundle)


def test_monai_bundle_expressions_are_never_evaluated(tmp_path):
    marker = tmp_path / "code-ran"
    bundle = write_bundle(tmp_path / "sneaky", {**MONAI_DEF, "out_channels": "@sneaky"},
                          monai_net())
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["sneaky"] = f"$open({str(marker)!r}, 'w') and 3"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="refuses to execute code"):
        load_model(bundle)
    assert not marker.exists()


def test_zip_with_escaping_paths_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("configs/inference.json", "{}")
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ModelError, match="outside itself"):
        load_model(archive)
    assert not (tmp_path.parent / "outside.txt").exists()
