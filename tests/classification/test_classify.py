"""The classifier's path from a scan to a probability and a heat map: the card's grid on
permuted, flipped and oblique scans (an oracle network that reads the lesion's side stands
in for trained weights), the window fit, and bad input."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from napari_medattn.classification import classifier_input, classify, heat_map
from napari_medattn.classification.training import classifier_card
from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.io.volume import Volume
from napari_medattn.models import create
from napari_medattn.models.card import ModelCard

WINDOW = (32, 40, 32)


class SideOracle(nn.Module):
    """Class-1 logit: how far the brightest spot lies towards the window's high end along
    array axis 0 (on the card's RAS grid: towards the patient's right)."""

    def forward(self, x):
        weights = torch.softmax(8.0 * x.flatten(1), dim=1).reshape(x.shape)
        axis0 = torch.arange(x.shape[2], dtype=x.dtype).reshape(1, 1, -1, 1, 1)
        position = (weights * axis0).flatten(1).sum(dim=1)
        logit = (position - (x.shape[2] - 1) / 2) / 2.0
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def card(**kw):
    kw = {"orientation": "RAS", "normalization": {"scheme": "zscore"}, **kw}
    return ModelCard(name="oracle", architecture="medformer", task="classification",
                     classes=[("none", "#000000"), ("right", "#ff0000")], patch_size=WINDOW,
                     **kw)


def head(affine, lesion_mm, shape=(28, 30, 26)):
    """A bright block (the head) with a brighter Gaussian spot at ``lesion_mm`` (LPS)."""
    index = np.indices(shape).reshape(3, -1).T
    mm = index @ affine[:3, :3].T + affine[:3, 3]
    data = np.zeros(shape, np.float32)
    data[3:-3, 3:-3, 3:-3] = 1.0
    spot = np.exp(-((mm - lesion_mm) ** 2).sum(1) / (2 * 3.0 ** 2)).reshape(shape)
    return Volume(data + 4.0 * spot.astype(np.float32), affine, "MR", {"name": "phantom"})


def affine_of(matrix, spacing):
    affine = np.eye(4)
    affine[:3, :3] = matrix * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ np.array([14.0, 15.0, 13.0])  # grid centre at 0 mm
    return affine


AFFINES = {
    "lps": affine_of(np.eye(3), (2.0, 2.0, 2.0)),
    "permuted-flipped": affine_of(np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float),
                                  (2.0, 1.8, 2.2)),
    "oblique": affine_of(Rotation.from_euler("xyz", [20, -10, 15], degrees=True).as_matrix(),
                         (2.0, 2.0, 2.0)),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("spacing", [None, (2.5, 2.5, 2.5)], ids=["native", "resampled"])
def test_the_lesion_side_is_read_in_patient_space(name, spacing):
    # LPS x > 0 is the patient's left: a left lesion is class 0, a right one class 1.
    left = classify(head(AFFINES[name], [12.0, 2.0, 0.0]), SideOracle(), card(spacing=spacing),
                    device="cpu")
    right = classify(head(AFFINES[name], [-12.0, 2.0, 0.0]), SideOracle(),
                     card(spacing=spacing), device="cpu")
    assert left.probability < 0.2 and right.probability > 0.8
    assert left.predicted == "none" and right.predicted == "right"
    assert np.isclose(left.probabilities.sum(), 1.0)
    assert left.provenance["model"] == "oracle" and left.provenance["device"] == "cpu"


def test_a_short_axis_is_padded_as_the_window_engine_pads_and_a_long_one_cut_to_the_body():
    shape = (28, 30, 100)
    data = np.zeros(shape, np.float32)
    data[4:24, 5:25, 60:90] = 1.0            # the body, far from the centre of the long axis
    data[10, 10, 70] = 3.0
    x = classifier_input(Volume(data, np.eye(4), "MR", {"name": "long"}),
                         card(orientation=None, normalization={"scheme": "none"}))
    assert x.shape == (1, *WINDOW)
    body = x[0] > 0.5
    # Padding like sliding_window_inference: (window - n) // 2 voxels before.
    assert body.any(axis=(1, 2)).nonzero()[0][0] == (32 - 28) // 2 + 4
    assert body.any(axis=(0, 2)).nonzero()[0][0] == (40 - 30) // 2 + 5
    # The long axis (100 > 32) is cut to 32 voxels centred on the body (60-90 -> 59-91).
    assert body.any(axis=(0, 1)).sum() == 30
    assert np.unravel_index(int(x[0].argmax()), WINDOW) == (10 + 2, 10 + 5, 70 - 59)


def test_bad_input_and_other_models_are_refused_with_one_sentence():
    volume = head(AFFINES["lps"], [0.0, 0.0, 0.0])
    with pytest.raises(ModelError, match="not a classifier"):
        classify(volume, SideOracle(), ModelCard(name="seg", architecture="unet",
                                                 classes=[("a", "#000000")],
                                                 patch_size=(32, 32, 32)))
    nan = Volume(np.where(volume.data > 1, np.nan, volume.data), volume.affine, "MR",
                 {"name": "nan"})
    with pytest.raises(DimensionError, match="NaN"):
        classify(nan, SideOracle(), card(), device="cpu")
    with pytest.raises(DimensionError):
        classify(Volume(np.zeros((2, 8, 8, 8), np.float32), np.eye(4), "MR"), SideOracle(),
                 card())
    with pytest.raises(ModelError, match="heat map"):
        heat_map(volume, SideOracle(), card(), "saliency")


def test_heat_maps_lie_on_the_scan_and_follow_it_when_its_axes_are_permuted(one_torch_thread):
    torch.manual_seed(0)
    shipped = classifier_card("", "")
    net = create(shipped.architecture, **shipped.config).eval()
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-90.0, -110.0, -80.0]
    volume = head(affine, [10.0, 20.0, 0.0], shape=(60, 70, 56))
    # The same voxels stored with axes (2, 0, 1) and the affine that says so.
    permuted = Volume(np.ascontiguousarray(volume.data.transpose(2, 0, 1)),
                      affine[:, [2, 0, 1, 3]], "MR", {"name": "permuted"})
    for kind in ("gradcam", "routing"):
        plain = heat_map(volume, net, shipped, kind, device="cpu")
        turned = heat_map(permuted, net, shipped, kind, device="cpu")
        assert plain.volume.data.shape == volume.data.shape
        assert np.array_equal(plain.volume.affine, volume.affine)
        assert np.array_equal(turned.volume.affine, permuted.affine)
        assert np.allclose(turned.volume.data, plain.volume.data.transpose(2, 0, 1), atol=1e-4)
        assert plain.volume.data.max() > 0
    assert plain.method == "dssa" and plain.target is None  # routing is class-free


class BrightSpotOracle(nn.Module):
    """A classifier whose class-1 logit is a soft maximum of its feature map: it "finds"
    the brightest spot of the scan, as a presence classifier should."""

    spatial_dims, in_channels = 3, 1

    def __init__(self):
        super().__init__()
        self.features = nn.Conv3d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1, 1))

    def forward(self, x):
        f = self.features(x)
        logit = torch.logsumexp(4.0 * f[:, 0].flatten(1), dim=1) / 4.0 - 2.0
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


@pytest.mark.parametrize("name", ["permuted-flipped", "oblique"])
def test_explain_takes_a_classifier_and_its_map_peaks_at_the_lesion(name):
    from napari_medattn.explain import explain

    lesion_mm = np.array([-10.0, 8.0, 6.0])
    volume = head(AFFINES[name], lesion_mm)
    (found,) = explain(volume, BrightSpotOracle(), card(spacing=(2.5, 2.5, 2.5)), "hirescam",
                       layer="features", device="cpu")
    assert found.target == 1 and found.volume.data.shape == volume.data.shape
    assert np.array_equal(found.volume.affine, volume.affine)
    # The independent truth: where the phantom's spot was put, in patient mm.
    peak = np.unravel_index(int(np.argmax(found.volume.data)), found.volume.data.shape)
    peak_mm = volume.index_to_mm(np.array([peak]))[0]
    body = np.argwhere(np.asarray(volume.data) > 0.5)
    chance_mm = np.linalg.norm(volume.index_to_mm(body) - lesion_mm, axis=1).mean()
    assert np.linalg.norm(peak_mm - lesion_mm) < min(3.0, chance_mm / 4)
