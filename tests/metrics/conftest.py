"""Random label maps with smooth blobs, shared by the metric tests."""

import numpy as np
import pytest
from scipy import ndimage


def blob_labels(shape, seed, classes=2, smooth=3.0):
    """A label map of ``classes`` smooth blobs (0 = background) from a seeded field."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), smooth)
    edges = np.quantile(field, np.linspace(0.35, 1.0, classes + 1)[:-1])
    return np.digitize(field, edges).astype(np.uint8)


def perturbed(labels, seed, smooth=3.0):
    """``labels`` re-drawn from its own field plus noise: a plausible prediction of it."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(labels.shape), smooth)
    blurred = ndimage.gaussian_filter(labels.astype(float), 1.0) + 0.6 * noise / noise.std()
    return np.clip(np.rint(blurred), 0, labels.max()).astype(np.uint8)


@pytest.fixture
def blobs():
    """The :func:`blob_labels` factory (fixtures, because test folders are not packages)."""
    return blob_labels


@pytest.fixture(params=[((36, 40, 24), (1.0, 0.7, 2.5)), ((64, 56), (0.8, 1.3))],
                ids=["3d", "2d"])
def label_pair(request):
    shape, spacing = request.param
    reference = blob_labels(shape, seed=1)
    return perturbed(reference, seed=2), reference, spacing
