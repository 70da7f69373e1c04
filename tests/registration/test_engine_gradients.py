"""The linear stage's closed-form gradients (the compiled CPU kernels, through the engine's
dispatch) against autograd through the plain torch losses."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medattn.io import read_volume
from napari_medattn.registration import Settings, optimise, similarity
from napari_medattn.registration.engine import normalise_intensities, pyramid

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"
FIXED = SAMPLES / "nibabel_anatomical.nii.gz"
MOVED = SAMPLES / "nibabel_anatomical_moved.nii.gz"


def test_closed_form_metric_gradients_equal_autograd():
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(4000, dtype=torch.float64, generator=generator)
    noise = torch.rand(4000, dtype=torch.float64, generator=generator)
    # Some moved values outside [0, 1] (clamped: no gradient) and some zero weights.
    moved = (1.1 * fixed + 0.3 * noise - 0.1).requires_grad_(True)
    weight = (torch.rand(4000, dtype=torch.float64, generator=generator) > 0.1).double()
    for name in ("mse", "mi"):
        reference = similarity.loss(name, fixed, moved, weight)
        expected, = torch.autograd.grad(reference, moved)
        value, gradient = similarity.loss_and_gradient(name, fixed, moved.detach(), weight)
        assert float(value) == pytest.approx(float(reference), rel=1e-9)
        # MI's closed form drops the eps of the logarithms: agreement to 1e-4 relative.
        assert torch.allclose(gradient, expected, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="closed-form"):
        similarity.loss_and_gradient("ncc", fixed, moved.detach(), weight)


def _torch_matrix(run, params: torch.Tensor, kind: str) -> torch.Tensor:
    """The parameterisation written with torch operations, for autograd."""
    if kind == "affine":
        linear = torch.eye(3, dtype=params.dtype) + params[3:12].reshape(3, 3) / run.radius
    else:
        w = params[3:6] / run.radius
        zero = w[0] * 0
        skew = torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                            torch.stack([-w[1], w[0], zero])])
        linear = torch.linalg.matrix_exp(skew)
        if kind == "similarity":
            linear = linear * torch.exp(params[6] / run.radius)
    centre = params.new_tensor(run.centre)
    top = torch.cat([linear, (centre - linear @ centre + params[:3])[:, None]], 1)
    return torch.cat([top, params.new_tensor([[0.0, 0.0, 0.0, 1.0]])], 0)


@pytest.mark.parametrize("compiled", [True, False], ids=["cpu-kernels", "torch-closed-form"])
@pytest.mark.parametrize("metric", ["mse", "mi"])
def test_parameter_gradients_equal_autograd_on_the_nibabel_pair(metric, compiled):
    fixed, moved = read_volume(FIXED), read_volume(MOVED)
    factors = (2,)
    levels = [pyramid(normalise_intensities(np.asarray(v.data, np.float32)), v.affine, factors)
              for v in (fixed, moved)]
    run = optimise.Run(levels[0], levels[1], None, Settings(metric=metric, levels=factors),
                       None, None, None)
    # The compiled kernels are the CPU route; the torch closed form the other devices'.
    run.compiled = compiled
    sampled = run._linear_level(0, metric)
    plain = run._level(0, subsample=True)
    start = np.eye(4)
    # Off-grid offsets: at exact grid coordinates the trilinear slope is one-sided and
    # autograd and the forward difference may pick different sides (both valid).
    start[:3, 3] = [2.0137, -3.0291, 1.0173]
    rng = np.random.default_rng(0)
    for kind, count in optimise.PARAMETERS.items():
        params = rng.normal(0, 3, count)
        matrix, derivatives = run._matrix(params, kind)
        loss, gradient = run._linear_loss(sampled, start @ matrix, metric)
        ours = run._parameter_gradient(start, derivatives, gradient)
        leaf = torch.tensor(params, requires_grad=True)
        full = torch.tensor(start) @ _torch_matrix(run, leaf, kind)
        assert np.allclose(full.detach().numpy(), start @ matrix, atol=1e-9)
        full = full.float()
        reference = run._loss(plain, plain[0] @ full[:3, :3].T + full[:3, 3], metric)
        reference.backward()
        assert float(loss) == pytest.approx(float(reference), rel=1e-5)
        expected = leaf.grad.numpy()
        # float32 sums in a different order: agreement to 1e-3 relative (a wrong term is O(1)).
        assert np.abs(ours - expected).max() < 1e-3 * np.abs(expected).max(), kind


def test_rotation_and_its_derivatives_near_and_away_from_zero():
    """Rodrigues' formula against scipy (its Taylor branch below 1e-4 rad too) and the
    closed-form derivatives against central differences of scipy's rotation."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(1)
    for w in (rng.normal(0, 0.5, 3), rng.normal(0, 2.0, 3), np.array([3e-5, -2e-5, 1e-5]),
              np.zeros(3)):
        rotation = optimise._rotation(w)
        assert np.abs(rotation - Rotation.from_rotvec(w).as_matrix()).max() < 1e-14
        step = 1e-6
        numeric = np.stack([(Rotation.from_rotvec(w + step * e).as_matrix()
                             - Rotation.from_rotvec(w - step * e).as_matrix()) / (2 * step)
                            for e in np.eye(3)])
        assert np.abs(optimise._rotation_derivatives(w, rotation) - numeric).max() < 1e-8
