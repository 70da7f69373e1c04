import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_medattn.training.augment import (
    DEFAULT_AUGMENTATION,
    TRANSFORMS,
    AugmentationConfigError,
    Compose,
    RandomAffine,
)
from napari_medattn.training.tensor_ops import bias_field, bias_monomials, gaussian_blur, warp


def _blobs(batch=3, size=24):
    """Images whose intensity is 10 inside a labelled ball, plus a 2^3 marker (label 2, 100).

    The marker is two voxels wide so that nearest sampling at up to 1.25 voxel steps
    (a zoom of 0.8) cannot skip it."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij")).float()
    label = torch.zeros(batch, 1, size, size, size, dtype=torch.int64)
    for b in range(batch):
        centre = torch.tensor([8.0 + 2 * b, 12.0, 14.0 - b]).view(3, 1, 1, 1)
        label[b, 0][((grid - centre) ** 2).sum(0) <= 16] = 1
        label[b, 0, 17:19, 6 + b:8 + b, 9:11] = 2
    image = torch.where(label == 2, 100.0, label.float() * 10.0)
    return image, label


def _only(name, **params):
    return Compose.from_config({"transforms": [{"name": name, "p": 1.0, **params}]})


def test_flip_is_exact():
    image, label = _blobs()
    out_image, out_label = _only("flip", axes=[1])(image, label, seed=0)
    assert torch.equal(out_image, image.flip(3)) and torch.equal(out_label, label.flip(3))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_probability_zero_returns_the_input_bit_for_bit(name):
    image, label = _blobs()
    out_image, out_label = Compose.from_config(
        {"transforms": [{"name": name, "p": 0.0}]})(image, label, seed=3)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


@pytest.mark.parametrize("name, params", [
    ("affine", {"rotation_deg": 0.0, "scale": [1.0, 1.0], "translation": 0.0}),
    ("elastic", {"magnitude": [0.0, 0.0]}),
    ("gamma", {"gamma": [1.0, 1.0]}),
    ("contrast", {"factor": [1.0, 1.0]}),
    ("noise", {"std": [0.0, 0.0]}),
    ("low_resolution", {"zoom": [1.0, 1.0]}),
    ("bias_field", {"strength": 0.0}),
])
def test_identity_parameters_leave_the_batch_unchanged(name, params):
    image, label = _blobs()
    out_image, out_label = _only(name, **params)(image, label, seed=1)
    assert torch.equal(out_label, label)
    torch.testing.assert_close(out_image, image, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name, params", [
    ("affine", {"rotation_deg": 30.0, "scale": [0.8, 1.2], "translation": 3.0}),
    ("elastic", {"magnitude": [3.0, 4.0], "control_spacing": 8.0}),
])
def test_spatial_transforms_keep_image_and_label_aligned(name, params):
    image, label = _blobs()
    out_image, out_label = _only(name, **params)(image, label, seed=7)
    assert not torch.equal(out_label, label)
    for b in range(image.shape[0]):
        # The brightest voxel samples inside the marker's hull, so its nearest source voxel
        # is a marker voxel: image and label moved together.
        brightest = int(out_image[b, 0].argmax())
        assert int(out_label[b, 0].flatten()[brightest]) == 2
        # The ball: linear image and nearest label agree except on its boundary.
        inside_image = (out_image[b, 0] > 5) & (out_image[b, 0] < 50)
        inside_label = out_label[b, 0] == 1
        dice = 2 * (inside_image & inside_label).sum() / (inside_image.sum() + inside_label.sum())
        assert dice > 0.9


def test_affine_rotation_matches_a_quarter_turn():
    image, label = _blobs(batch=1)
    affine = RandomAffine(p=1.0)
    params = {"angles": torch.tensor([math.pi / 2, 0.0, 0.0]), "scale": torch.tensor(1.0),
              "shift": torch.zeros(3)}
    out_image, out_label = affine.apply(image, label, params)
    # Output voxel q reads the input at R (q - c) + c: a quarter turn in the (1, 2) plane.
    expected = torch.rot90(label, k=-1, dims=(3, 4))
    assert torch.equal(out_label, expected)
    torch.testing.assert_close(out_image, torch.rot90(image, k=-1, dims=(3, 4)), atol=1e-4,
                               rtol=0)


def test_affine_scale_magnifies_about_the_centre():
    image, label = _blobs(batch=1)
    params = {"angles": torch.zeros(3), "scale": torch.tensor(2.0), "shift": torch.zeros(3)}
    _, out_label = RandomAffine(p=1.0).apply(image, label, params)
    # A zoom of 2 about the centre doubles the ball's diameter: 8x its voxels.
    ratio = (out_label == 1).sum() / (label == 1).sum()
    assert 6.5 < float(ratio) < 9.5


def test_same_seed_same_batch_other_seed_other_batch():
    image, label = _blobs()
    everything = Compose.from_config(
        {"transforms": [dict(t, p=1.0) for t in DEFAULT_AUGMENTATION["transforms"]]})
    first = everything(image, label, seed=11)
    second = everything(image, label, generator=torch.Generator().manual_seed(11))
    other = everything(image, label, seed=12)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.allclose(first[0], other[0])
    assert torch.equal(image, _blobs()[0])  # inputs untouched


def test_default_pipeline_runs_on_a_float_batch():
    image = torch.randn(4, 2, 20, 18, 16)
    label = (image[:, :1] > 0.5).long()
    out_image, out_label = Compose.from_config(DEFAULT_AUGMENTATION)(image, label, seed=0)
    assert out_image.shape == image.shape and out_image.dtype == torch.float32
    assert out_label.shape == label.shape and out_label.dtype == torch.int64
    assert set(out_label.unique().tolist()) <= {0, 1}
    assert torch.isfinite(out_image).all()
    only_image, none = Compose.from_config(DEFAULT_AUGMENTATION)(image, seed=0)
    assert none is None and torch.equal(only_image, out_image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batch_matches_cpu_batch_for_the_same_seed():
    image, label = _blobs()
    pipeline = Compose.from_config(
        {"transforms": [dict(t, p=1.0) for t in DEFAULT_AUGMENTATION["transforms"]]})
    cpu = pipeline(image, label, seed=5)
    gpu = pipeline(image.cuda(), label.cuda(), seed=5)
    assert gpu[0].device.type == "cuda"
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-2, rtol=1e-3)


def test_config_round_trips_through_json():
    pipeline = Compose.from_config({"transforms": [{"name": "gamma"}, {"name": "flip",
                                                                       "axes": [0, 2]}]})
    config = pipeline.config
    assert config == {"transforms": [{"name": "gamma", "p": 0.3, "gamma": [0.7, 1.5]},
                                     {"name": "flip", "p": 0.5, "axes": [0, 2]}]}
    assert Compose.from_config(json.loads(json.dumps(config))).config == config
    assert Compose.from_config(DEFAULT_AUGMENTATION).config == DEFAULT_AUGMENTATION


@pytest.mark.parametrize("config, message", [
    ({"transforms": [{"name": "swirl"}]}, "Unknown augmentation"),
    ({"transforms": [{"name": "gamma", "p": 1.5}]}, "p must be in"),
    ({"transforms": [{"name": "gamma", "gamma": [2.0, 1.0]}]}, "two increasing"),
    ({"transforms": [{"name": "flip", "sigma": 1}]}, "does not take sigma"),
    ({"transforms": [{"name": "flip", "axes": [3]}]}, "axes must be among"),
    ({"steps": []}, "'transforms' list"),
    ({"transforms": [{"name": "affine", "rotation_deg": "15"}]}, "rotation_deg must be a num"),
    ({"transforms": [{"name": "noise", "std": 0.1}]}, "std must be a list of numbers"),
    ({"transforms": [{"name": "flip", "axes": [0.5]}]}, "axes must be among"),
])
def test_bad_configs_are_refused(config, message):
    with pytest.raises(AugmentationConfigError, match=message):
        Compose.from_config(config)


def test_bad_batches_are_refused():
    pipeline = Compose.from_config(DEFAULT_AUGMENTATION)
    with pytest.raises(AugmentationConfigError, match="float"):
        pipeline(torch.zeros(1, 1, 4, 4, 4, dtype=torch.int64), seed=0)
    with pytest.raises(AugmentationConfigError, match="do not match"):
        pipeline(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5, dtype=torch.int64),
                 seed=0)
    with pytest.raises(AugmentationConfigError, match="either a generator or a seed"):
        pipeline(torch.zeros(1, 1, 4, 4, 4))


@pytest.mark.parametrize("sigma", [1.0, 2.0, (0.0, 1.0, 2.0)])
def test_gaussian_blur_matches_scipy(sigma):
    volume = np.random.default_rng(0).normal(size=(2, 14, 15, 16)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(volume)[None], sigma)[0].numpy()
    sigmas = (0.0, *sigma) if isinstance(sigma, tuple) else (0.0, sigma, sigma, sigma)
    reference = ndimage.gaussian_filter(volume, sigmas, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_bias_field_is_the_exponential_of_its_polynomial():
    coefficients = torch.randn(2, 20, dtype=torch.float64) * 0.3
    field = bias_field(coefficients, (5, 6, 7))
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64)
                               for n in (5, 6, 7)], indexing="ij")
    log = sum(coefficients[:, m, None, None, None] * z ** i * y ** j * x ** k
              for m, (i, j, k) in enumerate(bias_monomials()))
    torch.testing.assert_close(field[:, 0], torch.exp(log))


def test_gamma_follows_its_formula():
    image, label = _blobs(batch=2)
    out, _ = _only("gamma", gamma=[2.0, 2.0])(image, label, seed=0)
    low = image.amin(dim=(2, 3, 4), keepdim=True)
    span = image.amax(dim=(2, 3, 4), keepdim=True) - low
    torch.testing.assert_close(out, ((image - low) / span) ** 2 * span + low)


def test_warp_reads_the_given_coordinates():
    volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 1, 4, 5, 6)
    coords = torch.zeros(1, 3, 1, 1, 2)
    coords[0, :, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    coords[0, :, 0, 0, 1] = torch.tensor([2.5, 0.0, 0.0])  # halfway between two voxels
    out = warp(volume, coords)
    assert float(out[0, 0, 0, 0, 0]) == pytest.approx(float(volume[0, 0, 1, 2, 3]))
    assert float(out[0, 0, 0, 0, 1]) == pytest.approx(float(volume[0, 0, 2:4, 0, 0].mean()))
