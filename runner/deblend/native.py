"""The deblender's own measurements, compared apart from the runner's.

The runner judges fluxes and centroids it measures itself from each side's source models
(``runner.deblend.measure``). A deblender's own measurement functions (scarlet2's
``measure.flux`` and ``measure.centroid``, scarlet v1's) are run too; where they give
other values than base's on a blend whose models and runner measurements are identical,
the revision changed its measurement code (or its float32 round-off): that is reported,
never judged, so it cannot make "changed blends".
"""

from __future__ import annotations

import math

from runner.judge.blends import both_ok, measured
from runner.result import NativeChange, RunResult, SourceModel


def native_change(result: RunResult) -> NativeChange | None:
    """Where the revision's own measurement moved while nothing judged did, or None."""
    moved, flux, centroid = [], 0.0, 0.0
    for blend in both_ok(result.blends):
        base, head = blend.base, blend.head
        if not (base.native and head.native) or base.native == head.native:
            continue
        if measured(base) != measured(head):
            continue  # the models changed: their measurements move with them
        moved.append(f"{blend.dataset}/{blend.id}")
        for b, h in zip(base.native, head.native, strict=True):
            flux = max(flux, _largest_ratio(b, h))
            centroid = max(centroid, _largest_shift(b, h))
    if not moved:
        return None
    return NativeChange(moved, flux, centroid)


def _largest_ratio(base: SourceModel, head: SourceModel) -> float:
    ratios = [
        abs(h / b - 1)
        for b, h in zip(base.flux, head.flux, strict=True)
        if b is not None and h is not None and b != 0
    ]
    return max(ratios, default=0.0)


def _largest_shift(base: SourceModel, head: SourceModel) -> float:
    if None in base.centroid or None in head.centroid or not base.centroid:
        return 0.0
    return math.dist(base.centroid, head.centroid)
