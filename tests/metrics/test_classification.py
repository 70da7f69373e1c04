"""ROC AUC and its bootstrap interval against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_medattn.errors import DimensionError
from napari_medattn.metrics.classification import auc_with_ci, roc_auc


def test_auc_by_hand_and_with_ties():
    # Pairs (positive, negative): 0.35 > 0.1 yes, 0.35 > 0.4 no, 0.8 > both: 3 of 4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie counts one half: (0.5 vs 0.5) = 0.5, (0.5 vs 0.2) = 1 -> 1.5 / 2.
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(size=80) + labels, 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_interval_holds_the_auc_narrows_with_more_cases_and_is_reproducible():
    rng = np.random.default_rng(3)
    small_y = rng.integers(0, 2, 40)
    small = auc_with_ci(small_y, rng.normal(size=40) + small_y, n_resamples=1000)
    big_y = rng.integers(0, 2, 400)
    big = auc_with_ci(big_y, rng.normal(size=400) + big_y, n_resamples=1000)
    assert small.low < small.auc < small.high and big.low < big.auc < big.high
    assert big.high - big.low < small.high - small.low
    # Binormal with d' = 1: AUC = Phi(1 / sqrt 2) = 0.760; the big sample's interval holds it.
    assert big.low < 0.760 < big.high
    again = auc_with_ci(small_y, rng.normal(size=40) * 0 + small_y, n_resamples=1000)
    assert (again.auc, again.low, again.high) == (1.0, 1.0, 1.0)  # perfect separation
    assert auc_with_ci(small_y, small_y + 0.5, seed=5) == auc_with_ci(small_y, small_y + 0.5,
                                                                      seed=5)
    assert (small.n_positive, small.n_negative) == (int(small_y.sum()), int(40 - small_y.sum()))


@pytest.mark.parametrize("labels, scores, words", [
    ([1, 1, 1], [0.2, 0.3, 0.4], "positive and negative"),
    ([0, 1], [0.2, np.nan], "finite"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "must be 0"),
    ([0, 1], [0.1], "same length"),
])
def test_bad_input_gets_one_sentence(labels, scores, words):
    with pytest.raises(DimensionError, match=words):
        roc_auc(labels, scores)
