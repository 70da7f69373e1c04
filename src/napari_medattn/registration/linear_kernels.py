"""Compiled cost and gradient of the linear registration stage on CPU (numba).

Why compiled code and not the torch closed form of :mod:`.similarity` and
:func:`.sampling.sample_with_gradient`: the linear stage evaluates its metric 60-80 times
per run on a few thousand sample points, where each torch evaluation is a few dozen small
operations and their per-operation overhead, not the arithmetic, set the time (about
5 ms per evaluation, against well under 1 ms here for 8,000 points). One pass maps the
fixed sample points through the 3x4 matrix, reads the moving image trilinearly with its
exact slopes, and accumulates the metric; a second pass (Mattes MI only) turns the joint
histogram into each sample's derivative and sums the gradient with respect to the matrix.

The formulas are those of :func:`.similarity.loss_and_gradient` (the spec; the tests
check both against each other and against autograd): MSE of intensities normalised to
[0, 1], and Mattes mutual information with cubic B-spline Parzen windows, ITK's
derivative (Mattes et al. 2003, eq. 8). The trilinear slope along an axis is the forward
difference at the cell's lower corner blended along the other axes, as
:func:`.sampling.sample_with_gradient` computes it. Arithmetic is float64 and serial, so
the result is the same whatever the thread count. Compiled once per installation (cached
on disk).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Offset inside the logarithms of the mutual information (as :mod:`.similarity`).
_EPS = 1e-10


def loss_and_gradient(metric: str, points: np.ndarray, values: np.ndarray,
                      weight: np.ndarray, image: np.ndarray, to_index: np.ndarray,
                      matrix: np.ndarray, bins: int = 32) -> tuple[float, np.ndarray]:
    """The metric of the moving ``image`` read at ``matrix @ points`` and its gradient
    with respect to ``matrix``.

    Parameters
    ----------
    metric : str
        ``"mse"`` or ``"mi"`` (Mattes; the loss is ``-MI`` in nats).
    points : (..., 3) ndarray
        Fixed sample points, LPS mm.
    values, weight : (...) ndarray
        Fixed intensities (normalised to [0, 1]) and weights (0 leaves a point out).
    image : (a0, a1, a2) ndarray
        Moving intensities, normalised as ``values``.
    to_index : (4, 4) ndarray
        LPS mm -> array index of the moving image.
    matrix : (4, 4) ndarray
        The transform fixed mm -> moving mm.
    bins : int
        Mattes MI histogram bins.

    Returns
    -------
    loss : float
        Points mapped outside the moving image do not count.
    gradient : (4, 4) ndarray
        d loss / d matrix (last row zero).
    """
    to_index = np.asarray(to_index, np.float64)
    mapping = np.ascontiguousarray((to_index @ np.asarray(matrix, np.float64))[:3])
    args = (np.ascontiguousarray(points, np.float32).reshape(-1, 3),
            np.ascontiguousarray(values, np.float32).reshape(-1),
            np.ascontiguousarray(weight, np.float32).reshape(-1),
            np.ascontiguousarray(image, np.float32), mapping)
    if metric == "mse":
        loss, in_index = _mse(*args)
    elif metric == "mi":
        loss, in_index = _mattes_mi(*args, int(bins))
    else:
        raise ValueError(f"no compiled linear-stage kernel for metric {metric!r}")
    gradient = np.zeros((4, 4))
    # d loss / d index -> d loss / d moving mm: index = to_index @ moving mm.
    gradient[:3] = to_index[:3, :3].T @ in_index
    return float(loss), gradient


@njit(cache=True, nogil=True)
def _read(image, mapping, px, py, pz):
    """Trilinear value at the moved point and its slopes per index along each axis;
    ``inside`` false (and zeros) when the point falls outside the grid."""
    n0, n1, n2 = image.shape
    x = mapping[0, 0] * px + mapping[0, 1] * py + mapping[0, 2] * pz + mapping[0, 3]
    y = mapping[1, 0] * px + mapping[1, 1] * py + mapping[1, 2] * pz + mapping[1, 3]
    z = mapping[2, 0] * px + mapping[2, 1] * py + mapping[2, 2] * pz + mapping[2, 3]
    if not (0.0 <= x <= n0 - 1 and 0.0 <= y <= n1 - 1 and 0.0 <= z <= n2 - 1):
        return False, 0.0, 0.0, 0.0, 0.0
    a, b, c = int(x), int(y), int(z)
    tx, ty, tz = x - a, y - b, z - c
    # On the last index the upper neighbour is the point itself (weight 0): the slope
    # along that axis is then 0, as the zero forward difference of the torch path.
    a1, b1, c1 = min(a + 1, n0 - 1), min(b + 1, n1 - 1), min(c + 1, n2 - 1)
    v000 = np.float64(image[a, b, c])
    v001 = np.float64(image[a, b, c1])
    v010 = np.float64(image[a, b1, c])
    v011 = np.float64(image[a, b1, c1])
    v100 = np.float64(image[a1, b, c])
    v101 = np.float64(image[a1, b, c1])
    v110 = np.float64(image[a1, b1, c])
    v111 = np.float64(image[a1, b1, c1])
    # Blend along z, then y: the four edges and two faces the value and slopes share (the
    # resampler's trilinear helper returns the value alone, so it is not reused here).
    e00 = v000 + tz * (v001 - v000)
    e01 = v010 + tz * (v011 - v010)
    e10 = v100 + tz * (v101 - v100)
    e11 = v110 + tz * (v111 - v110)
    f0 = e00 + ty * (e01 - e00)
    f1 = e10 + ty * (e11 - e10)
    value = f0 + tx * (f1 - f0)
    slope_x = f1 - f0
    slope_y = (e01 - e00) + tx * ((e11 - e10) - (e01 - e00))
    low = (v001 - v000) + ty * ((v011 - v010) - (v001 - v000))
    high = (v101 - v100) + ty * ((v111 - v110) - (v101 - v100))
    slope_z = low + tx * (high - low)
    return True, value, slope_x, slope_y, slope_z


@njit(cache=True, nogil=True)
def _mse(points, values, weight, image, mapping):
    """Weighted mean squared difference and its gradient with respect to ``mapping``."""
    total = 0.0
    squares = 0.0
    gradient = np.zeros((3, 4))
    for n in range(points.shape[0]):
        w = np.float64(weight[n])
        if w == 0.0:
            continue
        px, py, pz = np.float64(points[n, 0]), np.float64(points[n, 1]), np.float64(points[n, 2])
        inside, value, sx, sy, sz = _read(image, mapping, px, py, pz)
        if not inside:
            continue
        difference = value - values[n]
        total += w
        squares += w * difference * difference
        _accumulate(gradient, 2.0 * w * difference, sx, sy, sz, px, py, pz)
    total = max(total, 1.0)
    return squares / total, gradient / total


@njit(cache=True, nogil=True, inline="always")
def _accumulate(gradient, factor, sx, sy, sz, px, py, pz):
    """``gradient += factor * slopes (x) (p, 1)``: the chain rule through index = M p."""
    slopes = (sx, sy, sz)
    for i in range(3):
        s = factor * slopes[i]
        gradient[i, 0] += s * px
        gradient[i, 1] += s * py
        gradient[i, 2] += s * pz
        gradient[i, 3] += s


@njit(cache=True, nogil=True, inline="always")
def _parzen(value, bins):
    """First of the 4 bins a value (bin units, within [0, bins - 1]) touches, and the
    cubic B-spline weights and their derivatives there (bin indices are clamped to the
    histogram by the caller)."""
    floor = np.floor(value)
    t = value - floor
    s = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    weights = (s * s * s / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
               (3.0 * (t + t2 - t3) + 1.0) / 6.0, t3 / 6.0)
    slopes = (-s * s / 2.0, (3.0 * t2 - 4.0 * t) / 2.0, (1.0 + 2.0 * t - 3.0 * t2) / 2.0,
              t2 / 2.0)
    return int(floor) - 1, weights, slopes


@njit(cache=True, nogil=True)
def _mattes_mi(points, values, weight, image, mapping, bins):
    """``-MI`` (nats) and its gradient with respect to ``mapping``: a pass filling the
    joint histogram, then a pass summing each sample's derivative."""
    count = points.shape[0]
    top = bins - 1
    moved = np.zeros(count)
    slopes = np.zeros((count, 3))
    used = np.zeros(count, np.bool_)
    joint = np.zeros((bins, bins))
    mass = 0.0
    for n in range(count):
        w = np.float64(weight[n])
        if w == 0.0:
            continue
        inside, value, sx, sy, sz = _read(image, mapping, np.float64(points[n, 0]),
                                          np.float64(points[n, 1]), np.float64(points[n, 2]))
        if not inside:
            continue
        used[n] = True
        moved[n] = value
        slopes[n, 0], slopes[n, 1], slopes[n, 2] = sx, sy, sz
        mass += w
        first_f, weights_f, _ = _parzen(min(max(np.float64(values[n]), 0.0), 1.0) * top, bins)
        first_m, weights_m, _ = _parzen(min(max(value * top, 0.0), top), bins)
        for a in range(4):
            row = min(max(first_f + a, 0), top)
            for b in range(4):
                joint[row, min(max(first_m + b, 0), top)] += w * weights_f[a] * weights_m[b]
    joint /= max(joint.sum(), 1e-12)
    mass = max(mass, 1e-12)
    fixed_marginal = joint.sum(axis=1)
    moving_marginal = joint.sum(axis=0)
    information = 0.0
    # d(p log(p + eps))/dp minus the moving marginal's, exactly as the torch closed form.
    log_ratio = np.empty((bins, bins))
    for a in range(bins):
        for b in range(bins):
            p = joint[a, b]
            pm = moving_marginal[b]
            information += p * (np.log(p + _EPS) - np.log(fixed_marginal[a] + _EPS)
                                - np.log(pm + _EPS))
            log_ratio[a, b] = (np.log(p + _EPS) + p / (p + _EPS) - np.log(pm + _EPS)
                               - pm / (pm + _EPS))
    gradient = np.zeros((3, 4))
    for n in range(count):
        m = moved[n] * top
        if not used[n] or m < 0.0 or m > top:  # clamped values do not move
            continue
        first_f, weights_f, _ = _parzen(min(max(np.float64(values[n]), 0.0), 1.0) * top, bins)
        first_m, _, slopes_m = _parzen(m, bins)
        slope = 0.0
        for a in range(4):
            row = min(max(first_f + a, 0), top)
            for b in range(4):
                slope += weights_f[a] * slopes_m[b] * log_ratio[row, min(max(first_m + b, 0),
                                                                         top)]
        factor = -top / mass * np.float64(weight[n]) * slope
        _accumulate(gradient, factor, slopes[n, 0], slopes[n, 1], slopes[n, 2],
                    np.float64(points[n, 0]), np.float64(points[n, 1]),
                    np.float64(points[n, 2]))
    return -information, gradient
