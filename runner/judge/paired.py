"""Statistics of paired samples: the change, its interval, its test, what it could detect.

Every function takes base and head values paired element by element. The change of a
"median" metric is the median of the paired differences (of the log ratios for
"ratio" metrics, reported as a factor); of a "tail" metric, head's quantile minus base's
on the same pairs. Intervals are paired percentile bootstraps (scipy.stats.bootstrap,
fixed seed); the test of a median change is Wilcoxon's signed-rank test, exact for up to
50 non-zero differences, and of a tail change the bootstrap's own two-sided p-value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from runner.result import finite

EXACT_MAX = 50  # non-zero differences up to which the signed-rank test is exact


@dataclass(frozen=True)
class Change:
    """A paired change: its estimate, interval, p-value and minimum detectable effect."""

    delta: float
    ci: tuple[float, float]
    p: float
    mde: float | None


def _differences(base: np.ndarray, head: np.ndarray, transform: str) -> np.ndarray:
    return np.log(head / base) if transform == "ratio" else head - base


def _statistic(statistic: str, transform: str, quantile: float):
    """The change as a vectorised function of (base, head) along ``axis``, in log space
    for ratios (so that intervals and detectable effects are symmetric there)."""
    if statistic == "tail":
        return lambda b, h, axis=-1: (
            np.quantile(h, quantile, axis=axis) - np.quantile(b, quantile, axis=axis)
        )
    return lambda b, h, axis=-1: np.median(_differences(b, h, transform), axis=axis)


def signed_rank_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped):
    exact up to EXACT_MAX of them, ties included (midranks), from the null distribution
    of the positive rank sum, every sign equally likely, built by convolution."""
    nonzero = differences[differences != 0]
    if not len(nonzero):
        return 1.0
    if len(nonzero) > EXACT_MAX:
        return float(stats.wilcoxon(nonzero, method="approx").pvalue)
    twice = np.rint(2 * stats.rankdata(np.abs(nonzero))).astype(int)  # midranks × 2
    null = np.zeros(twice.sum() + 1)
    null[0] = 1.0
    for rank in twice:
        null[rank:] = null[rank:] + null[:-rank].copy()
    null /= null.sum()
    observed = twice[nonzero > 0].sum()
    return float(min(1.0, 2 * min(null[: observed + 1].sum(), null[observed:].sum())))


def smallest_p(pairs: np.ndarray) -> float:
    """The smallest two-sided signed-rank p-value ``len(pairs)`` pairs can give."""
    n = len(pairs)
    return 2.0 ** (1 - n) if n <= EXACT_MAX else 0.0


def paired_change(
    base: np.ndarray,
    head: np.ndarray,
    *,
    transform: str,
    statistic: str,
    quantile: float,
    confidence: float,
    resamples: int,
    alpha: float,
    power: float,
) -> Change:
    """The change of head against base (in log space for ratios), with its interval,
    p-value and minimum detectable effect at ``alpha`` and ``power`` (None where no
    sample of this size could be significant: a signed-rank test of n pairs cannot go
    below 2^(1-n))."""
    function = _statistic(statistic, transform, quantile)
    delta = float(function(base, head))
    if len(base) < 2 or np.array_equal(base, head):
        return Change(delta, (delta, delta), 1.0, 0.0 if len(base) >= 2 else None)
    boot = stats.bootstrap(
        (base, head),
        function,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    low, high = boot.confidence_interval
    if statistic == "tail":
        spread = boot.bootstrap_distribution
        p = min(1.0, 2 * min(np.mean(spread <= 0), np.mean(spread >= 0)) + 1 / resamples)
    else:
        p = signed_rank_p(_differences(base, head, transform))
    mde = None
    if statistic == "tail" or smallest_p(base) < alpha:
        # (z_{1-alpha/2} + z_power) standard errors, the error read off the interval's width
        error = (high - low) / (2 * stats.norm.ppf((1 + confidence) / 2))
        mde = finite((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * error)
    return Change(delta, (float(low), float(high)), float(p), mde)


def median_interval(values: np.ndarray, confidence: float, resamples: int) -> tuple[float, float]:
    """The median of ``values`` and its percentile-bootstrap interval."""
    if len(values) < 2 or np.all(values == values[0]):
        median = float(np.median(values))
        return median, median
    interval = stats.bootstrap(
        (values,),
        np.median,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def binomial_p(worse: int, better: int) -> float | None:
    """Exact one-sided binomial p-value that worse outnumbers better by more than chance."""
    if not worse + better:
        return None
    return float(stats.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
