"""Maths of DMAF-Net's training options against closed forms."""

import pytest
import torch
from torch import nn

from napari_medattn.training.multimodal import (
    ModalityMonitor,
    channel_covariance,
    class_prototypes,
    covariance_consistency,
    prototype_distillation,
    prototype_graph,
    relation_distillation,
)


def test_prototype_is_masked_class_mean():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3, (2, 4, 5, 6))
    target[1][target[1] == 2] = 0  # class 2 absent from case 1
    prototypes, valid = class_prototypes(features, target, 4)
    assert valid.tolist() == [[True, True, True, False], [True, True, False, False]]
    for b in range(2):
        for k in range(4):
            mask = target[b] == k
            expected = features[b][:, mask].mean(1) if mask.any() else torch.zeros(3)
            torch.testing.assert_close(prototypes[b, k], expected)


def test_distillations_are_zero_for_identical_features():
    torch.manual_seed(1)
    features = torch.randn(2, 5, 6, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6, 6))
    assert covariance_consistency(features, features.clone()) == 0
    assert prototype_distillation(features, features.clone(), target, 4) == pytest.approx(0,
                                                                                        abs=1e-6)
    assert relation_distillation(features, features.clone(), target, 4) == pytest.approx(
        0, abs=1e-6)
    other = features + torch.randn_like(features)
    assert covariance_consistency(other, features) > 0
    assert relation_distillation(other, features, target, 4) > 0
    # Prototype distillation compares directions: a positive scaling changes nothing.
    assert prototype_distillation(3 * features, features, target, 4) == pytest.approx(0,
                                                                                     abs=1e-6)


def test_covariance_matches_numpy():
    torch.manual_seed(2)
    features = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64)
    expected = torch.from_numpy(__import__("numpy").cov(features[0].flatten(1).numpy()))
    torch.testing.assert_close(channel_covariance(features)[0], expected)


def test_prototype_graph_masks_absent_classes():
    prototypes = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    valid = torch.tensor([[True, True, True, False]])
    graph = prototype_graph(prototypes, valid, temperature=1.0)
    assert torch.all(graph[0, 3] == 0) and torch.all(graph[0, :, 3] == 0)
    assert torch.all(graph[0].diagonal() == 0)
    # Row 0: cos to class 1 is 1, to class 2 is 0 -> softmax(1, 0).
    e = torch.exp(torch.tensor(1.0))
    torch.testing.assert_close(graph[0, 0, 1:3], torch.stack([e / (e + 1), 1 / (e + 1)]))
    lonely = prototype_graph(prototypes, torch.tensor([[True, False, False, False]]))
    assert torch.all(lonely == 0)


def test_monitor_reweights_by_gap():
    monitor = ModalityMonitor(3, momentum=0.5, temperature=1.0)
    torch.testing.assert_close(monitor.weights(), torch.ones(3))
    present = torch.tensor([[True, False, False], [True, True, False]])
    monitor.update(torch.tensor([2.0, 4.0]), present)
    # First values: modality 0 mean of both cases (3), modality 1 only case 2 (4), 2 unseen.
    torch.testing.assert_close(monitor.gaps, torch.tensor([3.0, 4.0, 0.0]))
    monitor.update(torch.tensor([1.0]), torch.tensor([[True, False, True]]))
    torch.testing.assert_close(monitor.gaps, torch.tensor([2.0, 4.0, 1.0]))
    w = monitor.weights()
    torch.testing.assert_close(w, 3 * torch.softmax(torch.tensor([2.0, 4.0, 1.0]), 0))
    assert w.mean() == pytest.approx(1.0) and w[1] > w[0] > w[2]
    case = monitor.case_weights(torch.tensor([[True, True, False], [False, False, True]]))
    torch.testing.assert_close(case, torch.stack([(w[0] + w[1]) / 2, w[2]]))

    encoders = [nn.Linear(2, 1, bias=False) for _ in range(3)]
    for e in encoders:
        e.weight.grad = torch.ones_like(e.weight)
    monitor.scale_gradients(encoders)
    for e, weight in zip(encoders, w):
        torch.testing.assert_close(e.weight.grad, torch.full_like(e.weight, float(weight)))
