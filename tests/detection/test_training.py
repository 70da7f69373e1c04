"""Detector targets, loss and the synthetic lesion cases."""

import numpy as np
import torch
from scipy import ndimage

from napari_medattn.detection import Detection
from napari_medattn.detection.detector import SIZE_SCALE_MM
from napari_medattn.detection.training import detection_loss, lesion_targets
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
