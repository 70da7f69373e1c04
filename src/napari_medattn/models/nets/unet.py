"""The U-Net family: one nnU-Net-style skeleton, 2D and 3D, whose attention is chosen by name.

An ablation changes exactly one thing: the skeleton, channels, depth, normalisation and
up/down-sampling stay the same and only :func:`stage_attention` (what is inserted where)
differs. Where each attention goes, for ``L = len(channels)`` stages (stage ``s`` works at
``1/2**s`` of the input size; stage ``L-1`` is the bottleneck):

============  ===========================================  ==============================
attention     module                                       default stages
============  ===========================================  ==============================
``none``      nothing (the plain U-Net baseline)           --
``se``        squeeze-and-excitation after the conv block  all (encoder and decoder)
``eca``       efficient channel attention, same place      all
``cbam``      CBAM, same place                             all
``scse``      concurrent spatial and channel SE, same      all
``gate``      Attention U-Net gate on each skip connection all skips (stages 0..L-2)
``window``    a Swin block pair (regular + shifted)        stages >= 2 (1/4 and coarser)
``dssa``      one DSSA block with a per-stage top-k        stages >= 2 (1/4 and coarser)
``global``    ``depth`` (2) transformer blocks             the bottleneck only (TransUNet)
============  ===========================================  ==============================

Window and DSSA attention start at 1/4 resolution because token attention at full 3D
resolution costs far more than the convolutions around it, and the literature advises
convolutions early and attention late; ``attention_stages`` overrides the default. DSSA's
top-k follows the DSSAU-Net by resolution (1 region at 1/4, 4 at 1/8, 16 at 1/16, all at
1/32; see :func:`dssa_default_topk`); the ``topk`` option overrides it (one value, or a list
with one entry per stage). The global bottleneck has no position embedding: zero padding
in the convolutions before it already tells positions apart, and the net stays usable on
any input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models.blocks.cbam import CBAM
from napari_medattn.models.blocks.common import check_input, conv_nd, crop_to, pad_to_multiple
from napari_medattn.models.blocks.dssa import DSSABlock
from napari_medattn.models.blocks.eca import EfficientChannelAttention
from napari_medattn.models.blocks.gate import AttentionGate
from napari_medattn.models.blocks.global_attention import TransformerBlock
from napari_medattn.models.blocks.scse import SpatialChannelSE
from napari_medattn.models.blocks.se import SqueezeExcitation
from napari_medattn.models.blocks.window import SwinBlock
from napari_medattn.models.nets._config import (
    ConfiguredNet,
    check_choice,
    check_io,
    positive_int,
    positive_ints,
)
from napari_medattn.models.nets._layers import ConvBlock, UpConv

__all__ = ["UNet", "UNET_ATTENTIONS", "stage_attention", "default_attention_stages"]


def heads_for(channels: int, head_dim: int) -> int:
    """Attention heads of a ``channels``-wide stage: ``channels // head_dim``, at least 1."""
    return max(1, channels // head_dim)


def dssa_default_topk(stage: int) -> int | None:
    """DSSAU-Net's per-stage top-k by resolution: 1 at 1/4 and finer, 4 at 1/8, 16 at
    1/16 and every region (None) at 1/32 and coarser."""
    return {0: 1, 1: 1, 2: 1, 3: 4, 4: 16}.get(stage)


def dssa_stage_kwargs(topk: int | None, n_win: int, token_keep: float) -> dict[str, Any]:
    """DSSA block arguments for one stage. A full-attention stage (``topk`` None) also keeps
    every token and uses a single region, which makes it exactly dense attention (plus LePE)
    without padding the grid to ``n_win``."""
    if topk is None:
        return {"topk": None, "n_win": 1, "token_keep": 1.0}
    return {"topk": topk, "n_win": n_win, "token_keep": token_keep}


def _pick(value: Any, stage: int, what: str) -> Any:
    # A per-stage option given as a list is indexed by the stage; a scalar serves every stage.
    if isinstance(value, (list, tuple)):
        if stage >= len(value):
            raise ModelError(f"{what} lists {len(value)} stages but stage {stage} needs one.")
        return value[stage]
    return value


def _se(spatial_dims: int, channels: int, stage: int, reduction: int = 16) -> nn.Module:
    return SqueezeExcitation(spatial_dims, channels, reduction=reduction)


def _eca(spatial_dims: int, channels: int, stage: int) -> nn.Module:
    return EfficientChannelAttention(spatial_dims, channels)


def _cbam(spatial_dims: int, channels: int, stage: int, reduction: int = 16,
          spatial_kernel: int = 7) -> nn.Module:
    return CBAM(spatial_dims, channels, reduction=reduction, spatial_kernel=spatial_kernel)


def _scse(spatial_dims: int, channels: int, stage: int, reduction: int = 2) -> nn.Module:
    return SpatialChannelSE(spatial_dims, channels, reduction=reduction)


def _gate(spatial_dims: int, channels: int, stage: int, gate_channels: int,
          inter_channels: int | None = None) -> nn.Module:
    return AttentionGate(spatial_dims, channels, gate_channels, inter_channels=inter_channels)


def _global(spatial_dims: int, channels: int, stage: int, depth: int = 2, head_dim: int = 32,
            mlp_ratio: float = 4.0) -> nn.Module:
    heads = heads_for(channels, head_dim)
    return nn.Sequential(*(TransformerBlock(spatial_dims, channels, heads, mlp_ratio=mlp_ratio)
                           for _ in range(positive_int(depth, "global depth"))))


def _window(spatial_dims: int, channels: int, stage: int, window_size: int = 7,
            head_dim: int = 32, mlp_ratio: float = 4.0) -> nn.Module:
    heads = heads_for(channels, head_dim)
    return nn.Sequential(*(SwinBlock(spatial_dims, channels, heads, window_size=window_size,
                                     shift=shift, mlp_ratio=mlp_ratio)
                           for shift in (False, True)))


_DEFAULT = object()


def _dssa(spatial_dims: int, channels: int, stage: int, topk: Any = _DEFAULT, n_win: Any = 7,
          token_keep: float = 1 / 8, head_dim: int = 32, mlp_ratio: float = 3.0) -> nn.Module:
    k = dssa_default_topk(stage) if topk is _DEFAULT else _pick(topk, stage, "topk")
    return DSSABlock(spatial_dims, channels, head_dim=head_dim, mlp_ratio=mlp_ratio,
                     **dssa_stage_kwargs(k, _pick(n_win, stage, "n_win"), token_keep))


# name -> (builder, options the builder accepts). The blocks are imported at the top: importing
# any block runs models/blocks/__init__.py, which loads them all anyway (about 50-110 ms of
# the 4-6 s that importing napari_medattn.models takes, almost all of it torch; measured with
# python -X importtime on the shared 2-core machine, loaded), so function-level imports
# saved nothing.
_BUILDERS: dict[str, Any] = {
    "se": (_se, ("reduction",)),
    "eca": (_eca, ()),
    "cbam": (_cbam, ("reduction", "spatial_kernel")),
    "scse": (_scse, ("reduction",)),
    "gate": (_gate, ("inter_channels",)),
    "window": (_window, ("window_size", "head_dim", "mlp_ratio")),
    "dssa": (_dssa, ("topk", "n_win", "token_keep", "head_dim", "mlp_ratio")),
    "global": (_global, ("depth", "head_dim", "mlp_ratio")),
}

#: Every attention choice of the U-Net family.
UNET_ATTENTIONS: tuple[str, ...] = ("none", "se", "eca", "cbam", "scse", "gate", "window",
                                    "dssa", "global")


def default_attention_stages(attention: str, n_stages: int) -> tuple[int, ...]:
    """The stages that get ``attention`` by default in a U-Net of ``n_stages`` stages.

    For ``gate`` these are the skip connections (stages ``0..n_stages-2``); for the others
    the stages after whose conv blocks (encoder and decoder) the attention is inserted.
    """
    check_choice(attention, UNET_ATTENTIONS, "U-Net attention")
    if attention == "none":
        return ()
    if attention == "gate":
        return tuple(range(n_stages - 1))
    if attention in ("window", "dssa"):
        return tuple(range(min(2, n_stages - 1), n_stages))
    if attention == "global":
        return (n_stages - 1,)
    return tuple(range(n_stages))


def stage_attention(name: str, spatial_dims: int, channels: int, stage: int,
                    gate_channels: int | None = None, **options: Any) -> nn.Module:
    """Build the attention module ``name`` for one U-Net stage.

    Parameters
    ----------
    name : str
        One of :data:`UNET_ATTENTIONS` other than ``"none"``.
    spatial_dims : int
        2 or 3.
    channels : int
        Channels of the stage's features (for ``gate``: of the skip connection).
    stage : int
        Stage index (0 = full resolution); selects per-stage options such as DSSA's top-k.
    gate_channels : int, optional
        Channels of the coarser gating signal; required for ``gate`` only.
    **options
        Options of that attention; unknown ones raise :class:`ModelError`.

    Returns
    -------
    nn.Module
        A module mapping ``(B, channels, *grid)`` to the same shape (``gate``: called as
        ``gate(skip, coarser)``).
    """
    check_choice(name, [a for a in UNET_ATTENTIONS if a != "none"], "U-Net attention")
    _check_options(name, options)
    builder = _BUILDERS[name][0]
    if name == "gate":
        if gate_channels is None:
            raise ModelError("A gate needs gate_channels, the channels of the coarser signal.")
        options["gate_channels"] = gate_channels
    return builder(spatial_dims, channels, stage, **options)


def _check_stages(attention: str, attention_stages: Any, n: int) -> tuple[int, ...]:
    """Explicit ``attention_stages`` checked against what ``attention`` allows."""
    limit = n - 1 if attention == "gate" else n  # gates sit on the n-1 skip connections
    if isinstance(attention_stages, (str, bytes)) or not isinstance(attention_stages, Sequence) \
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in attention_stages):
        raise ModelError(f"attention_stages must be a list of stage numbers, "
                         f"not {attention_stages!r}.")
    stages = tuple(sorted(set(attention_stages)))
    if attention == "none" and stages:
        raise ModelError("attention_stages must be empty when attention is 'none'.")
    if any(s < 0 or s >= limit for s in stages):
        raise ModelError(f"attention_stages must lie in 0..{limit - 1} for {attention} "
                         f"attention with {n} stages, not {list(attention_stages)}.")
    if attention == "global" and stages != (n - 1,):
        raise ModelError(f"global attention goes at the bottleneck only, stage {n - 1}.")
    return stages


def _check_options(attention: str, options: dict[str, Any]) -> None:
    """Refuse options the chosen attention does not take (even where no stage uses them)."""
    accepted = () if attention == "none" else _BUILDERS[attention][1]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise ModelError(f"Unknown option(s) {', '.join(unknown)} for {attention} attention; "
                         f"valid options are: {valid}.")


class _EncoderStage(nn.Module):
    def __init__(self, conv: nn.Module, attention: nn.Module | None) -> None:
        super().__init__()
        self.conv = conv
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.attention is None else self.attention(x)


class _DecoderStage(nn.Module):
    def __init__(self, up: nn.Module, gate: nn.Module | None, conv: nn.Module,
                 attention: nn.Module | None) -> None:
        super().__init__()
        self.up = up
        self.gate = gate
        self.conv = conv
        self.attention = attention

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            skip = self.gate(skip, coarse)
        x = self.conv(torch.cat([self.up(coarse), skip], dim=1))
        return x if self.attention is None else self.attention(x)


class UNet(ConfiguredNet, nn.Module):
    """U-Net (nnU-Net style) in 2D or 3D with a named attention per stage.

    Encoder stage ``s`` is a :class:`ConvBlock` (two conv-instance norm-LeakyReLU layers;
    stride 2 in the first conv for ``s > 0``); decoder stage ``s`` upsamples the coarser
    features with a 2x2(x2) transposed convolution, concatenates the skip connection and
    applies a conv block; a 1x1 convolution gives the logits. See the module docstring for
    where each attention goes.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Input channels (modalities).
    out_channels : int
        Output channels (classes, logits).
    channels : sequence of int
        Feature channels per stage; its length is the number of stages (at least 2).
    attention : str
        One of :data:`UNET_ATTENTIONS`.
    attention_stages : sequence of int, optional
        Stages that get the attention; default :func:`default_attention_stages`.
    attention_options : dict, optional
        Options passed to :func:`stage_attention` for every stage.

    Notes
    -----
    Inputs of any size work: they are padded at the end of each axis to a multiple of
    ``2**(len(channels)-1)`` and the logits are cropped back to the input size.
    """

    architecture = "unet"

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), attention: str = "none",
                 attention_stages: Sequence[int] | None = None,
                 attention_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        spatial_dims, in_channels, out_channels = check_io(spatial_dims, in_channels,
                                                           out_channels)
        channels = positive_ints(channels, "channels", min_length=2)
        check_choice(attention, UNET_ATTENTIONS, "U-Net attention")
        n = len(channels)
        if attention_stages is None:
            stages = default_attention_stages(attention, n)
        else:
            stages = _check_stages(attention, attention_stages, n)
        options = dict(attention_options or {})
        _check_options(attention, options)
        self._store_config(spatial_dims=spatial_dims, in_channels=in_channels,
                           out_channels=out_channels, channels=channels, attention=attention,
                           attention_stages=attention_stages, attention_options=options)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.divisor = 2 ** (n - 1)

        def attn(stage: int, width: int) -> nn.Module | None:
            if attention in ("none", "gate") or stage not in stages:
                return None
            return stage_attention(attention, spatial_dims, width, stage, **options)

        self.encoder = nn.ModuleList()
        previous = in_channels
        for s, width in enumerate(channels):
            conv = ConvBlock(spatial_dims, previous, width, stride=1 if s == 0 else 2)
            self.encoder.append(_EncoderStage(conv, attn(s, width)))
            previous = width
        # decoder[s] produces stage s from stage s+1; it is listed fine to coarse so that
        # module paths ("decoder.0" = full resolution) match the encoder's.
        self.decoder = nn.ModuleList()
        for s in range(n - 1):
            gate = None
            if attention == "gate" and s in stages:
                gate = stage_attention("gate", spatial_dims, channels[s], s,
                                       gate_channels=channels[s + 1], **options)
            # The bottleneck's global attention is not repeated in the decoder.
            dec_attn = None if attention == "global" else attn(s, channels[s])
            self.decoder.append(_DecoderStage(
                UpConv(spatial_dims, channels[s + 1], channels[s]), gate,
                ConvBlock(spatial_dims, 2 * channels[s], channels[s]), dec_attn))
        self.head = conv_nd(spatial_dims)(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels)
        size = x.shape[2:]
        x, _ = pad_to_multiple(x, self.divisor)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for s in reversed(range(len(self.decoder))):
            x = self.decoder[s](x, skips[s])
        return crop_to(self.head(x), size)
