"""segment_multimodal: any subset of a multimodal model's modalities through the one
pipeline; labels on the reference scan's exact grid, equal to the network's own argmax;
region volumes, modality weights and maps; bad inputs get one typed error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medattn.errors import DimensionError, GeometryError, ModelError
from napari_medattn.inference.multimodal import segment_multimodal
from napari_medattn.inference.window_options import WindowOptions
from napari_medattn.io.volume import Volume
from napari_medattn.models import create
from napari_medattn.models.brats import classes_to_labels
from napari_medattn.models.card import ModelCard

MODALITIES = ["t1", "t1ce", "t2", "flair"]
SHAPE = (16, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _card(net, **changes) -> ModelCard:
    fields = dict(name="dmaf-tiny", architecture="dmaf_net", config=net.config,
                  classes=[{"name": n, "color": "#ff0000"} for n in
                           ("background", "necrotic core", "oedema", "enhancing tumour")],
                  modality="MR", patch_size=SHAPE, in_channels=4)
    return ModelCard(**{**fields, **changes})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create("dmaf_net", modalities=MODALITIES, out_channels=4, channels=[4, 8]).eval()
    with torch.no_grad():  # a bias towards the tumour classes, so labels are not all 0
        net.head.bias.copy_(torch.tensor([0.0, 0.2, 0.3, 0.25]))
    return net, _card(net)


def _scans(seed=0, shape=SHAPE, head=slice(3, 13)) -> dict[str, Volume]:
    """Four scans: a noisy bright head in a dark (zero) field of view."""
    rng = np.random.default_rng(seed)
    scans = {}
    for k, m in enumerate(MODALITIES):
        data = np.zeros(shape, np.float32)
        data[head, head, head] = rng.normal(10 + k, 1.0, (head.stop - head.start,) * 3)
        scans[m] = Volume(data, AFFINE.copy(), "MR", {"name": m})
    return scans


def test_labels_equal_the_networks_argmax(one_torch_thread, model):
    net, card = model
    scans = _scans()
    given = {"t1ce": scans["t1ce"], "flair": scans["flair"]}
    result = segment_multimodal(given, net, card, device="cpu", use_autocast=False,
                                windows=WindowOptions(overlap=0.0))
    x = torch.zeros(1, 4, *SHAPE)
    x[0, 1], x[0, 3] = torch.from_numpy(scans["t1ce"].data), torch.from_numpy(scans["flair"].data)
    with torch.no_grad():
        expected = classes_to_labels(net(x, torch.tensor([False, True, False, True]))
                                     .argmax(1)[0].numpy())
    np.testing.assert_array_equal(result.labels.data, expected)
    assert set(np.unique(result.labels.data)) <= {0, 1, 2, 4}
    assert result.reference == "t1ce"
    np.testing.assert_array_equal(result.labels.affine, scans["t1ce"].affine)
    # 2 mm voxels: 8 mm^3 each, 1000 mm^3 per mL.
    assert result.volumes_ml["WT"] == pytest.approx(np.count_nonzero(expected) * 0.008)
    assert result.volumes_ml["ET"] == pytest.approx(np.count_nonzero(expected == 4) * 0.008)
    weights = result.modality_weights
    assert sorted(weights) == ["flair", "t1ce"] and sum(weights.values()) == pytest.approx(1)
    assert result.provenance["modalities"] == ["t1ce", "flair"]


def test_reference_grid_and_maps(one_torch_thread, model):
    net, card = model
    scans = _scans(1)
    moved_affine = np.diag([2.5, 2.5, 2.0, 1.0])
    moved_affine[:3, 3] = (1.0, -2.0, 3.0)
    flair = Volume(scans["flair"].data[:, :14], moved_affine, "MR", {"name": "flair"})
    given = {"T1": scans["t1"], "flair": flair}
    result = segment_multimodal(given, net, card, reference="flair", attention=True,
                                device="cpu", use_autocast=False)
    assert result.reference == "flair" and result.labels.data.shape == (16, 14, 16)
    np.testing.assert_array_equal(result.labels.affine, moved_affine)
    assert sorted(result.attention) == ["flair", "t1"]
    total = sum(a.data for a in result.attention.values())
    # Each voxel's contributions of the given modalities sum to 1 (blended windows too).
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    np.testing.assert_array_equal(result.attention["t1"].affine, moved_affine)


def test_only_the_heads_box_runs(one_torch_thread, model):
    """Outside the union of the given scans' head boxes (head + 4 voxels) nothing runs:
    background labels and zero weight; inside, the weights of the given scans sum to 1."""
    net, card = model
    scans = _scans(2, shape=(28, 28, 28), head=slice(10, 18))
    result = segment_multimodal({"t2": scans["t2"], "flair": scans["flair"]}, net, card,
                                attention=True, device="cpu", use_autocast=False)
    inside = np.zeros((28, 28, 28), bool)
    inside[6:22, 6:22, 6:22] = True
    assert result.labels.data[inside].any() and not result.labels.data[~inside].any()
    total = result.attention["t2"].data + result.attention["flair"].data
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-4)
    assert not total[~inside].any()


def test_bad_inputs(model):
    net, card = model
    scans = _scans()
    with pytest.raises(DimensionError, match="No modality was given"):
        segment_multimodal({}, net, card)
    with pytest.raises(DimensionError, match="same scan was given as t1 and t2"):
        segment_multimodal({"t1": scans["t1"], "t2": scans["t1"]}, net, card)
    with pytest.raises(ModelError, match="does not know the modality 'pd'"):
        segment_multimodal({"t1": scans["t1"], "pd": scans["t2"]}, net, card)
    far = np.diag([2.0, 2.0, 2.0, 1.0])
    far[:3, 3] = 500.0
    away = Volume(scans["t2"].data, far, "MR", {"name": "t2"})
    with pytest.raises(GeometryError, match="covers 0% of the t1 scan in patient space"):
        segment_multimodal({"t1": scans["t1"], "t2": away}, net, card)
    single = _card(net, config={"spatial_dims": 3})
    with pytest.raises(ModelError, match="takes one scan"):
        segment_multimodal({"t1": scans["t1"]}, net, single)
