"""DMAF-Net-style multimodal net, the region-aware late-fusion and early-fusion baselines: every modality subset,
no influence of a missing modality, captured per-modality weights."""

import itertools
import json

import pytest
import torch

from napari_medattn.errors import DimensionError, ModelError
from napari_medattn.models import capture_attention, create
from napari_medattn.models.blocks.dmaf import DMAFBlock
from napari_medattn.models.blocks.region_fusion import RegionFusionBlock
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import load_model, save_model

MODALITIES = ["t1", "t1ce", "t2", "flair"]
SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(range(4), r)]
SHAPE = (1, 4, 12, 10, 8)  # not a multiple of 8: padding and cropping are exercised


def _mask(subset):
    return torch.tensor([m in subset for m in range(4)])


def _as_if_trained(block):
    """Random values for the parameters a new DMAF block starts at zero (residual branches,
    fusion query), so the tests exercise a block whose weights are not uniform."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in (block.proj, block.mlp[-1], block.query_from_mean):
            layer.weight.copy_(0.5 * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
        block.fusion_query.copy_(torch.randn(block.fusion_query.shape, generator=generator))
    return block


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    dmaf = create("dmaf_net", modalities=MODALITIES, out_channels=4, channels=[8, 16, 16, 32])
    for block in dmaf.fusion:
        _as_if_trained(block)
    early = create("early_fusion_unet", modalities=MODALITIES, out_channels=4,
                   channels=[8, 16, 16, 32])
    region = create("region_fusion_net", modalities=MODALITIES, out_channels=4,
                    channels=[8, 16, 16, 32])
    return {"dmaf": dmaf.eval(), "early": early.eval(), "region": region.eval()}


def test_fifteen_subsets(one_torch_thread, nets):
    assert len(SUBSETS) == 15
    x = torch.randn(SHAPE)
    for net in nets.values():
        for subset in SUBSETS:
            with torch.no_grad():
                y = net(x, _mask(subset))
            assert y.shape == (1, 4, *SHAPE[2:])
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("kind", ["dmaf", "early", "region"])
def test_missing_modality_has_no_influence(one_torch_thread, nets, kind):
    net = nets[kind]
    torch.manual_seed(1)
    x = torch.randn(SHAPE)
    for subset in [(0,), (1, 3), (0, 2, 3)]:
        changed = x.clone()
        for m in set(range(4)) - set(subset):
            changed[:, m] = torch.randn(SHAPE[2:]) * 100
        changed[:, [m for m in range(4) if m not in subset][0], 0, 0, 0] = float("nan")
        with torch.no_grad():
            a = net(x, _mask(subset))
            b = net(changed, _mask(subset))
        assert torch.equal(a, b)
        # ... while a present modality does change the output.
        other = x.clone()
        other[:, subset[0]] += 1.0
        with torch.no_grad():
            assert not torch.equal(a, net(other, _mask(subset)))


def test_per_sample_masks_match_single_cases(one_torch_thread, nets):
    net = nets["dmaf"]
    x = torch.randn(2, *SHAPE[1:])
    mask = torch.stack([_mask((0, 1)), _mask((3,))])
    with torch.no_grad():
        both = net(x, mask)
        first = net(x[:1], mask[0])
        second = net(x[1:], mask[1])
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-5, atol=1e-5)


def test_capture_weights_sum_to_one_over_present(one_torch_thread, nets):
    net = nets["dmaf"]
    x = torch.randn(SHAPE)
    for subset in [(2,), (0, 3), (0, 1, 2, 3)]:
        with torch.no_grad():
            plain = net(x, _mask(subset))
            with capture_attention(net) as maps:
                captured = net(x, _mask(subset))
        assert torch.equal(plain, captured)  # capture changes nothing, bit for bit
        names = [n for n in maps if n.endswith(".weights")]
        assert names == [f"fusion.{s}.weights" for s in range(4)]
        for name in names:
            w = maps[name].value
            assert maps[name].kind.value == "channel" and w.shape == (1, 4)
            assert torch.allclose(w.sum(1), torch.ones(1), atol=1e-5)
            missing = [m for m in range(4) if m not in subset]
            assert torch.all(w[0, missing] == 0)
            assert torch.all(w[0, list(subset)] > 0)
        per_voxel = maps["fusion.0.attention"].value
        assert per_voxel.shape == (1, 4, 16, 16, 8)  # the padded grid of stage 0
        assert torch.allclose(per_voxel.sum(1), torch.ones(1), atol=1e-5)
        # The channel weights are the voxel mean of the spatial map.
        assert torch.allclose(per_voxel.mean((2, 3, 4)), maps["fusion.0.weights"].value,
                              atol=1e-6)


def test_block_weights_are_attention_softmax(one_torch_thread):
    """Reference: recompute the fusion query's softmax and the fused feature by hand for one
    voxel."""
    torch.manual_seed(2)
    block = _as_if_trained(DMAFBlock(3, 8, 3, num_heads=1)).eval()
    feats = torch.randn(1, 3, 8, 1, 1, 1)
    present = torch.tensor([True, False, True])
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(feats, present)
        tokens = feats[0, :, :, 0, 0, 0] * present[:, None]
        qkv = block.qkv(block.norm1(tokens + block.modality_embedding))
        q, k, v = qkv.chunk(3, -1)
        s = (q @ k.T) / 8 ** 0.5
        s[:, ~present] = -torch.inf
        tokens = tokens + block.proj(s.softmax(-1) @ v)
        tokens = tokens + block.mlp(block.norm2(tokens))
        normed = block.norm3(tokens + block.modality_embedding)
        query = block.fusion_query + block.query_from_mean(normed[present].mean(0))
        scores = (block.fusion_key(normed) @ query) / 8 ** 0.5
        scores[~present] = -torch.inf
        expected = scores.softmax(0)
        fused = block.fusion_proj(expected @ tokens)  # the un-normalised tokens are the values
    torch.testing.assert_close(maps["weights"].value[0], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected[present], torch.full((2,), 0.5), atol=1e-3)
    torch.testing.assert_close(out[0, :, 0, 0, 0], fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("subset", [(0,), (1, 3), (0, 2, 3), (0, 1, 2, 3)])
def test_new_block_is_the_mean_of_present_features(one_torch_thread, subset):
    """A new block starts as the usual missing-modality fusion: equal weights over the
    present modalities, output ``fusion_proj(mean of the present features)``."""
    torch.manual_seed(6)
    block = DMAFBlock(3, 16, 4, num_heads=2).eval()
    feats = torch.randn(2, 4, 16, 3, 4, 5)
    present = _mask(subset)
    feats[:, ~present] = torch.randn(2, 4 - len(subset), 16, 3, 4, 5) * 1e3  # ignored
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(feats, present)
        mean = feats[:, present].mean(1).movedim(1, -1)  # (B, *grid, C)
        expected = block.fusion_proj(mean).movedim(-1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weights = maps["weights"].value
    torch.testing.assert_close(weights, present.float().expand(2, 4) / len(subset))


def test_card_round_trip_names_modalities(tmp_path, nets):
    net = nets["dmaf"]
    rebuilt = create(net.architecture, **json.loads(json.dumps(net.config)))
    assert rebuilt.config == net.config and rebuilt.modalities == tuple(MODALITIES)
    card = ModelCard(name="dmaf-test", task="segmentation", architecture="dmaf_net",
                     config=net.config, classes=[{"name": n, "color": c} for n, c in
                                                 zip(["background", "necrosis", "oedema",
                                                      "enhancing"],
                                                     ["#000000", "#ff0000", "#00ff00",
                                                      "#0000ff"])],
                     modality="MR", patch_size=[16, 16, 16], in_channels=4)
    folder = save_model(net, card, tmp_path / "m")
    loaded, loaded_card = load_model(folder)
    assert loaded_card.config["modalities"] == MODALITIES
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, _mask((1, 2))), net(x, _mask((1, 2))))


def test_bad_inputs(nets):
    net = nets["dmaf"]
    with pytest.raises(DimensionError, match="at least one modality"):
        net(torch.randn(SHAPE), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(DimensionError, match="channels"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(DimensionError, match="presence mask"):
        net(torch.randn(SHAPE), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ModelError, match="distinct"):
        create("dmaf_net", modalities=["t1", "T1"])
    with pytest.raises(ModelError, match="heads"):
        create("dmaf_net", channels=[9, 18], head_dim=4)


def test_without_masking_missing_modalities_get_weight(one_torch_thread):
    """The ablation: zero-filled missing modalities are attended to (weight > 0)."""
    torch.manual_seed(3)
    net = create("dmaf_net", channels=[8, 16], masking=False).eval()
    assert net.config["masking"] is False
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad(), capture_attention(net) as maps:
        net(x, _mask((0, 2)))
    w = maps["fusion.0.weights"].value[0]
    assert torch.all(w > 0) and w.sum() == pytest.approx(1.0, abs=1e-5)


def test_region_fusion_block_by_hand(one_torch_thread):
    """Reference: the fused feature of one voxel recomputed from the block's 1x1 convs."""
    torch.manual_seed(4)
    block = RegionFusionBlock(3, 6, 3, n_regions=2).eval()
    feats = torch.randn(1, 3, 6, 1, 1, 1)
    present = torch.tensor([True, False, True])
    with torch.no_grad(), capture_attention(block) as maps:
        out = block(feats, present)
        f = feats[0, :, :, 0, 0, 0] * present[:, None]           # (M, C), missing zeroed
        lin = lambda conv, v: conv.weight[:, :, 0, 0, 0] @ v + conv.bias  # noqa: E731
        regions = lin(block.region_logits, f[present].mean(0)).softmax(0)  # (K,)
        logits = lin(block.weight_logits, f.reshape(-1)).reshape(2, 3)
        logits[:, ~present] = -torch.inf
        contribution = (regions[:, None] * logits.softmax(1)).sum(0)   # (M,)
        expected = lin(block.proj, (contribution[:, None] * f).sum(0))
    torch.testing.assert_close(out[0, :, 0, 0, 0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps["weights"].value[0], contribution, rtol=1e-5, atol=1e-6)
    assert maps["weights"].value[0, 1] == 0
    assert maps["regions"].value.shape == (1, 2, 1, 1, 1)


def test_region_fusion_net_records_weights_per_stage(one_torch_thread, nets):
    with torch.no_grad(), capture_attention(nets["region"]) as maps:
        nets["region"](torch.randn(SHAPE), _mask((1, 3)))
    for s in range(4):
        w = maps[f"fusion.{s}.weights"].value[0]
        assert w[0] == 0 and w[2] == 0 and w.sum() == pytest.approx(1.0, abs=1e-5)
