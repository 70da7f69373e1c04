"""scripts/train_registration.py: the training pair's field convention end to end, and
that its loss can teach a network (one pair, a few steps)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_medattn.io.volume import Volume
from napari_medattn.models import create
from napari_medattn.registration import DisplacementField, exponentiate, warp
from napari_medattn.registration.learned import network_velocity

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_registration.py"
CROP = 32


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_registration_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: its dataclass looks its own module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def pool():
    """One smooth random 'brain' of 40^3 voxels of 2 mm (LPS axes flipped as in a RAS
    file), intensities in [0, 1], and labels 1-3 by intensity thirds inside a ball."""
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.standard_normal((40, 40, 40)), 2.0)
    image = (image - image.min()) / (image.max() - image.min())
    labels = np.digitize(image, np.quantile(image, [1 / 3, 2 / 3])).astype(np.int64) + 1
    ball = np.linalg.norm(np.indices(image.shape) - 19.5, axis=0) < 18
    labels[~ball] = 0
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [40.0, 40.0, -40.0]
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), 4).permute(3, 0, 1, 2)
    return torch.from_numpy(image.astype(np.float32))[None], one_hot.float(), affine


def _pair(script, pool, seed=1):
    images, _, affine = pool
    return script.training_pair(images, {}, np.array([4, 4, 4]), affine,
                                np.random.default_rng(seed),
                                torch.Generator().manual_seed(seed), crop=CROP, contrast=0.0)


def test_the_target_velocity_warps_the_moving_crop_back_onto_the_fixed_one(script, pool):
    """The target, exponentiated as register_learned does (fixed mm -> moving mm) and
    applied through the one resampler, turns the moving crop into the fixed crop."""
    pair = _pair(script, pool)
    assert float(pair.target.norm(dim=0).max()) > 2.0  # mm: a real motion
    fixed = Volume(pair.fixed.numpy(), pair.affine, "MR")
    moving = Volume(pair.moving.numpy(), pair.affine, "MR")
    field = exponentiate(pair.target.numpy(), pair.coarse)
    warped = np.asarray(warp(moving, field, fixed).data)
    inner = (slice(7, CROP - 7),) * 3  # away from the crop's borders (motion up to 10 mm)
    before = np.abs(pair.moving.numpy() - pair.fixed.numpy())[inner].mean()
    after = np.abs(warped - pair.fixed.numpy())[inner].mean()
    # What is left is mostly the second interpolation's blur of the moving crop.
    assert after < 0.6 * before, (before, after)
    # The opposite sign (the motion itself) doubles the misalignment.
    wrong = np.asarray(warp(moving, exponentiate(-pair.target.numpy(), pair.coarse),
                            fixed).data)
    assert np.abs(wrong - pair.fixed.numpy())[inner].mean() > 1.5 * before
    # Point by point: a fixed point through exp(target), then through the motion the
    # moving crop reads the fixed anatomy by, comes back to itself.
    points = field.grid_points()[3:-3, 3:-3, 3:-3].reshape(-1, 3)
    motion = DisplacementField(pair.motion.numpy(), pair.coarse)
    round_trip = np.linalg.norm(motion(field(points)) - points, axis=1)
    moved = np.linalg.norm(motion(points) - points, axis=1)
    assert round_trip.max() < 0.1 * moved.max(), (round_trip.max(), moved.max())


def test_the_label_loss_is_lowest_at_the_true_velocity(script, pool):
    pair = _pair(script, pool)
    _, one_hot, affine = pool
    truth = float(script.label_loss(pair.target, pair, one_hot, affine))
    none = float(script.label_loss(torch.zeros_like(pair.target), pair, one_hot, affine))
    assert truth < 0.5 * none, (truth, none)


def test_a_few_gradient_steps_on_one_pair_lower_the_loss_and_the_velocity_error(script,
                                                                                 pool):
    torch.manual_seed(0)
    pair = _pair(script, pool)
    _, one_hot, affine = pool
    net = create("voxelmorph", channels=[8, 8, 8], shrink=2).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    stride = script.STRIDE
    losses, errors = [], []
    for _ in range(40):
        velocity = network_velocity(net, pair.fixed, pair.moving, pair.affine)[
            :, ::stride, ::stride, ::stride]
        loss = script.label_loss(velocity, pair, one_hot, affine)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        errors.append(float((velocity.detach() - pair.target).square().sum(0).mean()))
    no_motion = float(pair.target.square().sum(0).mean())
    assert losses[-1] < 0.7 * losses[0], losses
    assert errors[-1] < 0.8 * no_motion, (errors[-1], no_motion)
