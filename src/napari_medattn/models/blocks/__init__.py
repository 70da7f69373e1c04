"""Attention blocks, one mechanism per module, 2D and 3D from the same code.

Every block takes ``spatial_dims`` (2 or 3) as its first constructor argument, works on
channels-first tensors ``(B, C, *grid)`` and reports its attention through
:mod:`napari_medattn.models.capture` without changing its output.

By the review's taxonomy: channel attention (:class:`SqueezeExcitation`,
:class:`EfficientChannelAttention`), branch attention (:class:`SelectiveKernel`), channel and
spatial (:class:`CBAM`, :class:`SpatialChannelSE`), spatial gating (:class:`AttentionGate`),
global (:class:`MultiHeadSelfAttention`, :class:`TransformerBlock`, :class:`NonLocalBlock`),
local (:class:`WindowAttention`, :class:`SwinBlock`), sparse selection
(:class:`DualSparseSelectionAttention`, :class:`DSSABlock`) and cross-stream
(:class:`CrossAttention`).
"""

from napari_medattn.models.blocks.cbam import CBAM
from napari_medattn.models.blocks.cross_attention import CrossAttention
from napari_medattn.models.blocks.dmaf import DMAFBlock
from napari_medattn.models.blocks.dssa import DSSABlock, DualSparseSelectionAttention
from napari_medattn.models.blocks.eca import EfficientChannelAttention, eca_kernel_size
from napari_medattn.models.blocks.gate import AttentionGate
from napari_medattn.models.blocks.global_attention import MultiHeadSelfAttention, TransformerBlock
from napari_medattn.models.blocks.nonlocal_block import NonLocalBlock
from napari_medattn.models.blocks.region_fusion import RegionFusionBlock
from napari_medattn.models.blocks.scse import SpatialChannelSE
from napari_medattn.models.blocks.se import SqueezeExcitation
from napari_medattn.models.blocks.sk import SelectiveKernel
from napari_medattn.models.blocks.window import SwinBlock, WindowAttention

__all__ = [
    "AttentionGate",
    "CBAM",
    "CrossAttention",
    "DMAFBlock",
    "DSSABlock",
    "DualSparseSelectionAttention",
    "EfficientChannelAttention",
    "MultiHeadSelfAttention",
    "NonLocalBlock",
    "RegionFusionBlock",
    "SelectiveKernel",
    "SpatialChannelSE",
    "SqueezeExcitation",
    "SwinBlock",
    "TransformerBlock",
    "WindowAttention",
    "eca_kernel_size",
]
