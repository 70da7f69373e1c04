"""Networks: shapes on odd sizes, gradients, config round trips, attention capture,
determinism, FLOP counts against hand computations, and typed errors for bad configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models import (
    MapKind,
    architectures,
    capture_attention,
    count_flops,
    count_parameters,
    create,
    presets,
)
from napari_medattn.models.blocks.cbam import CBAM
from napari_medattn.models.blocks.dssa import DualSparseSelectionAttention
from napari_medattn.models.blocks.eca import EfficientChannelAttention
from napari_medattn.models.blocks.gate import AttentionGate
from napari_medattn.models.blocks.global_attention import MultiHeadSelfAttention
from napari_medattn.models.blocks.scse import SpatialChannelSE
from napari_medattn.models.blocks.se import SqueezeExcitation
from napari_medattn.models.blocks.window import WindowAttention
from napari_medattn.models.nets import UNET_ATTENTIONS
from napari_medattn.models.nets.unet import default_attention_stages

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which
    costs several times the work on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Odd sizes that no net's total downsampling (8, 16 or 32) divides.
SHAPES = {2: (1, 1, 33, 47), 3: (1, 1, 19, 24, 27)}

# Tiny widths so the whole file runs in seconds; attention kinds stay the same as at full size.
DSSA_TINY = dict(widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], n_win=2, head_dim=8)
TINY = {
    "dssa_unet": dict(DSSA_TINY),
    "medformer": dict(DSSA_TINY, task="segmentation"),
    "medformer_cls": dict(DSSA_TINY, task="classification"),
    "unetr": dict(img_size=32, hidden_size=16, depth=4, num_heads=2, skip_layers=[1, 2, 3],
                  feature_size=4),
}
# Windows of 3 and 2 regions per axis, so the tiny grids hold several windows and regions.
ATTENTION_OPTIONS = {"window": {"head_dim": 8, "window_size": 3},
                     "dssa": {"head_dim": 8, "n_win": 2},
                     "global": {"head_dim": 8}}
for _attention in UNET_ATTENTIONS:
    TINY[f"unet_{_attention}"] = dict(channels=[4, 8, 16, 16], attention=_attention,
                                      attention_options=ATTENTION_OPTIONS.get(_attention, {}))

def architecture(case: str) -> str:
    return "unet" if case.startswith("unet_") else case.replace("_cls", "")


def build(case: str, spatial_dims: int, seed: int = 0, **extra) -> nn.Module:
    torch.manual_seed(seed)
    return create(architecture(case), spatial_dims=spatial_dims, out_channels=3,
                  **TINY[case], **extra)


CASES = [(case, dims) for case in TINY for dims in (2, 3)]
IDS = [f"{case}-{dims}d" for case, dims in CASES]


def expected_shape(case: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], 3) if case == "medformer_cls" else (shape[0], 3, *shape[2:])


@pytest.mark.parametrize(("case", "dims"), CASES, ids=IDS)
def test_output_shape_and_every_parameter_gets_a_gradient(case, dims):
    net = build(case, dims)
    x = torch.randn(SHAPES[dims])
    y = net(x)
    assert y.shape == expected_shape(case, x.shape)
    assert torch.isfinite(y).all()
    # A random projection of the output, so no parameter can hide behind a symmetric loss.
    (y * torch.randn_like(y)).sum().backward()
    grads = dict(net.named_parameters())
    assert not [n for n, p in grads.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    # Every gradient is non-zero, except where a ReLU bottleneck of width 1-2 (the squeeze
    # of SE-type gates at these tiny widths) may be inactive for this one input.
    gates = {f"{path}.{name}" for path, module in net.named_modules()
             if isinstance(module, (SqueezeExcitation, CBAM, SpatialChannelSE))
             for name, _ in module.named_parameters()}
    assert {n for n, p in grads.items() if not p.grad.abs().sum()} <= gates


@pytest.mark.parametrize(("case", "dims"), CASES, ids=IDS)
def test_config_json_round_trip_rebuilds_the_same_architecture(case, dims):
    net = build(case, dims)
    config = json.loads(json.dumps(net.config))
    again = create(net.architecture, **config)
    assert again.config == config
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    if dims == 2:  # same weights, same numbers: nothing outside the config shapes the net
        again.load_state_dict(net.state_dict())
        x = torch.randn(SHAPES[2])
        assert torch.equal(net.eval()(x), again.eval()(x))


# What each block reports, by class: quantity -> kind (token maps need a query voxel).
REPORTS = {
    SqueezeExcitation: {"excitation": MapKind.CHANNEL},
    EfficientChannelAttention: {"weights": MapKind.CHANNEL},
    CBAM: {"channel": MapKind.CHANNEL, "spatial": MapKind.SPATIAL},
    SpatialChannelSE: {"channel": MapKind.CHANNEL, "spatial": MapKind.SPATIAL},
    AttentionGate: {"alpha": MapKind.SPATIAL},
    WindowAttention: {"attention": MapKind.TOKEN},
    MultiHeadSelfAttention: {"attention": MapKind.TOKEN},
    DualSparseSelectionAttention: {"regions": MapKind.ROUTING, "tokens": MapKind.ROUTING,
                                   "attention": MapKind.TOKEN},
}

# One readable path per case, spelled out, so renaming a submodule shows up here.
EXAMPLE_MAP = {
    "unet_none": None,
    "unet_se": "encoder.0.attention.excitation",
    "unet_eca": "decoder.1.attention.weights",
    "unet_cbam": "encoder.3.attention.spatial",
    "unet_scse": "decoder.0.attention.channel",
    "unet_gate": "decoder.0.gate.alpha",
    "unet_window": "encoder.2.attention.1.attn.attention",
    "unet_dssa": "decoder.2.attention.attn.regions",
    "unet_global": "encoder.3.attention.0.attn.attention",
    "dssa_unet": "decoder.0.blocks.0.attn.tokens",
    "medformer": "backbone.stages.2.0.attn.regions",
    "medformer_cls": "backbone.stages.3.0.attn.attention",
    "unetr": "blocks.3.attn.attention",
}


@pytest.mark.parametrize(("case", "dims"), CASES, ids=IDS)
def test_capture_maps_by_module_path_bitwise_equal_outputs_deterministic_eval(case, dims):
    net = build(case, dims).eval()
    x = torch.randn(SHAPES[dims])
    query = tuple(n // 2 for n in x.shape[2:])
    with torch.no_grad():
        before = net(x)
        with capture_attention(net, query=query) as maps:
            during = net(x)
        after = net(x)
    assert torch.equal(before, during)
    assert torch.equal(before, after)  # eval mode is deterministic
    expected = {f"{path}.{quantity}": kind
                for path, module in net.named_modules() if type(module) in REPORTS
                for quantity, kind in REPORTS[type(module)].items()}
    assert {name: m.kind for name, m in maps.items()} == expected
    if EXAMPLE_MAP[case] is None:
        assert len(maps) == 0
    else:
        assert EXAMPLE_MAP[case] in maps
    for name, amap in maps.of_kind(MapKind.TOKEN).items():
        # A token map is the query's attention over its block's grid: it sums to one per head.
        total = amap.value.flatten(3).sum(-1)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5), name
        assert maps.on_input_grid(name).shape[-dims:] == x.shape[2:]


def test_unet_attention_goes_to_the_documented_stages():
    n = 5
    assert default_attention_stages("none", n) == ()
    assert default_attention_stages("se", n) == (0, 1, 2, 3, 4)
    assert default_attention_stages("gate", n) == (0, 1, 2, 3)
    assert default_attention_stages("window", n) == (2, 3, 4)
    assert default_attention_stages("dssa", n) == (2, 3, 4)
    assert default_attention_stages("global", n) == (4,)
    net = create("unet", spatial_dims=2, channels=[4, 8, 16, 16, 16], attention="dssa",
                 attention_options={"head_dim": 8, "n_win": 2})
    topk = {path: m.topk for path, m in net.named_modules()
            if isinstance(m, DualSparseSelectionAttention)}
    # DSSAU-Net's per-stage top-k by resolution (1/4: 1, 1/8: 4, 1/16: 16); decoder too.
    assert topk == {"encoder.2.attention.attn": 1, "encoder.3.attention.attn": 4,
                    "encoder.4.attention.attn": 16, "decoder.2.attention.attn": 1,
                    "decoder.3.attention.attn": 4}


def test_unet_ablations_change_only_the_attention_modules():
    base = build("unet_none", 3).state_dict()
    for attention in UNET_ATTENTIONS:
        extra = {k for k in build(f"unet_{attention}", 3).state_dict() if k not in base}
        assert all(".attention." in k or ".gate." in k for k in extra), attention
        assert bool(extra) == (attention != "none")


def test_full_attention_stage_is_dense_attention_on_one_region():
    net = create("dssa_unet", spatial_dims=2, **TINY["dssa_unet"])
    last = net.encoder.stages[3][0].attn
    assert (last.topk, last.n_win, last.token_keep) == (None, 1, 1.0)
    first = net.encoder.stages[0][0].attn
    assert (first.topk, first.n_win, first.token_keep) == (1, 2, 1 / 8)


def test_padding_is_undone_exactly():
    """On an odd input the U-Net is the cropped result of running it on the zero-padded
    input: the padding happens inside and nothing else changes."""
    net = build("unet_none", 2).eval()
    x = torch.randn(SHAPES[2])
    padded = F.pad(x, (0, 1, 0, 7))  # 33 x 47 -> 40 x 48, multiples of 8
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., :33, :47], atol=1e-6)


def test_unetr_interpolates_position_embeddings_to_other_grids():
    net = create("unetr", spatial_dims=2, **TINY["unetr"])
    assert net.position_embedding((2, 2)) is net.pos_embed
    with torch.no_grad():
        net.pos_embed.fill_(0.5)
    resampled = net.position_embedding((3, 5))
    assert resampled.shape == (1, 16, 3, 5)
    assert torch.allclose(resampled, torch.full_like(resampled, 0.5))


def test_medformer_segmentation_and_classification_share_the_backbone():
    seg = create("medformer", spatial_dims=2, **TINY["medformer"]).state_dict()
    cls = create("medformer", spatial_dims=2, **TINY["medformer_cls"]).state_dict()
    assert {k for k in seg if k.startswith("backbone.")} == \
        {k for k in cls if k.startswith("backbone.")}


def test_presets_hold_the_published_sizes():
    assert architectures() == ["dmaf_net", "dssa_unet", "early_fusion_unet", "medformer",
                             "region_fusion_net", "transmorph", "unet", "unetr", "voxelmorph"]
    assert presets("dssa_unet") == ["paper"]
    net = create("dssa_unet", preset="paper", spatial_dims=2, out_channels=4)
    assert net.config["widths"] == [96, 192, 384, 768]
    assert net.config["depths"] == [2, 2, 8, 2]
    assert net.config["topk"] == [1, 4, 16, None]
    assert net.config["out_channels"] == 4  # explicit arguments override the preset
    unetr = create("unetr", preset="paper", spatial_dims=2)
    assert (unetr.config["hidden_size"], unetr.config["depth"]) == (768, 12)
    assert unetr.config["skip_layers"] == [3, 6, 9]


# ---------------------------------------------------------------- complexity


def test_count_parameters_matches_the_layer_shapes():
    net = nn.Sequential(nn.Conv3d(2, 4, 3), nn.Linear(5, 7))
    assert count_parameters(net) == (4 * 2 * 27 + 4) + (7 * 5 + 7)
    net[1].weight.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == (4 * 2 * 27 + 4) + 7


def test_count_flops_of_a_conv_net_by_hand():
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    voxels = 6 * 7 * 5
    # 2 FLOPs per multiply-accumulate: out voxels x out channels x in channels x kernel.
    assert count_flops(net, (1, 1, 6, 7, 5)) == 2 * voxels * 4 * 27 + 2 * voxels * 2 * 4


@pytest.mark.parametrize("size", [(16, 16), (13, 15)])
def test_count_flops_of_the_plain_unet_by_hand(size):
    c0, c1, c2, out = 4, 8, 16, 3
    net = create("unet", spatial_dims=2, channels=[c0, c1, c2], out_channels=out)
    # 13 x 15 is padded to 16 x 16 inside the net, so it costs the same.
    n0, n1, n2 = 16 * 16, 8 * 8, 4 * 4
    conv3 = 9
    expected = 2 * (
        n0 * c0 * 1 * conv3 + n0 * c0 * c0 * conv3        # encoder stage 0
        + n1 * c1 * c0 * conv3 + n1 * c1 * c1 * conv3     # stage 1 (stride 2 first)
        + n2 * c2 * c1 * conv3 + n2 * c2 * c2 * conv3     # stage 2, the bottleneck
        + n2 * 4 * c1 * c2                                # 2x2 transposed conv, per input voxel
        + n1 * c1 * 2 * c1 * conv3 + n1 * c1 * c1 * conv3  # decoder stage 1
        + n1 * 4 * c0 * c1
        + n0 * c0 * 2 * c0 * conv3 + n0 * c0 * c0 * conv3  # decoder stage 0
        + n0 * out * c0                                   # 1x1 head
    )
    assert count_flops(net, (1, 1, *size)) == expected


def test_count_flops_counts_cpu_scaled_dot_product_attention():
    class Attention(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    b, h, n, d = 1, 2, 64, 16
    # Q K^T and A V, each n x n x d multiply-accumulates per head.
    assert count_flops(Attention(), (b, h, n, d)) == 2 * (2 * b * h * n * n * d)


def test_count_flops_restores_the_training_mode_and_rejects_bad_shapes():
    net = create("unet", spatial_dims=2, channels=[4, 8])
    assert net.training
    count_flops(net, (1, 1, 8, 8))
    assert net.training
    with pytest.raises(ModelError, match="positive integers"):
        count_flops(net, (1, 1, 0, 8))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("name", "config", "message"), [
    ("vnet", {}, "valid choices are dmaf_net, dssa_unet, early_fusion_unet, medformer, "
                 "region_fusion_net, transmorph, unet, unetr, voxelmorph"),
    ("unet", {"attention": "sparse"}, "valid choices are 'none', 'se'"),
    ("unet", {"width": 3}, "valid options are spatial_dims"),
    ("unet", {"spatial_dims": 4}, "valid choices are 2, 3"),
    ("unet", {"channels": [8]}, "at least 2"),
    ("unet", {"channels": [8, 0]}, "positive integer"),
    ("unet", {"attention": "se", "attention_options": {"topk": 3}}, "valid options are: reduction"),
    ("unet", {"attention_options": {"topk": 3}}, "for none attention; valid options are: none"),
    ("unet", {"attention": "se", "attention_stages": "all"}, "list of stage numbers"),
    ("unet", {"attention": "gate", "attention_stages": [3], "channels": [4, 8]}, "0..0"),
    ("unet", {"attention": "global", "attention_stages": [0]}, "bottleneck only"),
    ("unet", {"attention": "dssa", "attention_options": {"topk": [1, 2]}}, "stage 2"),
    ("dssa_unet", {"preset": "huge"}, "valid choices are paper"),
    ("dssa_unet", {"topk": [1, 4, 16]}, "one entry per stage"),
    ("dssa_unet", {"token_keep": 0.0}, r"\(0, 1\]"),
    ("dssa_unet", {"widths": [32, 64, 128, 250], "head_dim": 32}, "divisible"),
    ("medformer", {"task": "detection"}, "'classification', 'segmentation'"),
    ("unetr", {"hidden_size": 100, "num_heads": 3}, "must divide"),
    ("unetr", {"skip_layers": [2, 2, 4]}, "increasing"),
    ("unetr", {"img_size": 40}, "multiple of the 16-voxel patch"),
])
def test_bad_names_and_configs_raise_model_error_with_one_sentence(name, config, message):
    with pytest.raises(ModelError, match=message) as info:
        create(name, **config)
    text = str(info.value)
    assert text.endswith(".") and "\n" not in text


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("case", ["unet_global", "unet_window", "unet_dssa", "dssa_unet",
                                  "medformer", "unetr"])
def test_cuda_gives_the_cpu_flop_count(case):
    net = build(case, 3).eval()
    flops_cpu = count_flops(net, SHAPES[3])
    # CUDA attention kernels are counted by PyTorch's own formulas, the CPU one by ours.
    assert count_flops(net.cuda(), SHAPES[3]) == flops_cpu


@needs_cuda
@pytest.mark.parametrize("case", ["unet_gate", "unet_global", "unet_window", "unetr"])
def test_cuda_gives_the_cpu_numbers(case):
    """Nets with soft attention only: DSSA's hard top-k choices can flip on near-ties between
    devices (seen on an H100: one decoder block of the tiny DSSA-UNet chose another region),
    after which outputs legitimately differ."""
    net = build(case, 3).eval()
    x = torch.randn(SHAPES[3])
    with torch.no_grad():
        expected = net(x)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as on the CPU
    try:
        with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):
            actual = net.cuda()(x.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
