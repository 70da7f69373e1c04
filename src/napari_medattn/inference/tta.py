"""Test-time augmentation by flips, and the uncertainty it yields.

Each window is predicted once per flip member (the input flipped along some spatial axes,
the output flipped back), and the class probabilities of the members are averaged.
Two uncertainty maps are offered, both in [0, 1]:

* ``"variance"``: the variance across members of each class probability, averaged over
  classes. It is exactly zero where all members agree, whatever their confidence.
* ``"entropy"``: the predictive entropy of the averaged probabilities divided by
  ``log(num_classes)`` (0 = one class certain, 1 = all classes equally likely). It needs
  no augmentation but does not separate disagreement from ambiguity.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from napari_medattn.errors import ModelError

UNCERTAINTY_KINDS = ("variance", "entropy")


def flip_members(spatial_dims: int, tta: bool | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The spatial axes each TTA member flips, the identity first.

    Parameters
    ----------
    spatial_dims : int
        Number of spatial axes (2 or 3).
    tta : bool or sequence of sequences of int
        False: the identity only. True: every subset of the spatial axes (8 members in
        3D). A sequence: those subsets (0-based spatial axes); the identity is added.
    """
    if tta is False or tta is None:
        return [()]
    if tta is True:
        axes = range(spatial_dims)
        return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
    members: list[tuple[int, ...]] = [()]
    for flip in tta:
        flip = tuple(sorted(int(a) for a in flip))
        if any(a < 0 or a >= spatial_dims for a in flip):
            raise ModelError(f"A test-time flip names axis {flip}, but the volume has "
                             f"{spatial_dims} spatial axes (0 to {spatial_dims - 1}).")
        if flip not in members:
            members.append(flip)
    return members


def predict_members(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    members: Sequence[tuple[int, ...]],
    activation: str,
    want_variance: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities of a window batch averaged over flip members.

    Parameters
    ----------
    forward : callable
        Maps a (B, C_in, *patch) tensor to (B, C, *patch) network outputs.
    batch : torch.Tensor
        The windows, (B, C_in, *patch).
    members : sequence of tuple of int
        Spatial axes flipped by each member (see :func:`flip_members`).
    activation : str
        ``"softmax"`` to turn outputs into probabilities over the class axis, ``"none"``
        when ``forward`` already returns probabilities.
    want_variance : bool
        Whether to return the class-averaged variance across members.

    Returns
    -------
    mean : torch.Tensor
        (B, C, *patch) float32 probabilities.
    variance : torch.Tensor or None
        (B, *patch) float32, the member variance averaged over classes.
    """
    outputs = []
    for flip in members:
        dims = [2 + a for a in flip]
        x = torch.flip(batch, dims) if dims else batch
        out = forward(x).float()
        if activation == "softmax":
            out = torch.softmax(out, dim=1)
        outputs.append(torch.flip(out, dims) if dims else out)
    if len(outputs) == 1:
        return outputs[0], torch.zeros_like(outputs[0][:, 0]) if want_variance else None
    stack = torch.stack(outputs)
    mean = stack.mean(dim=0)
    if not want_variance:
        return mean, None
    # Two passes (deviations from the mean), so members that agree give exactly zero
    # instead of the rounding noise of E[p^2] - E[p]^2.
    variance = ((stack - mean) ** 2).mean(dim=0).mean(dim=1)
    return mean, variance


def normalised_entropy(probabilities: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Predictive entropy of class probabilities over ``dim``, divided by log(classes).

    Returns values in [0, 1]; a single-class model has zero entropy everywhere.
    """
    classes = probabilities.shape[dim]
    if classes < 2:
        return torch.zeros_like(probabilities.select(dim, 0))
    p = probabilities.clamp_min(1e-12)
    entropy = -(probabilities * p.log()).sum(dim=dim)
    return entropy / float(torch.log(torch.tensor(float(classes))))
