"""The history of runs: one summary record per completed run, for the trend pages.

Each repository's history is one JSON-lines object in the artifact store,
``history/<owner>/<name>.jsonl``, one :class:`HistoryRecord` a line, appended with
:meth:`ArtifactStore.append`: two runs finishing at the same moment both land (on GCS a
writer that keeps losing the race gives up with a ``StoreError`` after 30 tries). A
record keeps, per metric and blend set, a five-number summary of the head revision's
distribution (the box of a box plot), never the per-source values, so the history stays
small (about 5 kB a run) and the bot can read it without numpy.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from runner.store import ArtifactStore, KeyNotFound

HISTORY_SCHEMA = "scarlet-regression/history-record"
HISTORY_VERSION = 1
ALL_SETS = "all"
"""The summary key of every blend set taken together."""


@dataclass
class Summary:
    """A distribution as a box plot draws it: quartiles, Tukey whiskers (the most extreme
    values within 1.5 IQR of the box) and the mean, over ``n`` values (to six significant
    digits)."""

    n: int
    low: float
    q1: float
    median: float
    q3: float
    high: float
    mean: float


@dataclass
class MetricInfo:
    """What a summarised metric is: its label, family, band (if per band), direction and
    kind (science, timing)."""

    name: str
    label: str
    family: str
    band: str | None
    direction: str
    kind: str


@dataclass
class HistoryRecord:
    """One completed run: where its head came from and how its metrics were distributed.

    ``kind`` is "pr" for a pull request's run and "merge" for a run of the default branch
    after a push (``branch`` is then the merged branch, where known, and ``merged_at``
    when it landed). ``summaries[metric][set]`` summarises head's values, ``set`` being a
    blend set's name or :data:`ALL_SETS`.
    """

    repository: str
    kind: Literal["pr", "merge"]
    head_sha: str
    base_sha: str
    finished: str
    branch: str | None = None
    pr: int | None = None
    merged_at: str | None = None
    verdict: str | None = None
    report: str | None = None
    errored: int = 0
    blends: int = 0
    datasets: list[str] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    metrics: list[MetricInfo] = field(default_factory=list)
    summaries: dict[str, dict[str, Summary]] = field(default_factory=dict)
    schema: str = HISTORY_SCHEMA
    schema_version: int = HISTORY_VERSION

    def to_line(self) -> bytes:
        """The record as one line of compact JSON."""
        text = json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)
        return text.encode() + b"\n"

    @classmethod
    def from_dict(cls, data: dict) -> HistoryRecord:
        """A record from its JSON object; ValueError for another schema or version."""
        if data.get("schema") != HISTORY_SCHEMA or data.get("schema_version") != HISTORY_VERSION:
            raise ValueError("not a history record of this version")
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        fields["metrics"] = [MetricInfo(**info) for info in data.get("metrics", [])]
        fields["summaries"] = {
            metric: {name: Summary(**summary) for name, summary in sets.items()}
            for metric, sets in data.get("summaries", {}).items()
        }
        return cls(**fields)

    @property
    def order(self) -> str:
        """When the record's head landed (merges) or finished: the trend's x order."""
        return self.merged_at or self.finished


def history_key(repository: str) -> str:
    """The store key of ``owner/name``'s history."""
    owner, _, name = repository.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"a repository is owner/name, got {repository!r}")
    return f"history/{owner}/{name}.jsonl"


def append_record(store: ArtifactStore, record: HistoryRecord) -> None:
    """Append ``record`` to its repository's history."""
    store.append(history_key(record.repository), record.to_line())


def read_history(store: ArtifactStore, repository: str) -> list[HistoryRecord]:
    """Every readable record of ``repository``'s history, oldest appended first; lines of
    another schema version (or cut short) are skipped, a missing history is empty."""
    try:
        text = store.get(history_key(repository)).decode()
    except KeyNotFound:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(HistoryRecord.from_dict(json.loads(line)))
        except (ValueError, TypeError, KeyError, AttributeError):  # AttributeError: no object
            continue
    return records
