"""Blend by blend: what is identical, what got clearly worse or better, what is missing.

A blend is identical when base and head agree bit for bit on everything measured
(timings and the arrays' file names aside). It is clearly worse when its χ² per pixel
grew by more than ``chi2_tolerance`` (relative), or one of its injected sources'
|mag error| grew by more than ``mag_tolerance`` in a band where the source is measured
(its true flux has S/N >= ``min_snr`` against the blend's noise: a band where it is
undetected says nothing), or its centroid offset by more than ``centroid_tolerance``, or
head lost a source base measured; clearly better likewise the other way. A blend both
clearly worse and clearly better (one band better, another worse) is *mixed*, counted
as neither. An injected source is unmeasured on a side where any band's magnitude is
missing (not initialised, flux <= 0, NaN).
"""

from __future__ import annotations

import dataclasses
import math

from runner.judge.paired import binomial_p
from runner.judge.policy import BlendPolicy
from runner.result import BlendChange, BlendResult, BlendRun, BlendTally, InjectedSource, Status

# The deblender's own measurement ("native") is compared apart (runner.deblend.native).
UNMEASURED_FIELDS = (
    "wall_time",
    "cpu_time",
    "init_time",
    "fit_time",
    "arrays",
    "reused_from",
    "native",
)


def measured(run: BlendRun) -> dict:
    """Everything one side measured on a blend, timings, file names and where a stored
    outcome came from aside."""
    data = dataclasses.asdict(run)
    for key in UNMEASURED_FIELDS:
        data.pop(key)
    return data


def both_ok(blends: list[BlendResult]) -> list[BlendResult]:
    """The blends base and head both deblended."""
    return [b for b in blends if b.base.status == b.head.status == "ok"]


def unmeasured(source: InjectedSource) -> bool:
    """Whether a side could not measure this injected source in some band."""
    return any(m is None for m in source.mag)


def lost_sources(blends: list[BlendResult]) -> tuple[list[str], list[str], list[str]]:
    """Injected sources only head left unmeasured, only base did, and both did
    ("set/id source k"), on the blends both deblended."""
    lost: dict[tuple[bool, bool], list[str]] = {}
    for blend in both_ok(blends):
        for base, head in zip(blend.base.injected, blend.head.injected, strict=True):
            key = (unmeasured(base), unmeasured(head))
            lost.setdefault(key, []).append(f"{blend.dataset}/{blend.id} source {base.index}")
    return lost.get((False, True), []), lost.get((True, False), []), lost.get((True, True), [])


def detected(source: InjectedSource, band: int, min_snr: float) -> bool:
    """Whether ``source`` is measured in ``band``: its true S/N reaches ``min_snr`` (every
    band counts for an outcome measured before S/N was recorded)."""
    return not source.snr or (source.snr[band] or 0.0) >= min_snr


def _side(growth: float | None, tolerance: float) -> int:
    """+1 when ``growth`` exceeds ``tolerance`` (worse), -1 below ``-tolerance``, else 0."""
    if growth is None:
        return 0
    return int(growth > tolerance) - int(growth < -tolerance)


def blend_change(blend: BlendResult, policy: BlendPolicy, bands: list[str]) -> BlendChange:
    """How a blend both sides deblended changed, with the reasons it is worse or better."""
    base, head = blend.base, blend.head
    reasons: dict[int, list[str]] = {1: [], -1: [], 0: []}
    chi2_growth = None
    if base.chi2_dof and head.chi2_dof is not None:
        chi2_growth = head.chi2_dof / base.chi2_dof - 1
        reasons[_side(chi2_growth, policy.chi2_tolerance)].append(
            f"χ²/pixel {base.chi2_dof:.3g} → {head.chi2_dof:.3g}"
        )
    growths = []
    for b, h in zip(base.injected, head.injected, strict=True):
        name = f"source {b.index}"
        if unmeasured(b) != unmeasured(h):
            side = 1 if unmeasured(h) else -1
            reasons[side].append(f"{name} {'no longer' if side == 1 else 'now'} measured")
        for band, (eb, eh) in enumerate(zip(b.mag_error, h.mag_error, strict=True)):
            if eb is not None and eh is not None and detected(b, band, policy.min_snr):
                growths.append(abs(eh) - abs(eb))
                reasons[_side(growths[-1], policy.mag_tolerance)].append(
                    f"{name} {bands[band]}: |mag error| {growths[-1]:+.3f} mag"
                )
        if b.centroid_offset is not None and h.centroid_offset is not None:
            reasons[_side(h.centroid_offset - b.centroid_offset, policy.centroid_tolerance)].append(
                f"{name} centroid offset {b.centroid_offset:.2f} → {h.centroid_offset:.2f} px"
            )
    identical = measured(base) == measured(head)
    mag = max(growths) if growths else None
    score = 0.0
    if not identical:
        largest = max(map(abs, growths), default=0.0)
        growth = max(chi2_growth or 0.0, -1 + 1e-9)  # a perfect fit (χ² 0) is finite too
        score = abs(math.log1p(growth)) + largest + 1e-12
    worse, better = reasons[1], reasons[-1]
    return BlendChange(
        blend.dataset,
        blend.id,
        identical,
        [base.chi2_dof, head.chi2_dof],
        mag,
        worse,
        better,
        score,
        bool(worse and better),
    )


def blend_changes(
    blends: list[BlendResult], policy: BlendPolicy, bands: list[str]
) -> list[BlendChange]:
    """Every blend both deblended: the clearly worse first, then the mixed, then by how
    much it changed."""
    changes = [blend_change(b, policy, bands) for b in both_ok(blends)]
    return sorted(changes, key=lambda c: (not c.worse, c.mixed, -c.score, c.dataset, c.id))


def tally(changes: list[BlendChange], policy: BlendPolicy, alpha: float) -> BlendTally:
    """How many blends got worse or better beyond tolerance (mixed ones in neither), and
    what that says: more worse ones than allowed is a regression unless about as many got
    better (exact binomial test at ``alpha``), which is a change with no clear direction."""
    worse = sum(bool(c.worse) and not c.mixed for c in changes)
    better = sum(bool(c.better) and not c.mixed for c in changes)
    mixed = sum(c.mixed for c in changes)
    allowed = math.floor(policy.max_worse_fraction * len(changes))
    p = binomial_p(worse, better)
    status: Status = "unchanged"
    if worse > allowed:
        clear = better <= allowed or (p is not None and p < alpha)
        status = "regressed" if clear else "changed"
    elif better > allowed:
        status = "improved"
    changed = sum(not c.identical for c in changes)
    return BlendTally(len(changes), changed, worse, better, allowed, p, status, mixed)
