"""Combine the results of a run's shards into the result one process would have written.

Blend ``k`` of the sets in order belongs to shard ``k mod N``, so the shards' blends
interleave back into the original order. Every shard must be there exactly once and
all must come from the same revisions, lock and blend sets; the merged result is then
compared as a whole.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from runner.judge.compare import compare
from runner.judge.metrics import metric_names
from runner.judge.policy import CompareConfig, config_from_dict
from runner.result import Policy, Reuse, RunResult
from runner.store import ArtifactStore, KeyNotFound, run_prefix


class MergeError(ValueError):
    """Shards that do not make one run, and why."""


def _identity(result: RunResult) -> tuple:
    p = result.provenance
    sets = tuple((d.name, d.content_hash) for d in p.datasets)
    return (p.head.sha, p.base.sha, p.adapter, p.lock, sets)


def merge_results(parts: list[tuple[RunResult, Path]], out: Path) -> RunResult:
    """Merge shard results (each with the folder holding its arrays) into ``out``."""
    if not parts:
        raise MergeError("no shard results to merge")
    counts = {result.shard.count if result.shard else None for result, _ in parts}
    if None in counts or len(counts) != 1:
        raise MergeError("every part must be a shard of the same count")
    (count,) = counts
    indices = sorted(result.shard.index for result, _ in parts)
    missing = sorted(set(range(count)) - set(indices))
    if missing:
        raise MergeError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing")
    if len(indices) != count:
        raise MergeError("a shard is given twice")
    first = parts[0][0]
    if any(_identity(result) != _identity(first) for result, _ in parts):
        raise MergeError("the shards come from different revisions, locks or blend sets")
    by_shard = {result.shard.index: (result, folder) for result, folder in parts}
    blends = []
    for position in range(max(len(r.blends) for r, _ in parts) * count):
        result, folder = by_shard[position % count]
        if position // count < len(result.blends):
            blend = result.blends[position // count]
            blends.append(blend)
            for run in (blend.base, blend.head):
                if run.arrays:
                    target = out / run.arrays
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(folder / run.arrays, target)
    provenance = replace(
        first.provenance,
        started=min(r.provenance.started for r, _ in parts),
        finished=max(r.provenance.finished for r, _ in parts),
        reuse=merged_reuse([r.provenance.reuse for r, _ in parts]),
    )
    if provenance.skipped and any(not result.blends for result, _ in parts):
        blends = []  # head not deblended, and base's outcomes not stored for every shard
    merged = RunResult(provenance=provenance, bands=first.bands, blends=blends)
    settings = provenance.config.get("comparison")
    known = metric_names(merged.bands)
    config = config_from_dict(settings, known) if settings else CompareConfig()
    policy = provenance.config.get("policy")
    merged.comparison = compare(merged, config, Policy(**policy) if policy else None)
    out.mkdir(parents=True, exist_ok=True)
    merged.write(out / "result.json")
    return merged


def merged_reuse(reuses: list[Reuse | None]) -> Reuse | None:
    """The shards' reuse of base's stored outcomes as one (keys differ where tasks ran
    on different kinds of machine)."""
    found = [r for r in reuses if r is not None]
    if not found:
        return None
    keys = ", ".join(dict.fromkeys(r.key for r in found))
    runs = sorted({run for r in found for run in r.runs})
    return Reuse(
        "base",
        keys,
        runs,
        sum(r.blends for r in found),
        [c for r in found for c in r.checked],
        [m for r in found for m in r.mismatched],
    )


def shard_prefix(repository: str, pr: int | None, sha: str, index: int, count: int) -> str:
    """Where a shard's partial result and arrays are stored."""
    return f"{run_prefix(repository, pr, sha)}shards/{index}-of-{count}/"


def store_shard(
    store: ArtifactStore, run_dir: Path, result: RunResult, repository: str, pr: int | None
) -> str:
    """Upload a shard's result and arrays for the merge; return their prefix."""
    prefix = shard_prefix(
        repository, pr, result.provenance.head.sha, result.shard.index, result.shard.count
    )
    for blend in result.blends:
        for run in (blend.base, blend.head):
            if run.arrays:
                data = (run_dir / run.arrays).read_bytes()
                store.put(prefix + run.arrays, data, "application/octet-stream")
    store.put(prefix + "result.json", (run_dir / "result.json").read_bytes(), "application/json")
    return prefix


def fetch_shards(
    store: ArtifactStore, repository: str, pr: int | None, sha: str, count: int, into: Path
) -> list[tuple[RunResult, Path]]:
    """Download every shard's result and arrays; MergeError naming a missing shard."""
    parts = []
    for index in range(count):
        prefix = shard_prefix(repository, pr, sha, index, count)
        folder = into / f"shard-{index}"
        try:
            result = RunResult.from_json(store.get(prefix + "result.json").decode())
        except KeyNotFound:
            raise MergeError(f"shard {index}/{count} has stored no result") from None
        for key in store.list(prefix + "blends/"):
            target = folder / key.removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(key))
        parts.append((result, folder))
    return parts


def merge_from_store(
    store: ArtifactStore, repository: str, pr: int | None, sha: str, count: int, out: Path
) -> RunResult:
    """Merge the stored shards of a run into ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        return merge_results(fetch_shards(store, repository, pr, sha, count, Path(tmp)), out)
