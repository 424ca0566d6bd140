"""A run summarised for the history: head's distribution of every metric, per blend set."""

from __future__ import annotations

import numpy as np
from matplotlib import cbook

from runner.judge.metrics import Metric, metrics
from runner.publish.history import ALL_SETS, HistoryRecord, MetricInfo, Summary
from runner.result import BlendResult, RunResult


def head_values(blends: list[BlendResult], metric: Metric) -> np.ndarray:
    """Head's finite values of ``metric`` on the blends it deblended (per source or blend)."""
    values = []
    for blend in blends:
        if blend.head.status != "ok":
            continue
        if metric.level == "blend":
            values.append(metric.value(blend.head, blend))
        else:
            values.extend(metric.value(source) for source in blend.head.injected)
    array = np.array([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def summary(values: np.ndarray) -> Summary | None:
    """The box-plot summary of ``values`` (Tukey whiskers at 1.5 IQR), None when empty."""
    if not len(values):
        return None
    stats = cbook.boxplot_stats(values, whis=1.5)[0]
    return Summary(
        n=len(values),
        low=_digits(stats["whislo"]),
        q1=_digits(stats["q1"]),
        median=_digits(stats["med"]),
        q3=_digits(stats["q3"]),
        high=_digits(stats["whishi"]),
        mean=_digits(stats["mean"]),
    )


def _digits(value: float) -> float:
    """Six significant digits: more than any trend can show, and half the bytes."""
    return float(f"{value:.6g}")


def _band(metric: Metric, bands: list[str]) -> str | None:
    suffix = metric.name.removeprefix(metric.family + "_")
    return suffix if metric.name != metric.family and suffix in bands else None


def summarise(
    result: RunResult,
    repository: str,
    *,
    pr: int | None = None,
    branch: str | None = None,
    merged_at: str | None = None,
    report: str | None = None,
) -> HistoryRecord:
    """The history record of a compared run: a PR's run when ``pr`` is given, else a run
    of the default branch (a merge)."""
    provenance = result.provenance
    sets = [d.name for d in provenance.datasets]
    groups = {ALL_SETS: result.blends} | {
        name: [b for b in result.blends if b.dataset == name] for name in sets
    }
    infos, summaries = [], {}
    # A box plot already shows the tails: the tail metrics would repeat the median's.
    for metric in (m for m in metrics(result.bands) if m.statistic == "median"):
        by_set = {name: summary(head_values(blends, metric)) for name, blends in groups.items()}
        by_set = {name: s for name, s in by_set.items() if s is not None}
        if not by_set:
            continue
        infos.append(
            MetricInfo(
                name=metric.name,
                label=metric.label,
                family=metric.family,
                band=_band(metric, result.bands),
                direction=metric.direction,
                kind=metric.kind,
            )
        )
        summaries[metric.name] = by_set
    return HistoryRecord(
        repository=repository,
        kind="pr" if pr is not None else "merge",
        head_sha=provenance.head.sha,
        base_sha=provenance.base.sha,
        finished=provenance.finished,
        branch=branch,
        pr=pr,
        merged_at=merged_at,
        verdict=result.comparison.verdict if result.comparison else None,
        report=report,
        errored=sum(b.head.status == "errored" for b in result.blends),
        blends=len(result.blends),
        datasets=sets,
        bands=list(result.bands),
        metrics=infos,
        summaries=summaries,
    )
