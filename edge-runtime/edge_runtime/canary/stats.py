"""The statistics behind a canary verdict, in numpy alone (scipy is not a dependency of the device).

Owns: average ranks with ties, the one-sided Mann–Whitney U test (normal approximation with tie correction
and continuity correction), the two-sample Kolmogorov–Smirnov statistic with its asymptotic p-value (the
Kolmogorov distribution), the population stability index over bins cut at the baseline's quantiles, and
percentiles. Pure functions of arrays; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Floor for an empty PSI bin's share: log(0) is undefined, and 1e-4 is the usual choice (a bin that is
# empty on one side still contributes a large, finite term).
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class MannWhitneyResult:
    """``u`` is the candidate's U statistic (pairs where candidate > baseline, ties counting one half)."""

    u: float
    z: float
    p_value: float


@dataclass(frozen=True)
class KsResult:
    """Two-sample KS: ``statistic`` is sup |F_candidate − F_baseline|, ``p_value`` its asymptotic p-value."""

    statistic: float
    p_value: float


def _as_floats(values: npt.ArrayLike) -> FloatArray:
    return np.asarray(values, dtype=np.float64).ravel()


def average_ranks(values: npt.ArrayLike) -> FloatArray:
    """1-based ranks; tied values share the average of the ranks they span (``scipy.stats.rankdata``)."""
    data = _as_floats(values)
    if data.size == 0:
        return np.empty(0, dtype=np.float64)
    _, inverse, counts = np.unique(data, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    starts = ends - counts + 1.0
    group_rank = (starts + ends) / 2.0
    ranks: FloatArray = group_rank[inverse]
    return ranks


def normal_sf(z: float) -> float:
    """Upper tail of the standard normal, P(Z > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_greater(candidate: npt.ArrayLike, baseline: npt.ArrayLike) -> MannWhitneyResult:
    """One-sided Mann–Whitney U test of "candidate tends to be larger (slower) than baseline".

    Normal approximation: mean n1·n2/2, variance n1·n2/12 · ((n+1) − Σ(t³ − t) / (n(n − 1))) over tie
    groups of size t, continuity correction 0.5 towards the mean — the textbook form, equal to
    ``scipy.stats.mannwhitneyu(..., alternative="greater", method="asymptotic")``. With an empty side or
    every value tied there is no evidence either way and the p-value is 1.
    """
    x = _as_floats(candidate)
    y = _as_floats(baseline)
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        return MannWhitneyResult(u=0.0, z=0.0, p_value=1.0)
    ranks = average_ranks(np.concatenate([x, y]))
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n2
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    ties = float(np.sum(counts.astype(np.float64) ** 3 - counts))
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0.0:
        return MannWhitneyResult(u=u, z=0.0, p_value=1.0)
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return MannWhitneyResult(u=u, z=z, p_value=min(1.0, normal_sf(z)))


def kolmogorov_sf(lam: float) -> float:
    """Q_KS(λ) = P(K > λ) of the Kolmogorov distribution.

    Two series, each used where it converges fast: 2 Σ (−1)^(k−1) exp(−2k²λ²) for λ ≥ 1.18, and
    1 − √(2π)/λ · Σ exp(−(2k−1)²π² / (8λ²)) below it (Numerical Recipes, §14.3).
    """
    if lam <= 0.0:
        return 1.0
    if lam < 1.18:
        terms = [math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8.0 * lam * lam)) for k in range(1, 8)]
        cdf = math.sqrt(2.0 * math.pi) / lam * sum(terms)
        return min(1.0, max(0.0, 1.0 - cdf))
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-16:
            break
    return min(1.0, max(0.0, total))


def ks_two_sample(candidate: npt.ArrayLike, baseline: npt.ArrayLike) -> KsResult:
    """Two-sample Kolmogorov–Smirnov test, two-sided, asymptotic p-value Q_KS(√(n1·n2/(n1+n2)) · D).

    The asymptotic form is what a device can afford; it is conservative enough at the canary's sample
    sizes (tens to hundreds of frames) and needs no tables. An empty side gives D = 0, p = 1.
    """
    x = np.sort(_as_floats(candidate))
    y = np.sort(_as_floats(baseline))
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        return KsResult(statistic=0.0, p_value=1.0)
    points = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, points, side="right") / n1
    cdf_y = np.searchsorted(y, points, side="right") / n2
    statistic = float(np.max(np.abs(cdf_x - cdf_y)))
    effective_n = n1 * n2 / (n1 + n2)
    return KsResult(statistic=statistic, p_value=kolmogorov_sf(math.sqrt(effective_n) * statistic))


def quantile_edges(baseline: npt.ArrayLike, bins: int) -> FloatArray:
    """Inner bin edges at the baseline's quantiles 1/bins … (bins−1)/bins, duplicates removed.

    Ties in the baseline (e.g. many confidences of exactly 1.0) collapse edges, so there may be fewer
    than ``bins`` bins; the outer bins are open-ended so every candidate value lands somewhere.
    """
    data = _as_floats(baseline)
    if data.size == 0 or bins < 2:
        return np.empty(0, dtype=np.float64)
    inner = np.quantile(data, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges: FloatArray = np.unique(inner)
    return edges


def population_stability_index(candidate: npt.ArrayLike, baseline: npt.ArrayLike, bins: int = 10) -> float:
    """PSI = Σ (c − b) · ln(c / b) over bins cut at the BASELINE's quantiles.

    ``b`` and ``c`` are the shares of baseline and candidate values in each bin, floored at
    ``PSI_EPSILON``. A value equal to an edge goes to the upper bin. Rules of thumb: < 0.1 stable,
    0.1–0.25 moderate shift, > 0.25 significant shift.
    """
    x = _as_floats(candidate)
    y = _as_floats(baseline)
    if x.size == 0 or y.size == 0:
        return 0.0
    edges = quantile_edges(y, bins)
    slots = edges.size + 1
    c = np.bincount(np.searchsorted(edges, x, side="right"), minlength=slots) / x.size
    b = np.bincount(np.searchsorted(edges, y, side="right"), minlength=slots) / y.size
    c = np.maximum(c, PSI_EPSILON)
    b = np.maximum(b, PSI_EPSILON)
    return float(np.sum((c - b) * np.log(c / b)))


def percentile(values: npt.ArrayLike, q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    data = _as_floats(values)
    if data.size == 0:
        return math.nan
    return float(np.percentile(data, q))


def median(values: npt.ArrayLike) -> float:
    return percentile(values, 50.0)
