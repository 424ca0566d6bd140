"""Head against base, honestly: paired statistics per metric, blend by blend, one verdict.

Base and head are paired on the same blends, and on the same injected sources within
them. Per metric (``runner.judge.metrics``): the paired change Δ (the median of the
paired differences, a median ratio for timings and iterations, or the change of a tail
quantile) with its bootstrap interval, its paired test, the Benjamini-Hochberg correction
across metrics and the smallest change the run could have detected (MDE). A metric

- **regressed** (or **improved**) when it changed significantly (adjusted p < alpha) by
  more than its tolerance in its bad (good) direction; for a metric whose goal is zero
  (the magnitude errors) the direction must hold for every base bias b in base's
  interval, |b + Δ| against |b|: where it does not, it **changed**;
- is **inconclusive** when Δ is beyond tolerance but not significant, or when the run
  could not have detected ``max_mde`` times the tolerance (and the interval does not
  rule it out);
- is **unchanged** otherwise.

Blend by blend (``runner.judge.blends``), more blends clearly worse than allowed is a
regression unless about as many got clearly better (then: changed). Injected sources or
blends one side lost are errors; those both lost are excluded and listed. When base and
head agree bit for bit on everything measured, the science is unchanged without
statistics. Verdict: **fail** on any regression (a head that does not build counts);
**neutral** when something changed with no clear direction, a science metric is
inconclusive, or no comparison is possible; **pass** otherwise.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from runner.deblend.failures import tool_failure
from runner.deblend.native import native_change
from runner.judge.blends import blend_changes, both_ok, lost_sources, measured, tally
from runner.judge.metrics import Metric, metrics, paired_values
from runner.judge.paired import median_interval, paired_change
from runner.judge.policy import CompareConfig
from runner.result import (
    BlendTally,
    Comparison,
    MetricComparison,
    Policy,
    RunResult,
    Skip,
    Status,
    finite,
)


def identical_measurements(result: RunResult) -> bool:
    """Whether base and head agree bit for bit on everything measured (timings aside) on
    every blend both deblended, and errored on the same blends."""
    ok = both_ok(result.blends)
    same_errors = all((b.base.status == "ok") == (b.head.status == "ok") for b in result.blends)
    return bool(ok) and same_errors and all(measured(b.base) == measured(b.head) for b in ok)


def _summary(values: np.ndarray, metric: Metric, quantile: float) -> float | None:
    if not len(values):
        return None
    if metric.statistic == "tail":
        return finite(np.quantile(values, quantile))
    return finite(np.median(values))


def _direction_status(base_ci: tuple[float, float], delta: float) -> Status:
    """For a metric whose goal is zero: worse where |b + Δ| > |b| for every base bias b in
    base's interval, better where it is smaller for every one, else changed. |b + Δ| > |b|
    exactly where Δ (2b + Δ) > 0, so only -Δ/2 against the interval matters."""
    low, high = base_ci
    edge = -delta / 2
    if (delta > 0 and low > edge) or (delta < 0 and high < edge):
        return "regressed"
    if (delta > 0 and high < edge) or (delta < 0 and low > edge):
        return "improved"
    return "changed"


def _measure_metric(
    metric: Metric, paired: list, config: CompareConfig, identical: bool
) -> MetricComparison:
    """The comparison of one metric, its status still to be set (p not yet adjusted)."""
    base, head = paired_values(paired, metric)
    ratio = metric.transform == "ratio"
    tolerance = config.tolerance(metric.name, metric.family, metric.tolerance)
    comparison = MetricComparison(
        name=metric.name,
        label=metric.label,
        unit=metric.unit,
        kind=metric.kind,
        direction=metric.direction,
        statistic=metric.statistic,
        n=len(base),
        base=_summary(base, metric, config.tail_quantile),
        head=_summary(head, metric, config.tail_quantile),
        delta=None,
        ci=[None, None],
        p=None,
        p_adjusted=None,
        change=None,
        tolerance=tolerance,
        mde=None,
        status="inconclusive",
    )
    if not len(base):
        return comparison
    if identical and metric.kind == "science":
        neutral = 1.0 if ratio else 0.0
        comparison.delta, comparison.ci, comparison.change = neutral, [neutral, neutral], 0.0
        comparison.mde, comparison.status = None, "unchanged"
        return comparison
    change = paired_change(
        base,
        head,
        transform=metric.transform,
        statistic=metric.statistic,
        quantile=config.tail_quantile,
        confidence=config.confidence,
        resamples=config.resamples,
        alpha=config.alpha,
        power=config.power,
    )
    scale = math.exp if ratio else float
    comparison.delta = finite(scale(change.delta))
    comparison.ci = [finite(scale(v)) for v in change.ci]
    comparison.mde = finite(scale(change.mde)) if change.mde is not None else None
    comparison.p = change.p
    comparison.change = finite(change.delta)
    if metric.direction == "zero":
        comparison.base_ci = list(median_interval(base, config.confidence, config.resamples))
        b = float(np.median(base))
        comparison.change = finite(abs(b + change.delta) - abs(b))
    return comparison


def _status(comparison: MetricComparison, transform: str, config: CompareConfig) -> Status:
    """regressed, improved, changed, inconclusive or unchanged; see the module docstring.
    Ratios are judged in log space: a tolerance t allows factors within 1 + t either way."""
    if comparison.delta is None or None in comparison.ci:
        return "inconclusive"
    to_log = (lambda v: math.log(v)) if transform == "ratio" else (lambda v: v)
    tolerance = math.log1p(comparison.tolerance) if transform == "ratio" else comparison.tolerance
    delta = to_log(comparison.delta)
    low, high = (to_log(v) for v in comparison.ci)
    significant = comparison.p_adjusted is not None and comparison.p_adjusted < config.alpha
    if significant and abs(delta) > tolerance:
        if comparison.direction == "zero":
            return _direction_status(tuple(comparison.base_ci), delta)
        return "regressed" if delta > 0 else "improved"
    if abs(delta) > tolerance:
        return "inconclusive"
    if -tolerance <= low and high <= tolerance:
        return "unchanged"
    mde = None if comparison.mde is None else to_log(comparison.mde)
    if mde is None or abs(mde) > config.max_mde * tolerance:
        return "inconclusive"
    return "unchanged"


def _count_metric(
    name: str, label: str, n: int, base: int, head: int, new: int, fixed: int
) -> MetricComparison:
    status: Status = "regressed" if new else "improved" if fixed else "unchanged"
    return MetricComparison(
        name=name,
        label=label,
        unit="count",
        kind="errors",
        direction="lower",
        statistic="count",
        n=n,
        base=float(base),
        head=float(head),
        delta=float(head - base),
        ci=[None, None],
        p=None,
        p_adjusted=None,
        change=float(new - fixed),
        tolerance=0.0,
        mde=None,
        status=status,
    )


def _error_metrics(result: RunResult) -> list[MetricComparison]:
    """Errored blends and unmeasured injected sources: new ones regress, fixed improve."""
    base = {(b.dataset, b.id) for b in result.blends if b.base.status == "errored"}
    head = {(b.dataset, b.id) for b in result.blends if b.head.status == "errored"}
    blends = _count_metric(
        "errored_blends",
        "errored blends",
        len(result.blends),
        len(base),
        len(head),
        len(head - base),
        len(base - head),
    )
    only_head, only_base, both = lost_sources(result.blends)
    injected = sum(len(b.base.injected) for b in both_ok(result.blends))
    sources = _count_metric(
        "unmeasured_sources",
        "injected sources not measured",
        injected,
        len(only_base) + len(both),
        len(only_head) + len(both),
        len(only_head),
        len(only_base),
    )
    return [blends, sources]


def excluded(result: RunResult) -> list[str]:
    """Blends that errored on both sides and injected sources neither side measured."""
    blends = [
        f"{b.dataset}/{b.id}" for b in result.blends if b.base.status == b.head.status == "errored"
    ]
    return blends + lost_sources(result.blends)[2]


def compare(result: RunResult, config: CompareConfig, policy: Policy | None = None) -> Comparison:
    """Compare head with base on every metric and blend by blend, and reach a verdict."""
    # Head not deblended as it cannot change a model: identical by construction.
    identical = identical_measurements(result) or result.provenance.skipped is not None
    paired = both_ok(result.blends)
    # Timings only where both sides ran in this run; every other kind on all the pairs.
    pairs = {"timing": [b for b in paired if b.timed_in_run]}
    measured_metrics = [
        (metric, _measure_metric(metric, pairs.get(metric.kind, paired), config, identical))
        for metric in metrics(result.bands, config.tail_quantile)
    ]
    # A metric neither side measured on any blend (e.g. an adapter without logL) has
    # nothing to compare; what one side lost is counted by the error metrics.
    measured_metrics = [(m, c) for m, c in measured_metrics if c.n]
    tested = [c for _, c in measured_metrics if c.p is not None]
    if tested:
        adjusted = stats.false_discovery_control([c.p for c in tested], method="bh")
        for comparison, p in zip(tested, adjusted, strict=True):
            comparison.p_adjusted = float(p)
    for metric, comparison in measured_metrics:
        if not (identical and metric.kind == "science"):
            comparison.status = _status(comparison, metric.transform, config)
    comparisons = [c for _, c in measured_metrics] + _error_metrics(result)
    changes = blend_changes(result.blends, config.blends, result.bands)
    blend_tally = tally(changes, config.blends, config.alpha)
    verdict, reasons = _verdict(result, comparisons, blend_tally)
    failure = tool_failure(result)
    if failure is not None:  # the tool's break, never the PR's regression
        verdict, reasons = "neutral", [failure.headline]
    return Comparison(
        verdict=verdict,
        reasons=reasons,
        identical_models=identical,
        metrics=comparisons,
        blends=changes,
        tally=blend_tally,
        excluded=excluded(result),
        unconverged={
            side: sum(getattr(b, side).converged is False for b in result.blends)
            for side in ("base", "head")
        },
        policy=policy or Policy("defaults"),
        config=config.as_dict(),
        tool_failure=failure,
        native=native_change(result),
    )


def skip_reason(skip: Skip) -> str:
    """Why head was not deblended, in a line."""
    if skip.reason == "identical build":
        return "head's build is identical to base's: nothing it installs differs"
    shown = ", ".join(skip.changed[:5]) + (
        f" and {len(skip.changed) - 5} more" if len(skip.changed) > 5 else ""
    )
    return f"this PR does not change the installed scarlet (changed: {shown or 'nothing'})"


def _labels(
    comparisons: list[MetricComparison], status: str, kinds=("science", "timing", "errors")
):
    return [c.label for c in comparisons if c.status == status and c.kind in kinds]


def _verdict(
    result: RunResult, comparisons: list[MetricComparison], blend_tally: BlendTally
) -> tuple[str, list[str]]:
    provenance = result.provenance
    if provenance.skipped is not None:
        return "pass", [skip_reason(provenance.skipped)]
    if provenance.head.build.status == "failed":
        return "fail", [f"head {provenance.head.sha[:12]} does not build"]
    if provenance.base.build.status == "failed":
        return "neutral", [f"base {provenance.base.sha[:12]} does not build: nothing to compare"]
    blends = (
        f"{blend_tally.worse} of {blend_tally.blends} blends clearly worse"
        f" ({blend_tally.better} better, {blend_tally.allowed} allowed)"
    )
    regressed = _labels(comparisons, "regressed")
    changed = _labels(comparisons, "changed")
    inconclusive = _labels(comparisons, "inconclusive", ("science",))
    reasons = []
    if regressed:
        reasons.append(f"regressed: {', '.join(regressed)}")
    if blend_tally.status == "regressed":
        reasons.append(blends)
    if changed or blend_tally.status == "changed":
        what = changed + ([blends] if blend_tally.status == "changed" else [])
        reasons.append(f"changed with no clear direction: {'; '.join(what)}")
    if inconclusive:
        reasons.append(f"inconclusive: {', '.join(inconclusive)}")
    if regressed or blend_tally.status == "regressed":
        return "fail", reasons
    if not both_ok(result.blends):
        return "neutral", ["no blend was deblended by both base and head"]
    if reasons:
        return "neutral", reasons
    improved = _labels(comparisons, "improved")
    if blend_tally.status == "improved":
        improved.append(f"{blend_tally.better} of {blend_tally.blends} blends clearly better")
    return "pass", [f"improved: {', '.join(improved)}"] if improved else []
