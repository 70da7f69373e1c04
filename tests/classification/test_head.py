"""MedFormer's classification head: mean or max pooling over a chosen stage's tokens."""

import pytest
import torch

from napari_medattn.errors import ModelError
from napari_medattn.models import create
from napari_medattn.models.nets.medformer import ClassificationHead

SMALL = dict(spatial_dims=3, in_channels=1, out_channels=2, task="classification",
             widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], topk=[4, 16, 4, None],
             n_win=[4, 4, 2, 1], head_dim=8)


def test_max_pooling_keeps_a_one_token_finding_that_the_mean_dilutes():
    torch.manual_seed(0)
    for grid in [(2, 2, 2), (8, 8, 8)]:
        features = torch.zeros(1, 4, *grid)
        features[0, :, 1, 1, 1] = torch.tensor([3.0, -1.0, 0.5, 0.0])  # one token differs
        means, maxes = ClassificationHead(4, 2, pool="mean"), ClassificationHead(4, 2, pool="max")
        maxes.load_state_dict(means.state_dict())
        tokens = means.token_logits(features)
        assert tokens.shape == (1, 2, *grid)
        torch.testing.assert_close(maxes(features), tokens.flatten(2).amax(dim=2))
        torch.testing.assert_close(means(features), tokens.flatten(2).mean(dim=2))
        n = features[0, 0].numel()
        # The finding's token, against any other: the max sees all of it, the mean 1/n.
        gap = tokens[0, :, 1, 1, 1] - tokens[0, :, 0, 0, 0]
        torch.testing.assert_close(means(features)[0] - tokens[0, :, 0, 0, 0], gap / n)


def test_the_head_pools_the_stage_its_config_names_and_the_config_says_so():
    torch.manual_seed(0)
    default = create("medformer", **SMALL)
    assert "head_pool" not in default.config and "head_stage" not in default.config
    assert default.head.linear.in_features == 64
    model = create("medformer", **SMALL, head_pool="max", head_stage=2).eval()
    assert (model.config["head_pool"], model.config["head_stage"]) == ("max", 2)
    assert model.head.linear.in_features == 32
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        stage = model.backbone.forward_features(x)[1][2]
        torch.testing.assert_close(model(x), model.head.token_logits(stage).amax(dim=(2, 3, 4)))
        again = create("medformer", **model.config)
        again.load_state_dict(model.state_dict())
        torch.testing.assert_close(again.eval()(x), model(x))
    with pytest.raises(ModelError, match="head_stage"):
        create("medformer", **SMALL, head_stage=4)
    with pytest.raises(ModelError, match="head_pool"):
        create("medformer", **SMALL, head_pool="sum")
