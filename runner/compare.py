"""Head against base, honestly: paired statistics per metric and one verdict.

Base and head are paired on the same blends, and on the same injected sources within
them. Per metric: base and head medians, the median paired difference (a median ratio
for timings and iterations, measured in the same job) with a bootstrap confidence
interval, a Wilcoxon signed-rank p-value, and the Benjamini-Hochberg correction across
metrics. A metric has regressed when it changed significantly (adjusted p < alpha) and
by more than its tolerance in its bad direction; improved likewise in its good
direction; unchanged when its change is within tolerance; inconclusive otherwise.
When every model hash is identical the science metrics are unchanged without
statistics. The verdict: fail on any regression (a head that does not build, or that
errors on blends the base deblended, counts as one); neutral when no comparison is
possible or it is incomplete (base missing, blends errored on both sides); else pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from runner.config import CompareConfig
from runner.result import (
    BlendChange,
    BlendResult,
    Comparison,
    MetricComparison,
    RunResult,
    Status,
    finite,
)


@dataclass(frozen=True)
class Metric:
    """A metric: how to pair it, which way is better, and its default tolerance.

    ``transform``: "difference" (head - base), "relative" ((head - base) / |base|) or
    "ratio" (head / base, for timings); ``direction``: "lower", "higher" or "zero"
    (closer to zero is better); ``level``: per injected "source" or per "blend".
    """

    name: str
    label: str
    family: str
    kind: str
    level: str
    direction: str
    transform: str
    tolerance: float
    value: Callable


def _mag_error(band: int) -> Callable:
    return lambda source: source.mag_error[band]


def _abs_mag_error(source) -> float | None:
    errors = [abs(e) for e in source.mag_error if e is not None]
    return float(np.mean(errors)) if len(errors) == len(source.mag_error) else None


def _runtime_per_source(run, blend: BlendResult) -> float | None:
    if run.init_time is None or run.fit_time is None or not blend.n_sources:
        return None
    return (run.init_time + run.fit_time) / blend.n_sources


def metrics(bands: list[str]) -> list[Metric]:
    """Every metric of a comparison, in report order, with documented defaults."""
    per_band = [
        Metric(
            f"mag_error_{b}",
            f"mag error {b}",
            "mag_error",
            "science",
            "source",
            "zero",
            "difference",
            0.005,
            _mag_error(i),
        )
        for i, b in enumerate(bands)
    ]
    return [
        *per_band,
        Metric(
            "abs_mag_error",
            "|mag error|",
            "abs_mag_error",
            "science",
            "source",
            "lower",
            "difference",
            0.005,
            _abs_mag_error,
        ),
        Metric(
            "centroid_offset",
            "centroid offset [px]",
            "centroid_offset",
            "science",
            "source",
            "lower",
            "difference",
            0.05,
            lambda s: s.centroid_offset,
        ),
        Metric(
            "chi2_dof",
            "residual χ²/dof",
            "chi2_dof",
            "science",
            "blend",
            "lower",
            "difference",
            0.02,
            lambda run, blend: run.chi2_dof,
        ),
        Metric(
            "logL",
            "logL",
            "logL",
            "science",
            "blend",
            "higher",
            "relative",
            0.001,
            lambda run, blend: run.logL,
        ),
        Metric(
            "init_logL",
            "init logL",
            "init_logL",
            "science",
            "blend",
            "higher",
            "relative",
            0.001,
            lambda run, blend: run.init_logL,
        ),
        Metric(
            "iterations",
            "iterations",
            "iterations",
            "science",
            "blend",
            "lower",
            "ratio",
            0.10,
            lambda run, blend: run.iterations,
        ),
        Metric(
            "init_time",
            "init time",
            "init_time",
            "timing",
            "blend",
            "lower",
            "ratio",
            0.25,
            lambda run, blend: run.init_time,
        ),
        Metric(
            "runtime_per_source",
            "runtime per source",
            "runtime_per_source",
            "timing",
            "blend",
            "lower",
            "ratio",
            0.25,
            _runtime_per_source,
        ),
    ]


def metric_names(bands: list[str]) -> set[str]:
    """Names a config may set tolerances for (each metric and each family)."""
    return {m.name for m in metrics(bands)} | {m.family for m in metrics(bands)}


def _both_ok(result: RunResult) -> list[BlendResult]:
    return [b for b in result.blends if b.base.status == b.head.status == "ok"]


def paired_values(result: RunResult, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Base and head values of ``metric`` paired by blend (and source), finite only."""
    pairs = []
    for blend in _both_ok(result):
        if metric.level == "blend":
            pairs.append((metric.value(blend.base, blend), metric.value(blend.head, blend)))
            continue
        for base, head in zip(blend.base.injected, blend.head.injected, strict=True):
            pairs.append((metric.value(base), metric.value(head)))
    values = np.array([p for p in pairs if None not in p], dtype=float).reshape(-1, 2)
    if metric.transform == "ratio":
        values = values[(values[:, 0] > 0) & (values[:, 1] > 0)]
    elif metric.transform == "relative":
        values = values[values[:, 0] != 0]
    return values[:, 0], values[:, 1]


def _paired(base: np.ndarray, head: np.ndarray, transform: str) -> np.ndarray:
    if transform == "ratio":
        return np.log(head / base)
    if transform == "relative":
        return (head - base) / np.abs(base)
    return head - base


def _delta(base, head, transform: str, axis=-1) -> np.ndarray:
    """The median paired difference (a median ratio for "ratio"), vectorised for bootstrap."""
    median = np.median(_paired(base, head, transform), axis=axis)
    return np.exp(median) if transform == "ratio" else median


def _change(metric: Metric, base: np.ndarray, head: np.ndarray, delta: float) -> float:
    """How much worse head is than base, in the metric's units; negative when better."""
    if metric.direction == "zero":
        return float(abs(np.median(head)) - abs(np.median(base)))
    if metric.transform == "ratio":
        delta = delta - 1
    return float(-delta if metric.direction == "higher" else delta)


def _wilcoxon(differences: np.ndarray) -> float:
    if not np.any(differences != 0):
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="wilcox").pvalue)


def _bootstrap(base, head, transform: str, config: CompareConfig) -> list[float | None]:
    if len(base) < 2 or np.all(base == head):
        delta = _delta(base, head, transform) if len(base) else None
        return [finite(delta), finite(delta)]
    interval = stats.bootstrap(
        (base, head),
        lambda b, h, axis=-1: _delta(b, h, transform, axis),
        paired=True,
        vectorized=True,
        n_resamples=config.resamples,
        confidence_level=config.confidence,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    return [finite(interval.low), finite(interval.high)]


def _status(
    change: float | None, p_adjusted: float | None, tolerance: float, alpha: float
) -> Status:
    if change is None:
        return "inconclusive"
    significant = p_adjusted is not None and p_adjusted < alpha
    if significant and change > tolerance:
        return "regressed"
    if significant and change < -tolerance:
        return "improved"
    if abs(change) <= tolerance:
        return "unchanged"
    return "inconclusive"


def _measure_metric(
    metric: Metric, result: RunResult, config: CompareConfig, identical: bool
) -> tuple[MetricComparison, float | None]:
    """The comparison of one metric, and its raw p-value (None: no test)."""
    base, head = paired_values(result, metric)
    tolerance = config.tolerance(metric.name, metric.family, metric.tolerance)
    comparison = MetricComparison(
        name=metric.name,
        label=metric.label,
        kind=metric.kind,
        direction=metric.direction,
        n=len(base),
        base=finite(np.median(base)) if len(base) else None,
        head=finite(np.median(head)) if len(head) else None,
        delta=None,
        ci=[None, None],
        p=None,
        p_adjusted=None,
        change=None,
        tolerance=tolerance,
        status="inconclusive",
    )
    if not len(base):
        return comparison, None
    if identical and metric.kind == "science":
        neutral = 1.0 if metric.transform == "ratio" else 0.0
        comparison.delta, comparison.ci, comparison.change = neutral, [neutral, neutral], 0.0
        comparison.status = "unchanged"
        return comparison, None
    delta = float(_delta(base, head, metric.transform))
    comparison.delta = finite(delta)
    comparison.ci = _bootstrap(base, head, metric.transform, config)
    comparison.change = finite(_change(metric, base, head, delta))
    comparison.p = _wilcoxon(_paired(base, head, metric.transform))
    return comparison, comparison.p


def _errored_blends(result: RunResult) -> MetricComparison:
    base = {(b.dataset, b.id) for b in result.blends if b.base.status == "errored"}
    head = {(b.dataset, b.id) for b in result.blends if b.head.status == "errored"}
    new, fixed = len(head - base), len(base - head)
    status: Status = "regressed" if new else "improved" if fixed else "unchanged"
    return MetricComparison(
        name="errored_blends",
        label="errored blends",
        kind="errors",
        direction="lower",
        n=len(result.blends),
        base=float(len(base)),
        head=float(len(head)),
        delta=float(len(head) - len(base)),
        ci=[None, None],
        p=None,
        p_adjusted=None,
        change=float(new - fixed),
        tolerance=0.0,
        status=status,
    )


def blend_changes(result: RunResult) -> list[BlendChange]:
    """Every blend deblended by both, most changed first (for the residual comparisons)."""
    changes = []
    for blend in _both_ok(result):
        identical = blend.base.model_hash == blend.head.model_hash
        chi2 = None
        if blend.base.chi2_dof is not None and blend.head.chi2_dof is not None:
            chi2 = blend.head.chi2_dof - blend.base.chi2_dof
        shifts = [
            abs(h - b)
            for base, head in zip(blend.base.injected, blend.head.injected, strict=True)
            for b, h in zip(base.mag, head.mag, strict=True)
            if b is not None and h is not None
        ]
        mag = max(shifts) if shifts else None
        score = 0.0 if identical else abs(chi2 or 0.0) + (mag or 0.0) + 1e-12
        changes.append(BlendChange(blend.dataset, blend.id, identical, chi2, mag, score))
    return sorted(changes, key=lambda c: (-c.score, c.dataset, c.id))


def identical_models(result: RunResult) -> bool:
    """Whether base and head produced bit-identical models on every blend both deblended,
    and errored on the same blends."""
    ok = _both_ok(result)
    same_errors = all((b.base.status == "ok") == (b.head.status == "ok") for b in result.blends)
    return bool(ok) and same_errors and all(b.base.model_hash == b.head.model_hash for b in ok)


def compare(result: RunResult, config: CompareConfig) -> Comparison:
    """Compare head with base on every metric and reach a verdict."""
    identical = identical_models(result)
    measured = [_measure_metric(m, result, config, identical) for m in metrics(result.bands)]
    tested = [i for i, (_, p) in enumerate(measured) if p is not None]
    if tested:
        adjusted = stats.false_discovery_control([measured[i][1] for i in tested], method="bh")
        for i, p in zip(tested, adjusted, strict=True):
            measured[i][0].p_adjusted = float(p)
    comparisons = [c for c, _ in measured]
    for c in comparisons:
        if c.n and not (identical and c.kind == "science"):
            c.status = _status(c.change, c.p_adjusted, c.tolerance, config.alpha)
    comparisons.append(_errored_blends(result))
    verdict, reasons = _verdict(result, comparisons)
    return Comparison(
        verdict=verdict,
        reasons=reasons,
        identical_models=identical,
        metrics=comparisons,
        blends=blend_changes(result),
        config=config.as_dict(),
    )


def _verdict(result: RunResult, comparisons: list[MetricComparison]) -> tuple[str, list[str]]:
    provenance = result.provenance
    if provenance.head.build.status == "failed":
        return "fail", [f"head {provenance.head.sha[:12]} does not build"]
    if provenance.base.build.status == "failed":
        return "neutral", [f"base {provenance.base.sha[:12]} does not build: nothing to compare"]
    regressed = [c.label for c in comparisons if c.status == "regressed"]
    if regressed:
        return "fail", [f"regressed: {', '.join(regressed)}"]
    if not _both_ok(result):
        return "neutral", ["no blend was deblended by both base and head"]
    both = sum(b.base.status == b.head.status == "errored" for b in result.blends)
    if both:
        return "neutral", [f"{both} blend(s) errored with base and head alike"]
    reasons = []
    for status in ("improved", "inconclusive"):
        labels = [c.label for c in comparisons if c.status == status]
        if labels:
            reasons.append(f"{status}: {', '.join(labels)}")
    return "pass", reasons
