"""Detector targets, loss and the synthetic lesion cases."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_medattn.detection import Detection
from napari_medattn.detection.boxes import boxes_in_frame
from napari_medattn.detection.detector import SIZE_SCALE_MM, detect
from napari_medattn.detection.training import (
    _prepared,
    detection_loss,
    detector_card,
    lesion_targets,
)
from napari_medattn.io.volume import Volume
from napari_medattn.training.lesion_synthesis import LESION_KINDS, place_lesions, truth_boxes


def test_targets_peak_at_the_true_centre_with_its_size():
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [50.0, 60.0, -30.0]
    centre_index = np.array([10.0, 7.0, 12.0])
    lesion = Detection(affine[:3, :3] @ centre_index + affine[:3, 3], [8.0, 12.0, 6.0], label=2)
    heat, log_size, mask = lesion_targets((24, 20, 28), affine, [lesion], 3, start=(2, 0, 4))
    local = (10 - 2, 7, 12 - 4)
    assert heat[1][local] == 1.0 and heat[0].max() == 0 and heat[2].max() == 0
    assert np.unravel_index(np.argmax(heat[1]), heat[1].shape) == local
    # Sizes are along the grid's axes (the flipped axes do not change them).
    assert np.allclose(log_size[(slice(None), *local)], np.log(np.array([8, 12, 6]) / SIZE_SCALE_MM))
    assert mask[local] and not mask[0, 0, 0]
    # sigma = max(size / spacing / 5, 0.75) voxels: 0.8 along axis 0 (4 voxels), 0.75
    # along axis 2 (3 voxels).
    assert np.isclose(heat[1][local[0] + 1, local[1], local[2]], np.exp(-1 / (2 * 0.8 ** 2)))
    assert np.isclose(heat[1][local[0], local[1], local[2] + 1], np.exp(-1 / (2 * 0.75 ** 2)))


def test_loss_prefers_the_right_maps():
    affine = np.eye(4)
    lesion = Detection([8.0, 8.0, 8.0], [5.0, 5.0, 5.0], label=1)
    heat, log_size, mask = (torch.from_numpy(a[None]) for a in
                            lesion_targets((16, 16, 16), affine, [lesion], 1))
    good = torch.cat([torch.logit(heat.clamp(1e-4, 1 - 1e-4)), log_size], 1)
    flat = torch.cat([torch.full_like(heat, -4.6), torch.zeros_like(log_size)], 1)
    assert detection_loss(good, heat, log_size, mask) < 0.5 * detection_loss(flat, heat, log_size, mask)


def test_placed_lesions_are_separate_and_their_boxes_cover_them():
    # A small ball phantom (CSF shell, grey matter, white matter core) keeps this fast;
    # synthetic_lesion_case does the same on deformed MNI152 anatomy.
    r = np.linalg.norm(np.indices((44, 44, 44)) - 21.5, axis=0)
    tissue = np.select([r < 14, r < 18, r < 20], [3, 2, 1], 0).astype(np.uint8)
    volume = Volume(tissue, np.diag([2.0, 2.0, 2.0, 1.0]), "SEG", {"name": "ball"})
    labels, instances, placed = place_lesions(volume, [1, 2, 3, 2], seed=3)
    assert len(placed) >= 2 and set(placed) <= set(LESION_KINDS)
    assert instances.max() == len(placed)
    lesions = truth_boxes(Volume(instances, volume.affine, "SEG"), placed)
    for i, lesion in enumerate(lesions, start=1):
        assert lesion.class_name == LESION_KINDS[placed[i - 1]]
        voxels = np.argwhere(instances == i)
        mm = voxels @ volume.affine[:3, :3].T + volume.affine[:3, 3]
        local = np.abs((mm - lesion.centre_mm) @ lesion.axes)
        assert (local <= lesion.size_mm / 2 + 1e-6).all()
        # Lesions are lesion labels (4-6), and no two touch.
        assert (labels[instances == i] >= 4).all()
        grown = ndimage.binary_dilation(instances == i)
        assert not (grown & (instances > 0) & (instances != i)).any()
    again = place_lesions(volume, [1, 2, 3, 2], seed=3)
    assert np.array_equal(again[1], instances)


def test_positive_weight_scales_the_true_centres_term_only():
    import torch.nn.functional as F

    heat = torch.zeros((1, 1, 4, 4, 4))
    heat[0, 0, 1, 1, 1] = 1.0                      # one true centre
    heat[0, 0, 2, 1, 1] = 0.5                      # a neighbour: penalty-reduced negative
    log_size = torch.zeros((1, 3, 4, 4, 4))
    mask = torch.zeros((1, 4, 4, 4), dtype=torch.bool)   # no size term
    logits = torch.full((1, 1, 4, 4, 4), -1.0)
    output = torch.cat([logits, log_size], 1)
    # By hand: p = sigmoid(-1); the centre costs -log(p)(1-p)^2, each negative
    # -log(1-p) p^2 (1-heat)^4; one positive normalises.
    p = torch.sigmoid(torch.tensor(-1.0))
    positive = -F.logsigmoid(torch.tensor(-1.0)) * (1 - p) ** 2
    negative = -F.logsigmoid(torch.tensor(1.0)) * p ** 2 * (62 + 0.5 ** 4)
    for weight in (1.0, 4.0):
        expected = weight * positive + negative
        assert torch.isclose(detection_loss(output, heat, log_size, mask, weight), expected,
                             rtol=1e-5)


class TargetOracle(torch.nn.Module):
    """A detector whose output is the training target of one prepared case: the logits of
    its heatmaps and its log-sizes, whatever the input (of the window's shape)."""

    def __init__(self, heat, log_size):
        super().__init__()
        logits = torch.logit(torch.from_numpy(heat).clamp(1e-6, 1 - 1e-6))
        self.maps = torch.cat([logits, torch.from_numpy(log_size)])[None]

    def forward(self, x):
        assert tuple(x.shape[2:]) == tuple(self.maps.shape[2:])
        return self.maps.expand(x.shape[0], -1, -1, -1, -1)


@pytest.mark.parametrize("turn", ["ras", "permuted", "oblique"])
def test_the_training_targets_decode_back_to_the_true_boxes_through_detect(turn):
    # Encode the truth as training does (_prepared's grid and padding, lesion_targets),
    # decode it as a user's run does (detect: card grid, sliding window, decode_maps): a
    # mismatch of grid, padding or axes between the two sends the boxes elsewhere.
    matrix = {"ras": np.diag([-1.0, -1.0, 1.0]),
              "permuted": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
              "oblique": Rotation.from_euler("xyz", [12, -8, 20], degrees=True).as_matrix()
              }[turn]
    shape = (50, 56, 46)
    affine = np.eye(4)
    affine[:3, :3] = matrix * 3.0
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) / 2)
    data = np.zeros(shape, np.float32)
    data[5:-5, 5:-5, 5:-5] = 1.0 + 0.01 * np.arange(shape[2] - 10)  # a body to normalise
    scan = Volume(data, affine, "MR", {"name": turn})
    truth = [Detection(affine[:3, :3] @ np.array(c, float) + affine[:3, 3], s, matrix,
                       label=k, class_name=LESION_KINDS[k])
             for c, s, k in [((15, 20, 12), (24.0, 20.0, 16.0), 1),
                             ((35, 30, 30), (8.0, 8.0, 12.0), 2),
                             ((24, 44, 33), (12.0, 16.0, 12.0), 3)]]
    card = detector_card("", "")
    (case,) = _prepared([(scan, truth)], card)
    assert case.image.shape == card.patch_size  # one window: the oracle's maps cover it
    heat, log_size, _ = lesion_targets(case.image.shape, case.affine, truth, len(LESION_KINDS))
    found = detect(scan, TargetOracle(heat, log_size), card, device="cpu", min_score=0.5,
                   use_autocast=False).detections
    assert len(found) == len(truth)
    for lesion in truth:
        box = min(found, key=lambda d: np.linalg.norm(d.centre_mm - lesion.centre_mm))
        assert box.label == lesion.label
        # Within half a 4 mm voxel per axis: the peak voxel, refined.
        assert np.linalg.norm(box.centre_mm - lesion.centre_mm) <= 2.0 * np.sqrt(3)
        frame = case.affine[:3, :3] / np.linalg.norm(case.affine[:3, :3], axis=0)
        expected = boxes_in_frame([lesion], frame)[0]
        np.testing.assert_allclose(box.size_mm, expected[3:] - expected[:3], rtol=1e-4)


def test_the_detector_input_keeps_a_bright_lesion_above_all_normal_tissue():
    # The card's z-score clipped at the head's 99.5th percentile: a small FLAIR-bright
    # lesion came out level with the brightest few hundred voxels of normal tissue.
    rng = np.random.default_rng(1)
    shape = (48, 56, 44)
    data = np.zeros(shape, np.float32)
    inner = tuple(slice(4, n - 4) for n in shape)
    bias = np.linspace(0.8, 1.3, shape[1], dtype=np.float32)[None, :, None]
    data[inner] = (bias * (1.0 + 0.1 * rng.standard_normal(shape)))[inner]
    data[20:22, 30:32, 10:12] = 2.0
    scan = Volume(data, np.diag([-4.0, -4.0, 4.0, 1.0]), "MR", {"name": "phantom"})
    (case,) = _prepared([(scan, [])], detector_card("", ""))
    top = np.sort(case.image.ravel())[::-1]
    assert np.all(top[:8] == top[0]) and top[0] > top[8] + 0.5
