"""Random training patches: size, seeding, crops of the case, foreground oversampling and
padding, against the case they are cut from."""

import numpy as np
import torch

from napari_medattn.io import Volume
from napari_medattn.training.datasets import Case
from napari_medattn.training.patches import PatchDataset


def _tiny_foreground_case():
    image = np.random.default_rng(0).normal(size=(1, 40, 40, 40)).astype(np.float32)
    label = np.zeros((40, 40, 40), np.uint8)
    label[30:33, 5:8, 20:23] = 1
    return Case("tiny", Volume(image, np.eye(4)), Volume(label, np.eye(4), "SEG"))


def test_patches_have_the_patch_size_and_are_seeded():
    case = _tiny_foreground_case()
    dataset = PatchDataset([case], (16, 12, 8), samples_per_epoch=6, seed=1)
    image, label = dataset[2]
    assert image.shape == (1, 16, 12, 8) and label.shape == (1, 16, 12, 8)
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    again = PatchDataset([case], (16, 12, 8), samples_per_epoch=6, seed=1)[2]
    assert torch.equal(again[0], image) and torch.equal(again[1], label)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2][0], image)


def test_patches_are_crops_of_the_case():
    case = _tiny_foreground_case()
    dataset = PatchDataset([case], (10, 10, 10), samples_per_epoch=4, seed=2)
    image, _ = dataset[0]
    # The patch is a contiguous block of the volume: find where it came from.
    volume = torch.from_numpy(case.image.data[0])
    windows = volume.unfold(0, 10, 1).unfold(1, 10, 1).unfold(2, 10, 1)
    matches = (windows == image[0]).flatten(3).all(-1).nonzero()
    assert len(matches) == 1


def test_foreground_oversampling():
    case = _tiny_foreground_case()

    def share_with_foreground(fraction):
        dataset = PatchDataset([case], (12, 12, 12), samples_per_epoch=150,
                               foreground_fraction=fraction, seed=0)
        return np.mean([bool(dataset[i][1].any()) for i in range(len(dataset))])

    never, nnunet, always = (share_with_foreground(f) for f in (0.0, 0.33, 1.0))
    assert always == 1.0
    # A random 12^3 patch holds the 3^3 cube about (14/29)^3 ~ 11 % of the time.
    assert never < 0.2
    assert nnunet > never + 0.15


def test_small_volume_is_padded_with_background():
    case = _tiny_foreground_case()
    small = Case("small", Volume(case.image.data[:, :6, :40, :40], np.eye(4)),
                       Volume(case.label.data[:6], np.eye(4), "SEG"))
    image, label = PatchDataset([small], (10, 8, 8), samples_per_epoch=2, seed=0)[0]
    assert image.shape == (1, 10, 8, 8)
    # 6 voxels centred in 10: two zero planes on each side.
    assert torch.all(image[0, :2] == 0) and torch.all(image[0, -2:] == 0)
    assert torch.all(image[0, 2:8] != 0)
