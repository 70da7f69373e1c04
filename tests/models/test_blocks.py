"""Attention blocks: shapes, gradients, capture neutrality, and every recorded map and
output checked against a direct computation from the block's own weights."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.models.blocks import (
    CBAM,
    AttentionGate,
    CrossAttention,
    EfficientChannelAttention,
    MultiHeadSelfAttention,
    NonLocalBlock,
    SelectiveKernel,
    SpatialChannelSE,
    SqueezeExcitation,
    SwinBlock,
    TransformerBlock,
    WindowAttention,
    eca_kernel_size,
)
from napari_medattn.models.blocks.common import (
    ChannelsLayerNorm,
    DropPath,
    crop_to,
    flatten_tokens,
    pad_to_multiple,
    unflatten_tokens,
)
from napari_medattn.models.blocks.window import relative_position_index
from napari_medattn.models.capture import MapKind, capture_attention

# Odd sizes on purpose: nothing divides them, so padding and clipping paths run.
GRID = {2: (7, 9), 3: (7, 9, 11)}
DIMS = [2, 3]
C = 8


def _x(dims: int, channels: int = C, grid=None, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *(grid or GRID[dims]), generator=g)


def _pw(x: torch.Tensor, conv) -> torch.Tensor:
    """A 1x1 convolution computed by hand (einsum over channels plus bias)."""
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    y = torch.einsum("oc,bc...->bo...", w, x)
    if conv.bias is not None:
        y = y + conv.bias.reshape(1, -1, *(1,) * (x.ndim - 2))
    return y


def _gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


def _center(dims: int) -> tuple[int, ...]:
    return tuple(n // 2 for n in GRID[dims])


def _ravel(position, grid) -> int:
    index = 0
    for p, n in zip(position, grid):
        index = index * n + p
    return index


# Every block, built small, with the inputs its forward takes.
def _case(name: str, dims: int):
    torch.manual_seed(1)
    x = _x(dims)
    coarse = tuple((n + 1) // 2 for n in GRID[dims])
    if name == "se":
        return SqueezeExcitation(dims, C, reduction=2), (x,)
    if name == "eca":
        return EfficientChannelAttention(dims, C), (x,)
    if name == "sk":
        return SelectiveKernel(dims, C, 6, kernel_sizes=(1, 3), reduction=2, min_hidden=4), (x,)
    if name == "cbam":
        return CBAM(dims, C, reduction=2, spatial_kernel=3), (x,)
    if name == "scse_add":
        return SpatialChannelSE(dims, C), (x,)
    if name == "scse_max":
        return SpatialChannelSE(dims, C, combine="max"), (x,)
    if name == "gate":
        return AttentionGate(dims, C, 5, inter_channels=4), (x, _x(dims, 5, coarse, seed=2))
    if name == "mhsa":
        return MultiHeadSelfAttention(dims, C, num_heads=2), (x,)
    if name == "transformer":
        return TransformerBlock(dims, C, num_heads=2), (x,)
    if name == "nonlocal":
        block = NonLocalBlock(dims, C)
        # W starts at zero (identity block), which also blocks every gradient to theta,
        # phi and g; give it weights so the gradient test sees the whole block.
        torch.nn.init.normal_(block.out.weight, std=0.1)
        return block, (x,)
    if name == "window":
        return WindowAttention(dims, C, 2, window_size=4), (x,)
    if name == "window_shift":
        return WindowAttention(dims, C, 2, window_size=4, shift=True), (x,)
    if name == "swin_shift":
        return SwinBlock(dims, C, 2, window_size=(3,) * dims, shift=True, drop_path=0.1), (x,)
    if name == "cross":
        return CrossAttention(dims, C, 5, num_heads=2), (x, _x(dims, 5, coarse, seed=3))
    raise AssertionError(name)


CASES = ["se", "eca", "sk", "cbam", "scse_add", "scse_max", "gate", "mhsa", "transformer",
         "nonlocal", "window", "window_shift", "swin_shift", "cross"]
OUT_CHANNELS = {"sk": 6}
RECORDED = {
    "se": {"excitation": MapKind.CHANNEL},
    "eca": {"weights": MapKind.CHANNEL},
    "sk": {"branch_weights": MapKind.CHANNEL},
    "cbam": {"channel": MapKind.CHANNEL, "spatial": MapKind.SPATIAL},
    "scse_add": {"channel": MapKind.CHANNEL, "spatial": MapKind.SPATIAL},
    "scse_max": {"channel": MapKind.CHANNEL, "spatial": MapKind.SPATIAL},
    "gate": {"alpha": MapKind.SPATIAL},
    "mhsa": {"attention": MapKind.TOKEN},
    "transformer": {"attn.attention": MapKind.TOKEN},
    "nonlocal": {"attention": MapKind.TOKEN},
    "window": {"attention": MapKind.TOKEN},
    "window_shift": {"attention": MapKind.TOKEN},
    "swin_shift": {"attn.attention": MapKind.TOKEN},
    "cross": {"attention": MapKind.TOKEN},
}


# ---------------------------------------------------------------- generic behaviour


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("name", CASES)
def test_output_shape(name, dims):
    block, inputs = _case(name, dims)
    out = block(*inputs)
    x = inputs[0]
    assert out.shape == (x.shape[0], OUT_CHANNELS.get(name, C), *x.shape[2:])


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("name", CASES)
def test_gradients_reach_every_parameter(name, dims):
    block, inputs = _case(name, dims)
    block.train()
    out = block(*inputs)
    # A random weighting: a plain sum can be blind to parameters (e.g. after a norm).
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * weight).sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert (p.grad != 0).any(), pname


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("name", CASES)
def test_capture_does_not_change_output(name, dims):
    block, inputs = _case(name, dims)
    block.eval()
    with torch.no_grad():
        off = block(*inputs)
        with capture_attention(block, query=_center(dims)) as maps:
            on = block(*inputs)
        again = block(*inputs)
    assert torch.equal(off, on)
    assert torch.equal(off, again)  # eval mode is deterministic
    assert {n: m.kind for n, m in maps.items()} == RECORDED[name]
    for amap in maps.values():
        assert torch.isfinite(amap.value).all()


@pytest.mark.parametrize("dims", DIMS)
def test_token_maps_have_the_documented_layout(dims):
    x = _x(dims)
    block = MultiHeadSelfAttention(dims, C, num_heads=4)
    with capture_attention(block, query=_center(dims)) as maps:
        block(x)
    assert maps["attention"].value.shape == (2, 4, 1, *GRID[dims])
    # Without a query, token attention is not recorded at all.
    with capture_attention(block) as maps:
        block(x)
    assert len(maps) == 0


# ---------------------------------------------------------------- channel attention


@pytest.mark.parametrize("dims", DIMS)
def test_se_excitation_matches_direct_computation(dims):
    block, (x,) = _case("se", dims)
    with capture_attention(block) as maps:
        out = block(x)
    w1 = block.fc1.weight.flatten(1)
    w2 = block.fc2.weight.flatten(1)
    z = x.flatten(2).mean(-1)
    s = torch.sigmoid(torch.relu(z @ w1.T + block.fc1.bias) @ w2.T + block.fc2.bias)
    torch.testing.assert_close(maps["excitation"].value, s.detach())
    torch.testing.assert_close(out, x * s.reshape(*s.shape, *(1,) * dims))


@pytest.mark.parametrize(
    ("channels", "gamma", "beta", "expected"),
    [
        # k = int(|log2(C) / gamma + beta / gamma|), +1 when even (ECA-Net's code).
        (64, 2, 1, 3),    # 3.5 -> 3
        (128, 2, 1, 5),   # 4.0 -> 4 -> 5
        (256, 2, 1, 5),   # 4.5 -> 4 -> 5
        (1024, 2, 1, 5),  # 5.5 -> 5
        (2048, 2, 1, 7),  # 6.0 -> 6 -> 7
        (8, 2, 1, 3),     # 2.0 -> 2 -> 3
        (2, 2, 1, 1),     # 1.0 -> 1
        (64, 1, 0, 7),    # 6.0 -> 6 -> 7
        (64, 3, 3, 3),    # 3.0 -> 3
    ],
)
def test_eca_kernel_size_formula(channels, gamma, beta, expected):
    assert eca_kernel_size(channels, gamma, beta) == expected
    assert EfficientChannelAttention(2, channels, gamma, beta).conv.kernel_size == (expected,)


@pytest.mark.parametrize("dims", DIMS)
def test_eca_weights_match_direct_computation(dims):
    x = _x(dims, channels=32)
    block = EfficientChannelAttention(dims, 32)  # k = 3
    with capture_attention(block) as maps:
        out = block(x)
    kernel = block.conv.weight.detach().flatten()
    k = kernel.numel()
    pooled = x.flatten(2).mean(-1)
    expected = torch.zeros_like(pooled)
    for c in range(32):  # a zero-padded 1D correlation across channels, written out
        for j in range(k):
            src = c + j - k // 2
            if 0 <= src < 32:
                expected[:, c] += kernel[j] * pooled[:, src]
    expected = torch.sigmoid(expected)
    torch.testing.assert_close(maps["weights"].value, expected)
    torch.testing.assert_close(out.detach(), x * expected.reshape(2, 32, *(1,) * dims))


@pytest.mark.parametrize("dims", DIMS)
def test_sk_branch_weights_sum_to_one_and_mix_the_branches(dims):
    block, (x,) = _case("sk", dims)
    block.eval()
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(x)
    weights = maps["branch_weights"].value
    assert weights.shape == (2, 2, 6)
    assert maps["branch_weights"].meta["branches"] == (1, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 6))
    with torch.no_grad():
        feats = [branch(x) for branch in block.branches]
        z = torch.relu(_pw(_gap(feats[0] + feats[1]), block.fuse[0]))
        logits = _pw(z, block.select).reshape(2, 2, 6)
        a = logits.softmax(dim=1)
        expected = sum(a[:, m].reshape(2, 6, *(1,) * dims) * feats[m] for m in range(2))
    torch.testing.assert_close(weights, a)
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- channel + spatial


@pytest.mark.parametrize("dims", DIMS)
def test_cbam_maps_match_direct_computation(dims):
    block, (x,) = _case("cbam", dims)
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(x)
    with torch.no_grad():
        def mlp(v):
            return _pw(torch.relu(_pw(v, block.mlp[0])), block.mlp[2])

        mx = x.flatten(2).amax(-1).reshape(2, C, *(1,) * dims)
        mc = torch.sigmoid(mlp(_gap(x)) + mlp(mx))
        x1 = x * mc
        desc = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1)
        conv = F.conv2d if dims == 2 else F.conv3d
        ms = torch.sigmoid(conv(desc, block.spatial.weight, block.spatial.bias, padding=1))
    torch.testing.assert_close(maps["channel"].value, mc.flatten(1))
    torch.testing.assert_close(maps["spatial"].value, ms)
    torch.testing.assert_close(out, x1 * ms)


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("combine", ["add", "max"])
def test_scse_maps_match_direct_computation(dims, combine):
    block, (x,) = _case(f"scse_{combine}", dims)
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(x)
    with torch.no_grad():
        cg = torch.sigmoid(_pw(torch.relu(_pw(_gap(x), block.fc1)), block.fc2))
        sg = torch.sigmoid(_pw(x, block.spatial))
    torch.testing.assert_close(maps["channel"].value, cg.flatten(1))
    torch.testing.assert_close(maps["spatial"].value, sg)
    expected = x * cg + x * sg if combine == "add" else torch.maximum(x * cg, x * sg)
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- attention gate


@pytest.mark.parametrize("dims", DIMS)
def test_gate_alpha_matches_direct_computation(dims):
    block = AttentionGate(dims, C, 5, inter_channels=4)
    x = _x(dims)
    # A spatially constant gating signal is the same after any resampling, so alpha can
    # be computed by hand without an interpolation convention.
    g = torch.randn(2, 5, *(1,) * dims).expand(2, 5, *(3,) * dims).contiguous()
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(x, g)
    with torch.no_grad():
        pre = _pw(x, block.theta_x) + _pw(g[(...,) + (slice(0, 1),) * dims], block.phi_g)
        alpha = torch.sigmoid(_pw(torch.relu(pre), block.psi))
    assert maps["alpha"].value.shape == (2, 1, *GRID[dims])
    torch.testing.assert_close(maps["alpha"].value, alpha)
    torch.testing.assert_close(out, x * alpha)


@pytest.mark.parametrize("dims", DIMS)
def test_gate_resamples_the_coarse_signal_linearly(dims):
    block, (x, g) = _case("gate", dims)
    with torch.no_grad(), capture_attention(block) as maps:
        block(x, g)
        # The 1x1 projection is affine with weights per channel and linear interpolation
        # weights sum to one, so resampling before or after the projection agrees.
        mode = "bilinear" if dims == 2 else "trilinear"
        g_fine = F.interpolate(g, size=x.shape[2:], mode=mode, align_corners=False)
        alpha = torch.sigmoid(_pw(torch.relu(_pw(x, block.theta_x) + _pw(g_fine, block.phi_g)),
                                  block.psi))
    torch.testing.assert_close(maps["alpha"].value, alpha)


def test_gate_rejects_mismatched_batches():
    block = AttentionGate(2, C, 5)
    with pytest.raises(DimensionError, match="batch size"):
        block(_x(2), _x(2, 5, batch=3))


# ---------------------------------------------------------------- token attention


def _dense_heads(block, x):
    """q, k, v (B, H, N, d) from a block with a fused ``qkv`` linear layer."""
    b, c = x.shape[:2]
    t = flatten_tokens(x)
    qkv = t @ block.qkv.weight.T
    if block.qkv.bias is not None:
        qkv = qkv + block.qkv.bias
    qkv = qkv.reshape(b, -1, 3, block.num_heads, c // block.num_heads)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


@pytest.mark.parametrize("dims", DIMS)
def test_mhsa_matches_dense_softmax_by_hand(dims):
    block, (x,) = _case("mhsa", dims)
    query = (1,) * dims
    with torch.no_grad(), capture_attention(block, query=query) as maps:
        out = block(x)
    with torch.no_grad():
        q, k, v = _dense_heads(block, x)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)  # (B, H, N, N)
        y = (attn @ v).transpose(1, 2).reshape(2, -1, C) @ block.proj.weight.T + block.proj.bias
    row = attn[:, :, _ravel(query, GRID[dims])]
    torch.testing.assert_close(maps["attention"].value, row.reshape(2, 2, 1, *GRID[dims]))
    torch.testing.assert_close(out, unflatten_tokens(y, GRID[dims]))


@pytest.mark.parametrize("dims", DIMS)
def test_transformer_block_is_prenorm_residual_and_token_form_agrees(dims):
    block, (x,) = _case("transformer", dims)
    block.eval()
    with torch.no_grad():
        out = block(x)
        h = x + block.attn(block.norm1(x))
        expected = h + block.mlp(block.norm2(h))
        tokens_out = block.forward_tokens(flatten_tokens(x), GRID[dims])
    torch.testing.assert_close(out, expected)
    assert torch.equal(tokens_out, flatten_tokens(out))


@pytest.mark.parametrize("dims", DIMS)
def test_nonlocal_starts_as_identity_and_row_matches_by_hand(dims):
    x = _x(dims)
    fresh = NonLocalBlock(dims, C)
    with torch.no_grad():
        assert torch.equal(fresh(x), x)
    block, _ = _case("nonlocal", dims)
    query = (2,) * dims
    with torch.no_grad(), capture_attention(block, query=query) as maps:
        out = block(x)
        theta = flatten_tokens(_pw(x, block.theta))
        phi = flatten_tokens(_pw(x, block.phi))
        g = flatten_tokens(_pw(x, block.g))
        attn = (theta @ phi.transpose(1, 2)).softmax(-1)  # no 1/sqrt(d), as in the paper
        y = unflatten_tokens(attn @ g, GRID[dims])
    row = attn[:, _ravel(query, GRID[dims])]
    torch.testing.assert_close(maps["attention"].value, row.reshape(2, 1, 1, *GRID[dims]))
    torch.testing.assert_close(out, x + _pw(y, block.out))


def _output_from_row(block, x, row, context=None):
    """The block's output token rebuilt from the recorded row alone: proj(sum_k a_k v_k).

    Proves the recorded row is exactly the attention the block used (window, mask, shift
    and padding included), not just some plausible softmax.
    """
    source = x if context is None else context
    b = x.shape[0]
    heads = row.shape[1]
    t = flatten_tokens(source)
    if context is None:
        v = _dense_heads(block, x)[2]
    else:
        v = (t @ block.kv.weight.T + block.kv.bias)[..., block.dim:]
        v = v.reshape(b, -1, heads, block.dim // heads).transpose(1, 2)
    mixed = row.flatten(3) @ v  # (B, H, 1, d)
    return mixed.transpose(1, 2).reshape(b, -1) @ block.proj.weight.T + block.proj.bias


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("name", ["mhsa", "window", "window_shift", "cross"])
@pytest.mark.parametrize("corner", ["low", "high"])
def test_recorded_row_reproduces_the_output_token(name, dims, corner):
    block, inputs = _case(name, dims)
    x = inputs[0]
    # "high" lands in the padded, wrapped-around last window of the shifted variant.
    query = (0,) * dims if corner == "low" else tuple(n - 1 for n in GRID[dims])
    with torch.no_grad(), capture_attention(block, query=query) as maps:
        out = block(*inputs)
        row = maps["attention"].value
        rebuilt = _output_from_row(block, x, row, inputs[1] if name == "cross" else None)
    torch.testing.assert_close(row.sum(dim=tuple(range(3, row.ndim))),
                               torch.ones(row.shape[:3]))
    torch.testing.assert_close(rebuilt, out[(slice(None), slice(None)) + query], atol=1e-5,
                               rtol=1e-5)


# ---------------------------------------------------------------- windows


def _window_and_global(dims, window_size, shift=False):
    """A window attention without position bias, and global attention with its weights."""
    window = WindowAttention(dims, C, 2, window_size=window_size, shift=shift)
    with torch.no_grad():
        window.relative_position_bias_table.zero_()
    mhsa = MultiHeadSelfAttention(dims, C, num_heads=2)
    mhsa.qkv.load_state_dict(window.qkv.state_dict())
    mhsa.proj.load_state_dict(window.proj.state_dict())
    return window, mhsa


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("window_size", ["exact", "larger"])
def test_one_window_covering_the_input_equals_global_attention(dims, window_size):
    x = _x(dims)
    size = GRID[dims] if window_size == "exact" else 16  # 16 is clipped to the input
    window, mhsa = _window_and_global(dims, size)
    with torch.no_grad():
        torch.testing.assert_close(window(x), mhsa(x), atol=1e-5, rtol=0)
    shifted = WindowAttention(dims, C, 2, window_size=size, shift=True)
    shifted.load_state_dict(window.state_dict())
    with torch.no_grad():  # one window along every axis: nothing to shift
        assert torch.equal(shifted(x), window(x))


def _crop(x, starts, sizes):
    return x[(slice(None), slice(None)) + tuple(slice(s, s + n) for s, n in zip(starts, sizes))]


@pytest.mark.parametrize("dims", DIMS)
def test_windows_are_independent_global_attentions_and_padding_is_masked(dims):
    window_size = (4, 3, 4)[:dims]
    grid = GRID[dims]  # 7 x 9 (x 11): padded to 8 x 9 (x 12)
    x = _x(dims)
    block, mhsa = _window_and_global(dims, window_size)
    with torch.no_grad():
        out = block(x)
        counts = [math.ceil(n / w) for n, w in zip(grid, window_size)]
        for cell in itertools.product(*(range(n) for n in counts)):
            starts = [c * w for c, w in zip(cell, window_size)]
            sizes = [min(w, n - s) for w, n, s in zip(window_size, grid, starts)]
            # A window cut by the border attends only to its real voxels.
            torch.testing.assert_close(_crop(out, starts, sizes), mhsa(_crop(x, starts, sizes)),
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", DIMS)
def test_shifted_windows_keep_wrapped_regions_apart(dims):
    grid = (8,) * dims
    x = _x(dims, grid=grid)
    block, mhsa = _window_and_global(dims, 4, shift=True)
    with torch.no_grad():
        out = block(x)
        # Rolled by 2, the first window covers original voxels 2..5; the last window holds
        # voxels 6..7 and the wrapped 0..1, which the mask must keep from seeing each other.
        for starts, size in [((2,) * dims, 4), ((6,) * dims, 2), ((0,) * dims, 2)]:
            sizes = (size,) * dims
            torch.testing.assert_close(_crop(out, starts, sizes), mhsa(_crop(x, starts, sizes)),
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [(3, 4), (2, 3, 4), (4, 1, 2)])
def test_relative_position_index_is_a_function_of_the_offset_only(window):
    index = relative_position_index(window, window)
    coords = list(itertools.product(*(range(w) for w in window)))
    by_offset: dict[tuple[int, ...], int] = {}
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            offset = tuple(a - b for a, b in zip(ci, cj))
            assert by_offset.setdefault(offset, int(index[i, j])) == int(index[i, j])
    # One table row per offset, all rows used.
    assert sorted(by_offset.values()) == list(range(math.prod(2 * w - 1 for w in window)))
    # A window clipped to a small input reuses the rows of the same offsets.
    small = tuple(max(1, w - 1) for w in window)
    sub = relative_position_index(small, window)
    small_coords = list(itertools.product(*(range(w) for w in small)))
    for i, ci in enumerate(small_coords):
        for j, cj in enumerate(small_coords):
            assert int(sub[i, j]) == by_offset[tuple(a - b for a, b in zip(ci, cj))]


@pytest.mark.parametrize("dims", DIMS)
def test_window_bias_enters_the_recorded_row(dims):
    block = WindowAttention(dims, C, 2, window_size=GRID[dims])
    x = _x(dims)
    query = (3,) * dims
    with torch.no_grad(), capture_attention(block, query=query) as maps:
        block(x)
        q, k, _ = _dense_heads(block, x)
        i = _ravel(query, GRID[dims])
        index = relative_position_index(GRID[dims], GRID[dims])[i]
        bias = block.relative_position_bias_table[index].T  # (H, N)
        logits = torch.einsum("bhd,bhnd->bhn", q[:, :, i], k) / math.sqrt(q.shape[-1]) + bias
    expected = logits.softmax(-1).reshape(2, 2, 1, *GRID[dims])
    torch.testing.assert_close(maps["attention"].value, expected)


@pytest.mark.parametrize("dims", DIMS)
def test_swin_block_composition(dims):
    block = SwinBlock(dims, C, 2, window_size=3, shift=True).eval()
    x = _x(dims)
    with torch.no_grad():
        h = x + block.attn(block.norm1(x))
        torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))
    assert block.attn.shift and block.attn.window_size == (3,) * dims


# ---------------------------------------------------------------- cross-attention


@pytest.mark.parametrize("dims", DIMS)
def test_cross_attention_on_itself_is_self_attention(dims):
    x = _x(dims)
    mhsa = MultiHeadSelfAttention(dims, C, num_heads=2)
    cross = CrossAttention(dims, C, C, num_heads=2)
    with torch.no_grad():
        cross.q.weight.copy_(mhsa.qkv.weight[:C])
        cross.q.bias.copy_(mhsa.qkv.bias[:C])
        cross.kv.weight.copy_(mhsa.qkv.weight[C:])
        cross.kv.bias.copy_(mhsa.qkv.bias[C:])
        cross.proj.load_state_dict(mhsa.proj.state_dict())
        torch.testing.assert_close(cross(x, x), mhsa(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dims", DIMS)
def test_cross_attention_records_over_the_context_grid(dims):
    block, (x, context) = _case("cross", dims)
    with torch.no_grad(), capture_attention(block, query=_center(dims)) as maps:
        block(x, context)
    assert maps["attention"].value.shape == (2, 2, 1, *context.shape[2:])


# ---------------------------------------------------------------- shared pieces, errors


@pytest.mark.parametrize("dims", DIMS)
def test_pad_crop_and_token_round_trips(dims):
    x = _x(dims)
    padded, pads = pad_to_multiple(x, 4)
    assert padded.shape[2:] == tuple(math.ceil(n / 4) * 4 for n in GRID[dims])
    assert pads == tuple(p - n for p, n in zip(padded.shape[2:], GRID[dims]))
    assert torch.equal(crop_to(padded, GRID[dims]), x)
    outside = padded.clone()
    crop_to(outside, GRID[dims]).zero_()  # a view: clears the original voxels
    assert not outside.any()  # only zeros were appended
    same, none = pad_to_multiple(x, 1)
    assert same is x and not any(none)
    tokens = flatten_tokens(x)
    assert tokens.shape == (2, math.prod(GRID[dims]), C)
    assert torch.equal(tokens[:, _ravel(_center(dims), GRID[dims])],
                       x[(slice(None), slice(None)) + _center(dims)])
    assert torch.equal(unflatten_tokens(tokens, GRID[dims]), x)


def test_channels_layer_norm_equals_layer_norm_per_position():
    x = _x(3)
    norm = ChannelsLayerNorm(C)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    ref = torch.nn.LayerNorm(C, eps=norm.eps)
    ref.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), ref(x.movedim(1, -1)).movedim(-1, 1))


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    x = torch.ones(4000, 3, 2, 2)
    drop = DropPath(0.25).train()
    torch.manual_seed(0)
    y = drop(x)
    per_sample = y.flatten(1)
    kept = (per_sample != 0).all(1)
    assert ((per_sample == 0).all(1) | kept).all()
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: SqueezeExcitation(4, C), DimensionError),
        (lambda: MultiHeadSelfAttention(2, C, num_heads=3), ModelError),
        (lambda: WindowAttention(3, C, 2, window_size=(4, 4)), DimensionError),
        (lambda: WindowAttention(2, C, 2, window_size=(4, 0)), ModelError),
        (lambda: SelectiveKernel(2, C, C, kernel_sizes=(3,)), ModelError),
        (lambda: SelectiveKernel(2, C, C, kernel_sizes=(3, 4)), ModelError),
        (lambda: CBAM(2, C, spatial_kernel=4), ModelError),
        (lambda: SpatialChannelSE(2, C, combine="mean"), ModelError),
    ],
)
def test_bad_configuration_is_a_typed_error(build, error):
    with pytest.raises(error):
        build()


@pytest.mark.parametrize("name", CASES)
def test_wrong_input_is_a_typed_error(name):
    block, inputs = _case(name, 3)
    with pytest.raises(DimensionError, match="3D block"):
        block(inputs[0][:, :, 0], *inputs[1:])
    with pytest.raises(DimensionError, match="channels"):
        block(inputs[0][:, :3], *inputs[1:])
