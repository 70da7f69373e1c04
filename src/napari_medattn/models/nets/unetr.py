"""UNETR (Hatamizadeh et al., WACV 2022): a ViT encoder over 16^d-voxel patches with a
convolutional decoder fed by intermediate transformer layers. The global-attention reference
of the model library."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models.blocks.common import (
    ChannelsLayerNorm,
    check_input,
    conv_nd,
    crop_to,
    pad_to_multiple,
)
from napari_medattn.models.blocks.global_attention import TransformerBlock
from napari_medattn.models.nets._config import (
    ConfiguredNet,
    check_io,
    positive_int,
    positive_ints,
    positive_number,
)
from napari_medattn.models.nets._layers import ConvBlock, UpConv, resize_linear

__all__ = ["UNETR"]

#: Voxels per patch side; the decoder's four 2x upsamplings undo exactly this.
PATCH_SIZE = 16


class _ProjectUp(nn.Module):
    """A transformer feature map brought up by ``2**n_up``: a transposed convolution, then
    ``n_up - 1`` times (transposed convolution, residual conv block), as UNETR's encoders
    2-4."""

    def __init__(self, spatial_dims: int, hidden: int, width: int, n_up: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [UpConv(spatial_dims, hidden, width)]
        for _ in range(n_up - 1):
            layers += [UpConv(spatial_dims, width, width),
                       ConvBlock(spatial_dims, width, width, residual=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _UpBlock(nn.Module):
    """Transposed convolution, concatenated skip, residual conv block (UNETR decoder)."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.up = UpConv(spatial_dims, in_channels, width)
        self.conv = ConvBlock(spatial_dims, 2 * width, width, residual=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNETR(ConfiguredNet, nn.Module):
    """UNETR in 2D or 3D.

    The input is cut into non-overlapping patches of 16 voxels per side (a strided
    convolution), learned position embeddings are added, and ``depth`` transformer blocks
    of global multi-head self-attention run over the patch tokens. The outputs of the
    layers in ``skip_layers`` and of the last layer are reshaped to the patch grid and
    brought up to 1/2, 1/4 and 1/8 resolution; a convolutional decoder merges them with a
    full-resolution conv block on the input.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Input channels.
    out_channels : int
        Classes (logits).
    img_size : int or sequence of int
        Input size (voxels per axis) the position embeddings are learned for; other sizes
        interpolate them (bi/trilinear) to the input's patch grid.
    hidden_size : int
        Token width.
    depth : int
        Transformer layers.
    num_heads : int
        Attention heads; must divide ``hidden_size``.
    mlp_ratio : float
        MLP width relative to ``hidden_size``.
    skip_layers : sequence of int
        Three 1-based layer numbers whose outputs feed the 1/2, 1/4 and 1/8 decoder levels
        (UNETR: 3, 6, 9 of 12); the last layer feeds the bottleneck.
    feature_size : int
        Decoder width at full resolution (doubling per level).

    Notes
    -----
    Defaults are a CPU-sized model (ViT-Tiny width, 8 layers, skips 2, 4, 6);
    ``preset="paper"`` gives UNETR's 768 wide, 12 layers, 12 heads, skips 3, 6, 9.
    Inputs of any size are padded at the end of each axis to a multiple of 16 and the
    logits cropped back.
    """

    architecture = "unetr"
    PRESETS = {"paper": {"hidden_size": 768, "depth": 12, "num_heads": 12,
                         "skip_layers": [3, 6, 9], "feature_size": 16}}

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 img_size: int | Sequence[int] = 96, hidden_size: int = 192, depth: int = 8,
                 num_heads: int = 3, mlp_ratio: float = 4.0,
                 skip_layers: Sequence[int] = (2, 4, 6), feature_size: int = 16) -> None:
        super().__init__()
        spatial_dims, in_channels, out_channels = check_io(spatial_dims, in_channels,
                                                           out_channels)
        per_axis = [img_size] * spatial_dims if isinstance(img_size, int) else img_size
        size = positive_ints(per_axis, "img_size", length=spatial_dims)
        if any(n % PATCH_SIZE for n in size):
            raise ModelError(f"img_size must be a multiple of the {PATCH_SIZE}-voxel patch, "
                             f"not {list(size)}.")
        hidden_size = positive_int(hidden_size, "hidden_size")
        depth = positive_int(depth, "depth")
        num_heads = positive_int(num_heads, "num_heads")
        if hidden_size % num_heads:
            raise ModelError(f"num_heads ({num_heads}) must divide hidden_size ({hidden_size}).")
        mlp_ratio = positive_number(mlp_ratio, "mlp_ratio")
        skips = positive_ints(skip_layers, "skip_layers", length=3)
        if not skips[0] < skips[1] < skips[2] < depth:
            raise ModelError(f"skip_layers must be three increasing layer numbers below the "
                             f"depth {depth}, not {list(skips)}.")
        fs = positive_int(feature_size, "feature_size")
        self._store_config(spatial_dims=spatial_dims, in_channels=in_channels,
                           out_channels=out_channels, img_size=img_size,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, skip_layers=skips, feature_size=fs)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.skip_layers = skips
        conv = conv_nd(spatial_dims)
        self.patch_embed = conv(in_channels, hidden_size, PATCH_SIZE, stride=PATCH_SIZE)
        grid = tuple(n // PATCH_SIZE for n in size)
        # Small random init as ViT; the embedding is a map so it can be resampled.
        self.pos_embed = nn.Parameter(torch.randn(1, hidden_size, *grid) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(spatial_dims, hidden_size, num_heads,
                                                     mlp_ratio=mlp_ratio) for _ in range(depth))
        self.norm = ChannelsLayerNorm(hidden_size)
        self.encoder1 = ConvBlock(spatial_dims, in_channels, fs, residual=True)
        self.encoder2 = _ProjectUp(spatial_dims, hidden_size, 2 * fs, 3)
        self.encoder3 = _ProjectUp(spatial_dims, hidden_size, 4 * fs, 2)
        self.encoder4 = _ProjectUp(spatial_dims, hidden_size, 8 * fs, 1)
        self.decoder5 = _UpBlock(spatial_dims, hidden_size, 8 * fs)
        self.decoder4 = _UpBlock(spatial_dims, 8 * fs, 4 * fs)
        self.decoder3 = _UpBlock(spatial_dims, 4 * fs, 2 * fs)
        self.decoder2 = _UpBlock(spatial_dims, 2 * fs, fs)
        self.head = conv(fs, out_channels, 1)

    def position_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """The learned position embedding on a patch ``grid`` (interpolated if it differs
        from the grid it was learned on)."""
        if tuple(grid) == tuple(self.pos_embed.shape[2:]):
            return self.pos_embed
        return resize_linear(self.pos_embed, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels)
        size = x.shape[2:]
        x, _ = pad_to_multiple(x, PATCH_SIZE)
        tokens = self.patch_embed(x)
        tokens = tokens + self.position_embedding(tokens.shape[2:])
        hidden = []
        for number, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if number in self.skip_layers:
                hidden.append(tokens)
        bottom = self.norm(tokens)
        y = self.decoder5(bottom, self.encoder4(hidden[2]))
        y = self.decoder4(y, self.encoder3(hidden[1]))
        y = self.decoder3(y, self.encoder2(hidden[0]))
        y = self.decoder2(y, self.encoder1(x))
        return crop_to(self.head(y), size)
