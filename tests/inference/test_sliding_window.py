import threading

import numpy as np
import pytest
import torch
from torch import nn
from monai.inferers import sliding_window_inference as monai_sliding_window

from napari_medattn.errors import Cancelled, DimensionError, ModelError
from napari_medattn.inference.sliding_window import (
    importance_map,
    sliding_window_inference,
    window_starts,
)
from napari_medattn.inference.window_options import OutputRequest, WindowOptions



class CountingPredictor:
    """Wraps a net and records the batch size of every call."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.net(x)


def monai_probabilities(net, volume, patch, overlap, batch, mode="gaussian"):
    with torch.no_grad():
        x = torch.from_numpy(volume)[None, None]
        out = monai_sliding_window(x, patch, batch, lambda t: torch.softmax(net(t), 1),
                                   overlap=overlap, mode=mode)
    return out[0].numpy()


def stacked(result, classes):
    return np.stack([result.probabilities[c] for c in range(classes)])


@pytest.mark.parametrize("patch, overlap, batch, mode", [
    ((12, 16, 10), 0.5, 3, "gaussian"),
    ((8, 11, 9), 0.25, 4, "gaussian"),
    ((30, 16, 10), 0.5, 2, "gaussian"),   # window deeper than the volume: padded
    ((12, 16, 10), 0.5, 5, "constant"),
])
def test_equals_monai_without_skipping_or_streaming(net3d, volume3d, patch, overlap, batch, mode):
    expected = monai_probabilities(net3d, volume3d, patch, overlap, batch, mode)
    result = sliding_window_inference(volume3d, net3d, patch,
                                      windows=WindowOptions(overlap=overlap, batch_size=batch,
                                                            blend=mode, skip_empty=False,
                                                            stream=False),
                                      outputs=OutputRequest(keep_probabilities="all"),
                                      device="cpu", use_autocast=False)
    assert result.labels.shape == volume3d.shape
    np.testing.assert_allclose(stacked(result, 3), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.argmax(0))
    assert result.windows == result.windows_predicted


def test_views_and_integer_inputs_are_accepted(net3d, volume3d):
    flipped = volume3d[::-1].transpose(2, 1, 0)  # negative strides, permuted
    reference = sliding_window_inference(np.ascontiguousarray(flipped), net3d, (10, 16, 12),
                                         windows=WindowOptions(skip_empty=False),
                                         outputs=OutputRequest(keep_probabilities=(1,)),
                                         device="cpu")
    result = sliding_window_inference(flipped, net3d, (10, 16, 12),
                                      windows=WindowOptions(skip_empty=False),
                                      outputs=OutputRequest(keep_probabilities=(1,)), device="cpu")
    np.testing.assert_array_equal(result.probabilities[1], reference.probabilities[1])
    integers = (volume3d * 100).astype(np.int16)
    as_int = sliding_window_inference(integers, net3d, (10, 16, 12),
                                      windows=WindowOptions(skip_empty=False),
                                      outputs=OutputRequest(keep_probabilities=(1,)), device="cpu")
    as_float = sliding_window_inference(integers.astype(np.float32), net3d, (10, 16, 12),
                                        windows=WindowOptions(skip_empty=False),
                                        outputs=OutputRequest(keep_probabilities=(1,)),
                                        device="cpu")
    np.testing.assert_array_equal(as_int.probabilities[1], as_float.probabilities[1])


def test_equals_monai_in_2d():
    torch.manual_seed(3)
    net = torch.nn.Conv2d(2, 4, 3, padding=1)
    image = np.random.default_rng(1).normal(size=(2, 37, 21)).astype(np.float32)
    with torch.no_grad():
        expected = monai_sliding_window(torch.from_numpy(image)[None], (16, 16), 3,
                                        lambda t: torch.softmax(net(t), 1), overlap=0.5,
                                        mode="gaussian")[0].numpy()
    result = sliding_window_inference(image, net, (16, 16),
                                      windows=WindowOptions(skip_empty=False, stream=False,
                                                            batch_size=3),
                                      outputs=OutputRequest(keep_probabilities="all"),
                                      device="cpu", use_autocast=False)
    np.testing.assert_allclose(stacked(result, 4), expected, atol=1e-6)


def test_window_grid_and_weights_match_monai():
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, patch, overlap in [((23, 30, 27), (12, 16, 10), 0.5), ((40, 9, 17), (7, 9, 5), 0.3)]:
        interval = _get_scan_interval(shape, patch, 3, (overlap,) * 3)
        expected = [tuple(s.start for s in w) for w in dense_patch_slices(shape, patch, interval)]
        assert window_starts(shape, patch, overlap) == expected
    torch.testing.assert_close(importance_map((12, 16, 10), "gaussian", 0.125),
                               compute_importance_map((12, 16, 10), "gaussian", 0.125),
                               rtol=0, atol=0)


def test_streaming_equals_whole_volume(net3d):
    # Many window rows along axis 0 so the slab is finalised many times.
    volume = np.random.default_rng(2).normal(size=(61, 20, 18)).astype(np.float32)
    whole = sliding_window_inference(volume, net3d, (10, 12, 12),
                                     windows=WindowOptions(overlap=0.6, batch_size=5,
                                                           skip_empty=False, stream=False),
                                     outputs=OutputRequest(keep_probabilities="all",
                                                           uncertainty="entropy"),
                                     device="cpu")
    streamed = sliding_window_inference(volume, net3d, (10, 12, 12),
                                        windows=WindowOptions(overlap=0.6, batch_size=5,
                                                              skip_empty=False, stream=True),
                                        outputs=OutputRequest(keep_probabilities=(1,),
                                                              uncertainty="entropy"),
                                        device="cpu")
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    np.testing.assert_array_equal(streamed.probabilities[1], whole.probabilities[1])
    np.testing.assert_array_equal(streamed.uncertainty, whole.uncertainty)
    assert set(streamed.probabilities) == {1}
    assert streamed.labels.dtype == np.uint8


def test_streaming_holds_a_slab_not_the_volume(net3d, monkeypatch):
    from napari_medattn.inference.stitching import SlabAccumulator

    depths = []
    original = SlabAccumulator.extend_to

    def spy(self, hi):
        original(self, hi)
        depths.append(self.hi - self.lo)

    monkeypatch.setattr(SlabAccumulator, "extend_to", spy)
    volume = np.random.default_rng(2).normal(size=(80, 12, 12)).astype(np.float32)
    sliding_window_inference(volume, net3d, (8, 12, 12),
                             windows=WindowOptions(overlap=0.5, batch_size=1, skip_empty=False),
                             device="cpu")
    # One window row (8 planes) plus at most one step (4 planes) of the next row.
    assert max(depths) <= 12


def test_skip_empty_skips_windows_and_predicts_background(net3d):
    volume = np.zeros((32, 32, 32), np.float32)
    volume[2:9, 3:10, 4:12] = np.random.default_rng(4).uniform(1, 2, size=(7, 7, 8))
    patch = (16, 16, 16)
    counting = CountingPredictor(net3d)
    result = sliding_window_inference(volume, counting, patch,
                                      windows=WindowOptions(overlap=0.5, batch_size=2),
                                      outputs=OutputRequest(keep_probabilities=(0, 1)),
                                      device="cpu")
    starts = window_starts(volume.shape, patch, 0.5)
    nonempty = [s for s in starts
                if volume[tuple(slice(a, a + p) for a, p in zip(s, patch))].max() > 0]
    assert sum(counting.calls) == len(nonempty) == result.windows_predicted
    assert result.windows == len(starts) == 27 and len(nonempty) < len(starts)
    # Voxels no non-empty window reaches are certain background.
    reached = np.zeros(volume.shape, bool)
    for s in nonempty:
        reached[tuple(slice(a, a + p) for a, p in zip(s, patch))] = True
    assert np.all(result.labels[~reached] == 0)
    np.testing.assert_array_equal(result.probabilities[0][~reached], 1.0)
    np.testing.assert_array_equal(result.probabilities[1][~reached], 0.0)
    # Where only non-empty windows contribute, skipping changes nothing.
    full = sliding_window_inference(volume, net3d, patch,
                                    windows=WindowOptions(overlap=0.5, batch_size=2,
                                                          skip_empty=False),
                                    outputs=OutputRequest(keep_probabilities=(1,)), device="cpu")
    only = np.ones(volume.shape, bool)
    for s in set(starts) - set(nonempty):
        only[tuple(slice(a, a + p) for a, p in zip(s, patch))] = False
    assert only.any()
    np.testing.assert_allclose(result.probabilities[1][only], full.probabilities[1][only],
                               atol=1e-6)


def test_explicit_foreground_mask_decides_what_is_skipped(net3d, volume3d):
    foreground = np.zeros(volume3d.shape, bool)
    foreground[:6, :8, :5] = True
    counting = CountingPredictor(net3d)
    result = sliding_window_inference(volume3d, counting, (12, 16, 10), foreground=foreground,
                                      device="cpu")
    starts = window_starts(volume3d.shape, (12, 16, 10), 0.5)
    touching = [s for s in starts if s[0] < 6 and s[1] < 8 and s[2] < 5]
    assert sum(counting.calls) == len(touching) == result.windows_predicted < result.windows
    with pytest.raises(DimensionError, match="foreground mask has shape"):
        sliding_window_inference(volume3d, net3d, (12, 16, 10), foreground=foreground[1:],
                                 device="cpu")


def test_all_windows_empty_gives_background_without_running_the_net(net3d):
    counting = CountingPredictor(net3d)
    result = sliding_window_inference(np.full((20, 20, 20), -3.0, np.float32), counting, (8, 8, 8),
                                      outputs=OutputRequest(keep_probabilities="all"),
                                      device="cpu")
    assert counting.calls == []
    assert result.labels.dtype == np.uint8 and not result.labels.any()
    np.testing.assert_array_equal(result.probabilities[0], 1.0)


def test_progress_is_reported_per_batch(net3d, volume3d):
    calls = []
    result = sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                      windows=WindowOptions(batch_size=4, skip_empty=False),
                                      device="cpu",
                                      progress=lambda done, total: calls.append((done, total)))
    n = result.windows
    expected = [(min(k, n), n) for k in range(4, n + 4, 4)]
    assert calls == expected


@pytest.mark.parametrize("as_event", [True, False])
def test_cancel_stops_between_batches(net3d, volume3d, as_event):
    counting = CountingPredictor(net3d)
    event = threading.Event()
    cancel = event if as_event else event.is_set
    with pytest.raises(Cancelled):
        sliding_window_inference(volume3d, counting, (12, 16, 10),
                                 windows=WindowOptions(batch_size=2, skip_empty=False),
                                 device="cpu", cancel=cancel,
                                 progress=lambda done, total: event.set() if done >= 4 else None)
    assert counting.calls == [2, 2]


def test_tta_with_flip_equivariant_net_equals_plain(symmetric_net3d, volume3d):
    # float32: in bfloat16 a flipped input sums in another order and rounds differently.
    plain = sliding_window_inference(volume3d, symmetric_net3d, (12, 16, 10),
                                     windows=WindowOptions(skip_empty=False),
                                     outputs=OutputRequest(keep_probabilities="all"), device="cpu",
                                     use_autocast=False)
    augmented = sliding_window_inference(volume3d, symmetric_net3d, (12, 16, 10),
                                         windows=WindowOptions(skip_empty=False),
                                         outputs=OutputRequest(keep_probabilities="all",
                                                               tta=True, uncertainty="variance"),
                                         device="cpu", use_autocast=False)
    np.testing.assert_allclose(stacked(augmented, 3), stacked(plain, 3), atol=1e-5)
    # All eight members agree, so the variance is zero everywhere.
    assert augmented.uncertainty.shape == volume3d.shape
    assert np.abs(augmented.uncertainty).max() < 1e-9


def test_tta_variance_is_positive_where_members_disagree(net3d, volume3d):
    result = sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                      windows=WindowOptions(skip_empty=False),
                                      outputs=OutputRequest(tta=[(0,), (2,)],
                                                            uncertainty="variance"),
                                      device="cpu")
    assert result.uncertainty.max() > 1e-4 and result.uncertainty.min() >= 0


def test_entropy_uncertainty_matches_numpy(net3d, volume3d):
    result = sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                      windows=WindowOptions(skip_empty=False),
                                      outputs=OutputRequest(keep_probabilities="all",
                                                            uncertainty="entropy"),
                                      device="cpu")
    p = stacked(result, 3).astype(np.float64)
    expected = -(p * np.log(np.clip(p, 1e-12, None))).sum(0) / np.log(3)
    np.testing.assert_allclose(result.uncertainty, expected, atol=1e-5)


def test_bad_inputs_raise_typed_errors(net3d, volume3d):
    bad = volume3d.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(DimensionError, match="NaN"):
        sliding_window_inference(bad, net3d, (12, 16, 10), device="cpu")
    with pytest.raises(ModelError, match="must return"):
        sliding_window_inference(volume3d, lambda x: x[:, :, :4], (12, 16, 10),
                                 windows=WindowOptions(skip_empty=False), device="cpu")
    with pytest.raises(ModelError, match="overlap"):
        sliding_window_inference(volume3d, net3d, (12, 16, 10), windows=WindowOptions(overlap=1.0))
    with pytest.raises(ModelError, match="tta"):
        sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                 outputs=OutputRequest(uncertainty="variance"))
    with pytest.raises(ModelError, match="classes"):
        sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                 windows=WindowOptions(skip_empty=False), num_classes=2,
                                 device="cpu")


def test_streaming_with_sparse_foreground_equals_whole_volume(net3d):
    # Blobs far apart along axis 0: the windows batched together lie rows apart, so the
    # engine must run batches early to keep the slab bounded, without changing results.
    volume = np.zeros((70, 16, 16), np.float32)
    for z in (3, 30, 62):
        volume[z:z + 3, 5:9, 6:10] = 1.0
    kwargs = dict(outputs=OutputRequest(keep_probabilities=(1,)), device="cpu")
    counting = CountingPredictor(net3d)
    streamed = sliding_window_inference(volume, counting, (8, 8, 8), windows=WindowOptions(
        overlap=0.5, batch_size=4, stream=True), **kwargs)
    whole = sliding_window_inference(volume, net3d, (8, 8, 8), windows=WindowOptions(
        overlap=0.5, batch_size=4, stream=False), **kwargs)
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    np.testing.assert_array_equal(streamed.probabilities[1], whole.probabilities[1])
    # 18 windows hold the first blob: the last 2 run as a batch of their own.
    assert 2 in counting.calls and sum(counting.calls) == whole.windows_predicted


class AttentionNet(nn.Module):
    """Records a two-head spatial map (sigmoid(x), sigmoid(2x)) at the input's resolution,
    pointwise, so the blended map must equal its per-voxel value."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv3d(1, 2, 1)

    def forward(self, x):
        from napari_medattn.models.capture import MapKind, record

        record(self, "alpha", torch.cat([torch.sigmoid(x), torch.sigmoid(2 * x)], 1),
               MapKind.SPATIAL)
        return self.head(x)


def test_attention_maps_are_blended_over_the_volume(volume3d):
    from napari_medattn.inference.sliding_window import attention_map_names

    net = AttentionNet()
    assert attention_map_names(net, (12, 16, 10)) == ["alpha"]
    result = sliding_window_inference(volume3d, net, (12, 16, 10),
                                      windows=WindowOptions(skip_empty=False),
                                      outputs=OutputRequest(tta=True, attention_maps=["alpha"]),
                                      device="cpu")
    x = volume3d.astype(np.float64)
    expected = (1 / (1 + np.exp(-x)) + 1 / (1 + np.exp(-2 * x))) / 2
    np.testing.assert_allclose(result.attention["alpha"], expected, atol=1e-5)
    with pytest.raises(ModelError, match=r"no spatial attention map 'beta' \(it records: alpha\)"):
        sliding_window_inference(volume3d, net, (12, 16, 10),
                                 outputs=OutputRequest(attention_maps=["beta"]), device="cpu")


def test_probabilities_of_missing_classes_are_refused(net3d, volume3d):
    with pytest.raises(ModelError, match=r"classes \(5,\), but the network predicts 3"):
        sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                 windows=WindowOptions(skip_empty=False),
                                 outputs=OutputRequest(keep_probabilities=(5,)), device="cpu")


def test_many_classes_give_uint16_labels():
    torch.manual_seed(0)
    net = nn.Conv3d(1, 300, 1)
    with torch.no_grad():  # class 290 wins where x < 0, class 10 where x > 0
        net.weight.zero_()
        net.bias.zero_()
        net.bias[[10, 290]] = 3.0
        net.weight[10] = 2.0
    volume = np.random.default_rng(5).normal(size=(6, 7, 5)).astype(np.float32)
    result = sliding_window_inference(volume, net, (4, 4, 4),
                                      windows=WindowOptions(skip_empty=False),
                                      outputs=OutputRequest(keep_probabilities="all"),
                                      device="cpu")
    assert result.labels.dtype == np.uint16 and result.num_classes == 300
    probabilities = np.stack([result.probabilities[c] for c in range(300)])
    np.testing.assert_array_equal(result.labels, probabilities.argmax(0))
    assert result.labels.max() > 255


def test_classes_found_after_empty_rows_were_finalised(net3d):
    # The first rows are all skipped and written out before the network reveals its
    # number of classes; their planes must still get every class's probability.
    volume = np.zeros((40, 12, 12), np.float32)
    volume[32:36, 4:8, 4:8] = 1.0
    found = sliding_window_inference(volume, net3d, (8, 8, 8),
                                     outputs=OutputRequest(keep_probabilities="all"), device="cpu")
    told = sliding_window_inference(volume, net3d, (8, 8, 8),
                                    outputs=OutputRequest(keep_probabilities="all"), num_classes=3,
                                    device="cpu")
    assert found.num_classes == 3 and sorted(found.probabilities) == [0, 1, 2]
    for c in range(3):
        np.testing.assert_array_equal(found.probabilities[c], told.probabilities[c])
    np.testing.assert_array_equal(found.labels, told.labels)
    np.testing.assert_array_equal(found.probabilities[0][:20], 1.0)
