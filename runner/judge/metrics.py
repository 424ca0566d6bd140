"""What a comparison measures: every metric, which way is better, its default tolerance.

Per injected source: the magnitude error (truth - model) in each band, its modulus
averaged over the bands (median and a tail quantile) and the centroid's offset from the
true position. Per blend: χ² per pixel inside the footprint (median and tail), the fit's
and the initialisation's -2 logL per pixel, iterations, and the timings, paired in the
same job: the CPU time per source the runner measured (judged) and the initialisation
time by the worker's own wall clock (reported only: a busy machine moves it). The
defaults and why are in ``docs/verdict.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runner.result import BlendResult, BlendRun


@dataclass(frozen=True)
class Metric:
    """A metric: how to pair it, which way is better, and its default tolerance.

    ``transform``: "difference" (head - base) or "ratio" (head / base, for timings and
    iterations); ``direction``: "lower", "higher" or "zero" (closer to zero is better);
    ``level``: per injected "source" or per "blend"; ``statistic``: "median" (of the
    paired changes) or "tail" (head's upper quantile against base's); ``unit``: of the
    values (a ratio's change is a factor ×); ``judged``: False for a metric that is
    only reported, never moving the verdict.
    """

    name: str
    label: str
    unit: str
    family: str
    kind: str
    level: str
    direction: str
    transform: str
    tolerance: float
    value: Callable
    statistic: str = "median"
    judged: bool = True


def _mag_error(band: int) -> Callable:
    return lambda source: source.mag_error[band]


def _abs_mag_error(source) -> float | None:
    errors = [abs(e) for e in source.mag_error if e is not None]
    return float(np.mean(errors)) if len(errors) == len(source.mag_error) else None


def _per_pixel(value: float | None, blend: BlendResult) -> float | None:
    return -2 * value / blend.pixels if value is not None and blend.pixels else None


def _cpu_time_per_source(run: BlendRun, blend: BlendResult) -> float | None:
    if run.cpu_time is None or not blend.n_sources:
        return None
    return run.cpu_time / blend.n_sources


def metrics(bands: list[str], tail_quantile: float = 0.9) -> list[Metric]:
    """Every metric of a comparison, in report order, with its default tolerance."""
    tail = f"{tail_quantile * 100:g}th percentile"
    per_band = [
        Metric(
            f"mag_error_{b}",
            f"mag error {b}",
            "mag",
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
            "|mag error|, mean over bands",
            "mag",
            "abs_mag_error",
            "science",
            "source",
            "lower",
            "difference",
            0.005,
            _abs_mag_error,
        ),
        Metric(
            "abs_mag_error_tail",
            f"|mag error|, {tail}",
            "mag",
            "abs_mag_error_tail",
            "science",
            "source",
            "lower",
            "difference",
            0.03,
            _abs_mag_error,
            "tail",
        ),
        Metric(
            "centroid_offset",
            "centroid offset from the true position",
            "px",
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
            "χ² per pixel in the footprint",
            "per pixel",
            "chi2_dof",
            "science",
            "blend",
            "lower",
            "difference",
            0.02,
            lambda run, blend: run.chi2_dof,
        ),
        Metric(
            "chi2_dof_tail",
            f"χ² per pixel, {tail} of blends",
            "per pixel",
            "chi2_dof_tail",
            "science",
            "blend",
            "lower",
            "difference",
            0.05,
            lambda run, blend: run.chi2_dof,
            "tail",
        ),
        Metric(
            "neg2logL",
            "−2 logL per pixel, fit",
            "per pixel",
            "neg2logL",
            "science",
            "blend",
            "lower",
            "difference",
            0.02,
            lambda run, blend: _per_pixel(run.logL, blend),
        ),
        Metric(
            "init_neg2logL",
            "−2 logL per pixel, initialisation",
            "per pixel",
            "init_neg2logL",
            "science",
            "blend",
            "lower",
            "difference",
            0.05,
            lambda run, blend: _per_pixel(run.init_logL, blend),
        ),
        Metric(
            "iterations",
            "iterations",
            "",
            "iterations",
            "science",
            "blend",
            "lower",
            "ratio",
            0.10,
            lambda run, blend: run.iterations,
        ),
        Metric(
            "cpu_time_per_source",
            "CPU time per source",
            "s",
            "cpu_time_per_source",
            "timing",
            "blend",
            "lower",
            "ratio",
            0.25,
            _cpu_time_per_source,
        ),
        Metric(
            "init_time",
            "initialisation time, worker's wall clock",
            "s",
            "init_time",
            "timing",
            "blend",
            "lower",
            "ratio",
            0.25,
            lambda run, blend: run.init_time,
            judged=False,
        ),
    ]


def metric_names(bands: list[str]) -> set[str]:
    """Names a config may set tolerances for (each metric and each family)."""
    every = metrics(bands)
    return {m.name for m in every} | {m.family for m in every}


def paired_values(blends: list[BlendResult], metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Base and head values of ``metric`` on ``blends`` (both deblended), paired by blend
    and source; pairs with a value missing on either side are left out here and counted
    by the errors metrics instead (an unmeasured source, an errored blend)."""
    pairs = []
    for blend in blends:
        if metric.level == "blend":
            pairs.append((metric.value(blend.base, blend), metric.value(blend.head, blend)))
            continue
        for base, head in zip(blend.base.injected, blend.head.injected, strict=True):
            pairs.append((metric.value(base), metric.value(head)))
    values = np.array([p for p in pairs if None not in p], dtype=float).reshape(-1, 2)
    if metric.transform == "ratio":
        values = values[(values[:, 0] > 0) & (values[:, 1] > 0)]
    return values[:, 0], values[:, 1]
