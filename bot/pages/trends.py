"""What a trend page shows, computed from a repository's history records (pure, no numpy).

The x-axis is the default branch's history in merge order, each merge labelled by the
branch it brought in; the PR being looked at stands beside the last of them. Plots are
drawn in the browser from this data by plotly.js (see ``bot/pages/serve.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from runner.publish.history import ALL_SETS, HistoryRecord, MetricInfo

DEFAULT_LAST = 20
MAX_LAST = 200


def trends_url(public_url: str, repository: str, pr: int | None = None) -> str:
    """The address of ``repository``'s trend page on the bot, with PR ``pr`` highlighted."""
    query = f"?pr={pr}" if pr is not None else ""
    return f"{public_url}/{repository}/trends{query}"


def clamp_last(last: int) -> int:
    """How many merges a page shows as boxes: 0 to ``MAX_LAST``."""
    return min(max(last, 0), MAX_LAST)


@dataclass(frozen=True)
class Point:
    """One box on the x-axis: a merged branch or a pull request, and its record."""

    label: str
    sha: str
    pr: int | None
    when: str
    verdict: str | None
    report: str | None

    @classmethod
    def of(cls, record: HistoryRecord) -> Point:
        """The point of ``record``, labelled by its branch (or PR, or short SHA)."""
        if record.kind == "pr":
            label = f"#{record.pr}" + (f" {record.branch}" if record.branch else "")
        else:
            label = record.branch or record.head_sha[:7]
        return cls(label, record.head_sha, record.pr, record.order, record.verdict, record.report)


def latest_per_head(records: list[HistoryRecord]) -> list[HistoryRecord]:
    """One record per (kind, PR, head SHA), the last appended (a rerun replaces its run),
    keeping the branch and merge time of earlier ones where a rerun did not know them."""
    latest: dict[tuple, HistoryRecord] = {}
    for record in records:
        key = (record.kind, record.pr, record.head_sha)
        if (earlier := latest.get(key)) is not None:
            record = dataclasses.replace(
                record,
                branch=record.branch or earlier.branch,
                merged_at=record.merged_at or earlier.merged_at,
            )
        latest[key] = record
    return list(latest.values())


def merges(records: list[HistoryRecord]) -> list[HistoryRecord]:
    """The default branch's runs in merge order."""
    runs = [r for r in latest_per_head(records) if r.kind == "merge"]
    return sorted(runs, key=lambda r: (r.order, r.finished))


def latest_of_pr(records: list[HistoryRecord], pr: int) -> HistoryRecord | None:
    """The newest record of pull request ``pr``."""
    runs = [r for r in records if r.kind == "pr" and r.pr == pr]
    return max(runs, key=lambda r: r.finished, default=None)


def latest_of_branch(records: list[HistoryRecord], branch: str) -> HistoryRecord | None:
    """The newest record of ``branch`` (a PR's run or its merge), by when it finished."""
    runs = [r for r in records if r.branch == branch and r.report]
    return max(runs, key=lambda r: r.finished, default=None)


def _metrics(records: list[HistoryRecord]) -> list[MetricInfo]:
    """Every metric of the records, in the order of the newest that has it."""
    seen: dict[str, MetricInfo] = {}
    for record in sorted(records, key=lambda r: r.finished, reverse=True):
        for metric in record.metrics:
            seen.setdefault(metric.name, metric)
    return list(seen.values())


def _unique(items: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(item for group in items for item in group))


def _summaries(record: HistoryRecord, metric: str) -> dict[str, dict]:
    sets = record.summaries.get(metric, {})
    return {name: asdict(summary) for name, summary in sets.items()}


def default_band(bands: list[str]) -> str:
    """The band a page opens with: r where there is one, else the first."""
    return "r" if "r" in bands else (bands[0] if bands else "")


def _median(record: HistoryRecord, metric: str, name: str) -> float | None:
    summary = record.summaries.get(metric, {}).get(name)
    return None if summary is None else summary.median


def trend_data(
    records: list[HistoryRecord],
    repository: str,
    pr: int | None = None,
    last: int = DEFAULT_LAST,
) -> dict[str, Any]:
    """The page's data: the last ``last`` merges as boxes per metric and set, PR ``pr``'s
    newest run beside them, and every merge's median (the line across all history)."""
    history = merges(records)
    last = clamp_last(last)
    shown = history[-last:] if last else []
    current = latest_of_pr(records, pr) if pr is not None else None
    considered = [*history, *([current] if current else [])]
    metrics = _metrics(considered)
    history_sets = [ALL_SETS, *_unique([r.datasets for r in history])]
    return {
        "repository": repository,
        "sets": [ALL_SETS, *_unique([r.datasets for r in considered])],
        "bands": _unique([r.bands for r in considered]),
        "metrics": [asdict(m) for m in metrics],
        "merges": [asdict(Point.of(r)) for r in shown],
        "boxes": {m.name: [_summaries(r, m.name) for r in shown] for m in metrics},
        "current": None
        if current is None
        else asdict(Point.of(current))
        | {"summaries": {m.name: _summaries(current, m.name) for m in metrics}},
        "history": {
            "points": [asdict(Point.of(r)) for r in history],
            "medians": {
                m.name: {name: [_median(r, m.name, name) for r in history] for name in history_sets}
                for m in metrics
            },
        },
    }
