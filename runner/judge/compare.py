"""Head against base, honestly: paired statistics per metric, blend by blend, one verdict.

Base and head are paired on the same blends, and on the same injected sources within
them. Per metric (``runner.judge.metrics``): the paired change Δ (the median of the
paired differences, a median ratio for timings and iterations, or the change of a tail
quantile) with its bootstrap interval (90 %: its ends are one-sided 95 % bounds), its
paired test, the Benjamini-Hochberg correction across metrics and the smallest change
the run could have detected (MDE). Each metric is equivalence-tested against its
tolerance (``_status``): **unchanged** when its whole interval lies within the
tolerance, **regressed** (**improved**) only when its whole interval lies beyond it the
bad (good) way and the change is significant, **changed** where a zero-goal metric's
direction cannot be told, **inconclusive** where the interval straddles the tolerance.
An inconclusive metric moves the verdict only where its estimate lies beyond the
tolerance the bad way (``likely_worse``); otherwise it is only reported.

Timing (CPU time per source, measured by the runner, base and head on one slot) fails
only where a confirming re-timing agrees, and never where every model is bit-identical.
Blend by blend (``runner.judge.blends``), more blends clearly worse than allowed is a
regression unless about as many got clearly better (then: changed); mixed blends count
as neither. Injected sources or blends one side lost are errors; those both lost are
excluded and listed; blends only base lost are fixes, credited. When base and head agree
bit for bit on everything measured, the science is unchanged without statistics; when
only the models do, what the measurements moved is named and the verdict is at best
neutral. Where base does not build or errors on blends, head is also compared with
base's nearest good ancestor's stored run. The verdict: ``_verdict``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from runner.deblend.failures import tool_failure
from runner.deblend.native import native_change
from runner.judge.blends import blend_changes, both_ok, lost_sources, measured, tally
from runner.judge.failures import failures
from runner.judge.metrics import Metric, metrics, paired_values
from runner.judge.paired import median_interval, paired_change
from runner.judge.policy import CompareConfig
from runner.result import (
    AncestorComparison,
    Build,
    Comparison,
    MetricComparison,
    Policy,
    Retimed,
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


NOT_RETIMED = "not re-timed to confirm it: reported only"
NOT_CONFIRMED = "a re-timing did not confirm it: reported only"


def _zero_range(ci: tuple[float, float], base_ci: tuple[float, float]) -> tuple[float, float]:
    """For a metric whose goal is zero: the least and the most |b + Δ| - |b| (how much
    further from zero head is) can be, for Δ in ``ci`` and base's bias b in ``base_ci``.
    The function is linear between its kinks (b = 0, b = -Δ), so its extremes lie on the
    box's corners or where a kink crosses the box's edges."""
    (d_low, d_high), (b_low, b_high) = ci, base_ci
    points = [(d, b) for d in ci for b in base_ci]
    points += [(d, 0.0) for d in ci if b_low <= 0 <= b_high]
    points += [(d, -d) for d in ci if b_low <= -d <= b_high]
    points += [(-b, b) for b in base_ci if d_low <= -b <= d_high]
    values = [abs(b + d) - abs(b) for d, b in points]
    return min(values), max(values)


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


def _log_space(comparison: MetricComparison, transform: str):
    """Δ's interval, the tolerance and the detectable change where they are judged: in
    log space for ratios (a tolerance t allows factors within 1 + t either way)."""
    if transform != "ratio":
        return tuple(comparison.ci), comparison.tolerance, comparison.mde
    mde = None if comparison.mde is None else abs(math.log(comparison.mde))
    return tuple(math.log(v) for v in comparison.ci), math.log1p(comparison.tolerance), mde


def _status(comparison: MetricComparison, transform: str, config: CompareConfig) -> Status:
    """Equivalence testing against the tolerance t, on Δ's whole interval:

    - unchanged: the interval lies within [-t, t];
    - regressed (improved): it lies wholly beyond t in the bad (good) direction and the
      change is significant after the correction across metrics; for a metric whose goal
      is zero, the bad direction is away from zero: |b + Δ| > |b| for every Δ in the
      interval and every base bias b in base's interval (good: < for every one);
    - changed: the interval lies wholly beyond t, significant, but base's interval
      cannot tell the direction (a zero-goal metric whose bias may change sign);
    - inconclusive: the interval straddles the tolerance, or the change is not
      significant, or nothing could be compared."""
    if comparison.delta is None or None in comparison.ci:
        return "inconclusive"
    (low, high), tolerance, _ = _log_space(comparison, transform)
    if -tolerance <= low and high <= tolerance:
        return "unchanged"
    significant = comparison.p_adjusted is not None and comparison.p_adjusted < config.alpha
    if not significant or not (low > tolerance or high < -tolerance):
        return "inconclusive"
    if comparison.direction == "zero" and None not in comparison.base_ci:
        least, most = _zero_range((low, high), tuple(comparison.base_ci))
        return "regressed" if least > 0 else "improved" if most < 0 else "changed"
    return "regressed" if low > tolerance else "improved"


def likely_worse(comparison: MetricComparison, transform: str) -> bool:
    """Whether an inconclusive metric's estimate lies beyond its tolerance the bad way (for
    a zero-goal metric: |b + Δ| - |b| > t at base's median b): a regression the run can
    neither prove nor rule out. Only such a metric makes the verdict neutral; one whose
    estimate lies within the tolerance is only reported (its interval is merely too wide
    to prove it unchanged: on set1 every equivalent fit with a few hundredths of a
    magnitude of scatter, see docs/verdict.md)."""
    if comparison.delta is None:
        return False
    _, tolerance, _ = _log_space(comparison, transform)
    delta = math.log(comparison.delta) if transform == "ratio" else comparison.delta
    if comparison.direction == "zero":
        b = comparison.base if comparison.base is not None else 0.0
        return abs(b + delta) - abs(b) > tolerance
    return delta > tolerance


def _retimed(result: RunResult, metric: MetricComparison, transform: str) -> Retimed | None:
    """The confirming re-timing of a timing metric (CPU time per source), None where the
    run made none: its pairs' paired change and interval, confirmed when that interval
    too lies wholly beyond the tolerance."""
    pairs = [
        (b / blend.n_sources, h / blend.n_sources)
        for blend in result.retiming
        for b, h in zip(blend.base, blend.head, strict=True)
        if b > 0 and h > 0 and blend.n_sources
    ]
    if metric.name != "cpu_time_per_source" or len(pairs) < 2:
        return None
    base, head = (np.array(values) for values in zip(*pairs, strict=True))
    change = paired_change(
        base,
        head,
        transform=transform,
        statistic="median",
        quantile=0.5,
        confidence=0.95,
        resamples=2000,
        alpha=0.05,
        power=0.8,
    )
    low = change.ci[0]
    confirmed = low > math.log1p(metric.tolerance) and change.p < 0.05
    ci = [finite(math.exp(v)) for v in change.ci]
    return Retimed(len(pairs), finite(math.exp(change.delta)), ci, confirmed)


def _judge_timing(result: RunResult, comparison: MetricComparison, metric: Metric) -> None:
    """Whether a timing moves the verdict: never alone where every model is bit-identical,
    and a regression only where a confirming re-timing agrees (unconfirmed: inconclusive)."""
    if not metric.judged:
        comparison.gating, comparison.note = False, "the worker's own wall clock: reported only"
    elif models_bit_identical(result):
        comparison.gating = False
        comparison.note = "models bit-identical: timing alone never fails"
    elif comparison.status == "inconclusive":
        comparison.gating, comparison.note = False, "only a confirmed timing regression counts"
    elif comparison.status == "regressed":
        comparison.retimed = _retimed(result, comparison, metric.transform)
        if comparison.retimed is None or not comparison.retimed.confirmed:
            comparison.status, comparison.gating = "inconclusive", False
            comparison.note = NOT_CONFIRMED if comparison.retimed else NOT_RETIMED


def needs_retiming(comparison: Comparison) -> bool:
    """Whether a timing regression waits for its confirming re-timing."""
    return any(m.note == NOT_RETIMED for m in comparison.metrics)


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


def models_bit_identical(result: RunResult) -> bool:
    """Whether every model is bit-identical (by hash) on every blend both deblended, and
    both sides errored on the same blends: whatever the measurements of them say."""
    ok = both_ok(result.blends)
    same_errors = all((b.base.status == "ok") == (b.head.status == "ok") for b in result.blends)
    return (
        bool(ok)
        and same_errors
        and all(b.base.model_hash is not None for b in ok)
        and all(b.base.model_hash == b.head.model_hash for b in ok)
    )


def _flux_change(band: str, ratios: list[float]) -> str | None:
    """How the injected sources' fluxes in ``band`` moved (head/base), if they did."""
    moved = [r for r in ratios if r != 1.0]
    if not moved:
        return None
    median = float(np.median(moved))
    uniform = all(abs(r / median - 1) < 1e-6 for r in moved)
    where = f"all {len(ratios)}" if len(moved) == len(ratios) else f"{len(moved)} of {len(ratios)}"
    if uniform:
        return f"{band} fluxes ×{median:.3f} on {where} sources"
    return f"{band} fluxes changed on {where} sources (median ×{median:.3f})"


def measurement_change(result: RunResult) -> str | None:
    """What moved where every model is bit-identical but the measurements are not
    ("r fluxes ×1.020 on all 105 sources"; other quantities by name); None otherwise."""
    if not models_bit_identical(result) or identical_measurements(result):
        return None
    ok = both_ok(result.blends)
    pairs = [p for b in ok for p in zip(b.base.injected, b.head.injected, strict=True)]
    parts = []
    for index, band in enumerate(result.bands):
        ratios = [
            10 ** (-0.4 * (head.mag[index] - base.mag[index]))
            for base, head in pairs
            if base.mag[index] is not None and head.mag[index] is not None
        ]
        parts.append(_flux_change(band, ratios))
    if any(base.centroid_offset != head.centroid_offset for base, head in pairs):
        parts.append("centroid offsets")
    fields = {
        key
        for blend in ok
        for key, value in measured(blend.base).items()
        if key not in ("injected", "sources") and measured(blend.head)[key] != value
    }
    parts += sorted(fields)
    found = [part for part in parts if part]
    return "; ".join(found) if found else "the sources' measurements"


def fixed_blends(result: RunResult) -> list[str]:
    """Blends base errored on (its build aside) and head deblends: fixes, credited."""
    if result.provenance.base.build.status != "ok":
        return []
    return [
        f"{b.dataset}/{b.id}"
        for b in result.blends
        if b.base.status == "errored" and b.head.status == "ok"
    ]


def _against_ancestor(
    result: RunResult, config: CompareConfig, policy: Policy | None
) -> AncestorComparison | None:
    """Head against base's nearest good ancestor on the blends base could not deblend
    (every blend where base does not build)."""
    ancestor = result.provenance.ancestor
    if ancestor is None:
        return None
    blends = [
        dataclasses.replace(b, base=b.ancestor, ancestor=None)
        for b in result.blends
        if b.ancestor is not None and b.base.status != "ok"
    ]
    if not blends:
        return None
    base = dataclasses.replace(
        result.provenance.base, sha=ancestor.sha, build=Build("ok", reused=True)
    )
    provenance = dataclasses.replace(result.provenance, base=base, ancestor=None, skipped=None)
    derived = dataclasses.replace(result, provenance=provenance, blends=blends, comparison=None)
    comparison = compare(derived, config, policy)
    return AncestorComparison(
        ancestor.sha, comparison.verdict, comparison.reasons, comparison.tally
    )


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
        if metric.kind == "timing":
            _judge_timing(result, comparison, metric)
        elif comparison.status == "inconclusive" and not likely_worse(comparison, metric.transform):
            comparison.gating = False
            comparison.note = "its estimate lies within the tolerance: reported only"
    comparisons = [c for _, c in measured_metrics] + _error_metrics(result)
    changes = blend_changes(result.blends, config.blends, result.bands)
    blend_tally = tally(changes, config.blends, config.alpha)
    found = Comparison(
        verdict="pass",
        reasons=[],
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
        models_bit_identical=identical or models_bit_identical(result),
        measurement_change=measurement_change(result),
        fixed=fixed_blends(result),
        failures=failures(result),
        ancestor=_against_ancestor(result, config, policy),
        tool_failure=tool_failure(result),
        native=native_change(result),
    )
    found.verdict, found.reasons = _verdict(result, found)
    if found.tool_failure is not None:  # the tool's break, never the PR's regression
        found.verdict, found.reasons = "neutral", [found.tool_failure.headline]
    return found


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
    return [c.label for c in comparisons if c.status == status and c.kind in kinds and c.gating]


def failure_reasons(comparison: Comparison) -> list[str]:
    """One line per distinct failure of either side (``Failure.reason``)."""
    return [failure.reason for failure in comparison.failures]


def _fixed_reason(comparison: Comparison, result: RunResult) -> list[str]:
    """The fixes, credited (what base errored with is said by its failure's line)."""
    if not comparison.fixed:
        return []
    count = f"{len(comparison.fixed)} of {len(result.blends)}"
    return [f"fixed: {count} blends that errored on base deblend on head"]


def _ancestor_reasons(comparison: Comparison, base: str) -> list[str]:
    ancestor = comparison.ancestor
    if ancestor is None:
        return []
    reasons = "; ".join(ancestor.reasons) or "nothing changed beyond tolerance"
    return [
        f"against base {base[:12]}'s nearest good ancestor {ancestor.sha[:12]}:"
        f" {ancestor.verdict} ({reasons})"
    ]


def _verdict(result: RunResult, comparison: Comparison) -> tuple[str, list[str]]:
    """The verdict and its reasons, most important first. Fail on a head that does not
    build or on any judged regression (head erroring on a blend included). Neutral where
    something changed with no clear direction, a metric the run can resolve is
    inconclusive, the models are bit-identical but the measurements moved, or nothing
    could be compared. Else pass, crediting improvements. Fixed blends are credited in
    every case. Where base does not build or errors on blends, head is also judged
    against base's nearest good ancestor on those blends."""
    provenance = result.provenance
    if provenance.skipped is not None:
        return "pass", [skip_reason(provenance.skipped)]
    broken = failure_reasons(comparison)
    if provenance.head.build.status == "failed":
        return "fail", broken[:1]
    ancestor = comparison.ancestor
    credit = _fixed_reason(comparison, result) + _ancestor_reasons(comparison, provenance.base.sha)
    if provenance.base.build.status == "failed":
        if ancestor is None:
            return "neutral", [*broken, "no stored run of an ancestor of base to compare with"]
        return ancestor.verdict, [*broken, *credit]
    metrics_, blend_tally = comparison.metrics, comparison.tally
    mixed = f", {blend_tally.mixed} mixed" if blend_tally.mixed else ""
    blends = (
        f"{blend_tally.worse} of {blend_tally.blends} blends clearly worse"
        f" ({blend_tally.better} better{mixed}, {blend_tally.allowed} allowed)"
    )
    bad = []
    errors = _labels(metrics_, "regressed", ("errors",))
    if "errored blends" in errors:
        bad += [line for line in broken if line.startswith("head errors")]
    if "injected sources not measured" in errors:
        bad.append("regressed: injected sources not measured")
    regressed = _labels(metrics_, "regressed", ("science", "timing"))
    if regressed:
        bad.append(f"regressed: {', '.join(regressed)}")
    if blend_tally.status == "regressed":
        bad.append(blends)
    doubt = []
    if comparison.measurement_change:
        doubt.append(f"models bit-identical; measurement changed: {comparison.measurement_change}")
    changed = _labels(metrics_, "changed") + ([blends] if blend_tally.status == "changed" else [])
    if changed:
        doubt.append(f"changed with no clear direction: {'; '.join(changed)}")
    inconclusive = _labels(metrics_, "inconclusive", ("science",))
    if inconclusive:
        doubt.append(f"inconclusive: {', '.join(inconclusive)}")
    if not both_ok(result.blends) and ancestor is None:
        doubt.append("no blend was deblended by both base and head")
    # What base errors with is said whatever the verdict, before the fixes it credits.
    credit = [line for line in broken if line.startswith("base ")] + credit
    if bad or (ancestor is not None and ancestor.verdict == "fail"):
        return "fail", [*bad, *doubt, *credit]
    if doubt or (ancestor is not None and ancestor.verdict == "neutral"):
        return "neutral", [*doubt, *credit]
    improved = _labels(metrics_, "improved")
    if blend_tally.status == "improved":
        improved.append(f"{blend_tally.better} of {blend_tally.blends} blends clearly better")
    return "pass", ([f"improved: {', '.join(improved)}"] if improved else []) + credit
