"""Scan-level classification metrics: ROC AUC and its bootstrap confidence interval.

The AUC is the Mann-Whitney statistic: the probability that a randomly chosen positive
case scores higher than a randomly chosen negative one, ties counting one half (scipy's
``mannwhitneyu``). Its confidence interval is a *stratified* bootstrap (scipy's
``bootstrap`` over the positive and the negative scores as two independent samples): every
resample keeps the numbers of positives and negatives, so no resample lacks a class, as
pROC does by default for AUC intervals. Percentile intervals rather than BCa: a classifier
that separates the held-out cases perfectly gives AUC 1 in every resample, where BCa's
acceleration is undefined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats

from napari_medattn.errors import DimensionError

__all__ = ["AUCResult", "auc_with_ci", "roc_auc"]


def _groups(labels: Sequence[int] | np.ndarray,
            scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the positive and the negative cases, checked."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise DimensionError(f"Labels and scores must be two lists of the same length; got "
                             f"shapes {labels.shape} and {scores.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise DimensionError("Labels must be 0 (negative) or 1 (positive).")
    if not np.isfinite(scores).all():
        raise DimensionError("Scores must be finite numbers (a NaN or infinity was given).")
    positive, negative = scores[labels == 1], scores[labels == 0]
    if positive.size == 0 or negative.size == 0:
        raise DimensionError(f"The AUC needs positive and negative cases; got "
                             f"{positive.size} positive and {negative.size} negative.")
    return positive, negative


def _auc(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray:
    u = stats.mannwhitneyu(positive, negative, axis=axis, method="asymptotic").statistic
    return u / (positive.shape[axis] * negative.shape[axis])


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``.

    Parameters
    ----------
    labels : (N,) array of {0, 1}
        Truth per case (1 positive).
    scores : (N,) array of float
        The classifier's score per case (e.g. the probability of class 1); any monotone
        scale gives the same AUC.

    Returns
    -------
    float
        In [0, 1]; 0.5 is chance.

    Raises
    ------
    DimensionError
        Lengths differ, labels other than 0/1, non-finite scores, or a class is absent.
    """
    return float(_auc(*_groups(labels, scores)))


@dataclasses.dataclass(frozen=True)
class AUCResult:
    """An AUC with its bootstrap confidence interval.

    Attributes
    ----------
    auc, low, high : float
        The AUC of all cases and the interval's bounds.
    confidence : float
        The interval's level (e.g. 0.95).
    n_positive, n_negative : int
        Cases of each class.
    n_resamples : int
        Bootstrap resamples.
    """

    auc: float
    low: float
    high: float
    confidence: float
    n_positive: int
    n_negative: int
    n_resamples: int

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def auc_with_ci(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                confidence: float = 0.95, n_resamples: int = 2000,
                seed: int = 0) -> AUCResult:
    """ROC AUC with a stratified percentile-bootstrap confidence interval.

    Parameters
    ----------
    labels, scores
        As for :func:`roc_auc`.
    confidence : float
        Two-sided level of the interval, in (0, 1).
    n_resamples : int
        Bootstrap resamples (each draws the positives and the negatives with replacement,
        keeping their counts).
    seed : int
        Random seed: the same inputs and seed give the same interval.

    Returns
    -------
    AUCResult
    """
    if not 0.0 < confidence < 1.0:
        raise DimensionError(f"The confidence level must be between 0 and 1, not {confidence}.")
    positive, negative = _groups(labels, scores)
    result = stats.bootstrap((positive, negative), _auc, n_resamples=int(n_resamples),
                             vectorized=True, paired=False, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return AUCResult(float(_auc(positive, negative)), float(interval.low),
                     float(interval.high), float(confidence), int(positive.size),
                     int(negative.size), int(n_resamples))
