"""The registration networks: any input size, identity at start, config round trip."""

import json

import numpy as np
import pytest
import torch

from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.models import create
from napari_medattn.registration.learned import network_velocity

TINY = {"transmorph": {"channels": [8, 16], "num_heads": [2, 2], "window_size": 2},
        "voxelmorph": {"channels": [8, 8, 8]}}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shrink", [1, 2, 4])
@pytest.mark.parametrize("shape", [(13, 17, 11), (16, 24, 8)])
def test_any_input_size_gives_a_velocity_on_the_input_grid(name, shrink, shape):
    torch.manual_seed(0)
    net = create(name, shrink=shrink, **TINY[name]).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 2, *shape))
    assert out.shape == (1, 3, *shape) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_an_untrained_net_starts_near_the_identity_and_round_trips_its_config(name):
    torch.manual_seed(0)
    net = create(name, **TINY[name]).eval()
    again = create(name, **json.loads(json.dumps(net.config)))
    again.load_state_dict(net.state_dict())
    x = torch.rand(1, 2, 20, 20, 20)
    with torch.no_grad():
        first = net(x)
        assert torch.equal(first, again.eval()(x))
    # VoxelMorph's flow-layer initialisation: (almost) no motion before training.
    assert float(first.abs().max()) < 0.05


def test_the_velocity_is_turned_into_lps_mm_through_the_grid_affine():
    class Constant(torch.nn.Module):
        """One voxel along array axis 0, nothing along the others."""

        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 0] = 1.0
            return out

    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, :3] = affine[:3, :3][:, [1, 0, 2]]  # array axis 0 runs along LPS y
    image = torch.zeros(4, 5, 6)
    velocity = network_velocity(Constant(), image, image, affine)
    assert velocity.shape == (3, 4, 5, 6)
    assert torch.allclose(velocity[:, 0, 0, 0], torch.tensor([0.0, -2.0, 0.0]))


@pytest.mark.parametrize("name", sorted(TINY))
def test_wrong_inputs_and_options_get_one_sentence(name):
    net = create(name, **TINY[name])
    with pytest.raises(DimensionError, match="channels"):
        net(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(DimensionError, match="shape"):
        net(torch.rand(2, 8, 8, 8))
    with pytest.raises(ModelError, match="shrink"):
        create(name, shrink=0)
