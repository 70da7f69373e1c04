"""Model size and cost: parameter counts and FLOP counts at a stated input size.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the
multiply-accumulates of matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``) and
convolutions (plain, grouped, depth-wise and transposed) as **2 FLOPs per MAC**. Bias
additions, normalisation, activations, softmax, pooling, interpolation, padding and
element-wise gating are *not* counted; for convolutional and attention networks they are a
few percent of the total.

Attention computed with :func:`torch.nn.functional.scaled_dot_product_attention` *is*
counted (``Q K^T`` and ``A V``, 2 FLOPs per MAC each): PyTorch's counter knows the CUDA
kernels, and :func:`count_flops` adds the CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``)
with the same formula so a count does not depend on the device. Attention written as
``matmul``/``einsum`` (sparse selection, windows with a bias) is counted through the
matrix products it decomposes into.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from napari_medattn.errors import ModelError

__all__ = ["count_parameters", "count_flops"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any module; parameters shared between submodules are counted once.
    trainable_only : bool
        Count only parameters with ``requires_grad``.

    Returns
    -------
    int
        The number of parameters (not bytes).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # Same formula PyTorch registers for its CUDA attention kernels.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one inference forward pass of ``model`` on a zero input of ``input_shape``.

    Parameters
    ----------
    model : nn.Module
        The model; it is run once in eval mode under ``torch.no_grad`` on the device and
        dtype of its first parameter (CPU float32 for a parameter-free module), and its
        train/eval mode is restored afterwards.
    input_shape : sequence of int
        Full input shape, batch and channels first, e.g. ``(1, 1, 96, 96, 96)`` (voxels).

    Returns
    -------
    int
        Matrix-product and convolution FLOPs (2 per multiply-accumulate), including
        scaled-dot-product attention; see the module docstring for what is not counted.

    Raises
    ------
    ModelError
        If ``input_shape`` is not a sequence of positive integers.
    """
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ModelError(f"The input shape must be positive integers (batch, channels, *space); "
                         f"got {shape}.")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
        with torch.no_grad(), counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
