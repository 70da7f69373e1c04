"""The segmentation training loss: soft Dice plus cross-entropy (nnU-Net's default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Added to numerator and denominator of the soft Dice so empty classes give 1, not 0/0.
DICE_SMOOTH = 1e-5


def soft_dice(logits: torch.Tensor, target: torch.Tensor, *,
              include_background: bool = False) -> torch.Tensor:
    """Soft Dice per class over the whole batch ("batch Dice").

    Parameters
    ----------
    logits : Tensor ``(B, K, *spatial)``
        Unnormalised class scores.
    target : Tensor ``(B, 1, *spatial)`` or ``(B, *spatial)``
        Integer class indices in ``[0, K)``.
    include_background : bool
        Keep class 0 (nnU-Net leaves it out: it dominates and adds nothing).

    Returns
    -------
    Tensor ``(K,)`` or ``(K - 1,)``
        ``(2 sum(p t) + s) / (sum p + sum t + s)`` per class, in float32, where ``p`` are
        the softmax probabilities, ``t`` the one-hot target and ``s`` :data:`DICE_SMOOTH`.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    probabilities = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    axes = [0] + list(range(2, logits.ndim))
    overlap = (probabilities * one_hot).sum(axes)
    total = probabilities.sum(axes) + one_hot.sum(axes)
    dice = (2 * overlap + DICE_SMOOTH) / (total + DICE_SMOOTH)
    return dice if include_background else dice[1:]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``cross_entropy + (1 - mean foreground soft Dice)``, a float32 scalar.

    Parameters
    ----------
    logits : Tensor ``(B, K, *spatial)``
    target : Tensor ``(B, 1, *spatial)`` or ``(B, *spatial)``, integer class indices.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    cross_entropy = F.cross_entropy(logits.float(), target.long())
    dice = soft_dice(logits, target, include_background=logits.shape[1] == 1)
    return cross_entropy + (1.0 - dice.mean())
