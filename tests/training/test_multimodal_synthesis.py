"""Synthetic BraTS-like cases: labels in BraTS's convention, regions, crops that keep patient
space, normalisation, imbalanced missing rates."""

import numpy as np
import pytest

from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import Volume
from napari_medattn.training.lesions import MODALITY_CONTRAST
from napari_medattn.models.brats import classes_to_labels, labels_to_classes, region_masks
from napari_medattn.training.multimodal_synthesis import (
    brats_labels,
    crop_around,
    draw_presence,
    synthetic_multimodal_case,
)


def test_label_conventions():
    lesions = np.array([0, 1, 2, 3, 4, 5, 6], np.uint8)  # bg, CSF, GM, WM, oedema, rim, core
    brats = brats_labels(lesions)
    assert brats.tolist() == [0, 0, 0, 0, 2, 4, 1]
    regions = region_masks(brats)
    assert regions["WT"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert regions["TC"].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert regions["ET"].tolist() == [0, 0, 0, 0, 0, 1, 0]
    classes = labels_to_classes(brats)
    assert classes.tolist() == [0, 0, 0, 0, 2, 3, 1]
    assert classes_to_labels(classes).tolist() == brats.tolist()
    with pytest.raises(DimensionError, match="0, 1, 2 and 4"):
        labels_to_classes(np.array([0, 3]))


def test_crop_keeps_patient_space():
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    data = np.arange(20 * 18 * 16, dtype=np.float32).reshape(20, 18, 16)
    volume = Volume(data, affine, "MR", {"name": "v"})
    crop = crop_around(volume, (18, 2, 8), (8, 8, 8))  # clipped at both ends
    assert crop.data.shape == (8, 8, 8)
    for index in [(0, 0, 0), (7, 3, 5)]:
        mm = crop.index_to_mm(np.array(index))
        original = np.round(volume.mm_to_index(mm)).astype(int)
        assert crop.data[index] == data[tuple(original)]
    np.testing.assert_array_equal(crop.data, data[12:20, 0:8, 4:12])


def test_draw_presence_rates():
    rng = np.random.default_rng(0)
    rates = (0.1, 0.7, 0.3, 0.5)
    draws = np.array([draw_presence(rng, rates) for _ in range(4000)])
    assert draws.any(1).all()
    # Conditioned on at least one present: P(missing m) = (r_m - prod r) / (1 - prod r).
    prod = np.prod(rates)
    expected = [(r - prod) / (1 - prod) for r in rates]
    np.testing.assert_allclose(1 - draws.mean(0), expected, atol=0.03)
    with pytest.raises(DimensionError, match="Missing rates"):
        draw_presence(rng, (0.5, 1.0))


def test_synthetic_case(one_torch_thread):
    case = synthetic_multimodal_case(5, crop=(32, 32, 32))
    assert set(case.images) == {"t1", "t1ce", "t2", "flair"}
    labels = case.labels.data
    assert labels.shape == (32, 32, 32) and set(np.unique(labels)) <= {0, 1, 2, 4}
    assert {1, 2, 4} <= set(np.unique(labels))  # every sub-region present in the crop
    for image in case.images.values():
        np.testing.assert_array_equal(image.affine, case.labels.affine)
    # The tumour centre (mm) is inside the crop, and contrasts follow the lesions table:
    # enhancing rim brightest on T1ce, oedema brighter than the core on FLAIR.
    centre = case.labels.mm_to_index(np.asarray(case.labels.meta["lesion"]["centre_mm"]))
    assert np.all((centre >= 0) & (centre < 32))
    t1ce, flair = case.images["t1ce"].data, case.images["flair"].data
    assert MODALITY_CONTRAST["T1ce"][5] > MODALITY_CONTRAST["T1ce"][6]
    assert t1ce[labels == 4].mean() > t1ce[labels == 1].mean()
    assert flair[labels == 2].mean() > flair[labels == 1].mean()
    again = synthetic_multimodal_case(5, crop=(32, 32, 32))
    np.testing.assert_array_equal(again.images["t2"].data, case.images["t2"].data)
