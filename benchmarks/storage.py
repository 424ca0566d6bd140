"""Bytes a run adds to the artifact store.

    python benchmarks/storage.py RUN_DIR [RUN_DIR ...]

For each run directory (a ``result.json`` with its arrays, e.g. from ``python -m runner
run``), stores its residual comparisons (every blend deblended by both sides), its
report and its result into a fresh local store, then stores them again, and prints the
bytes each pass added. Goal: a run whose residual blends all changed adds at most 25 %
of the 1.5 MB of residual plots per PR that the original approach committed to git;
storing unchanged images again adds nothing. The result and report documents are
printed beside the images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.publish.publish import publish_run
from runner.result import RunResult
from runner.store import LocalStore

ORIGINAL_BYTES_PER_PR = 1.5e6


def stored_bytes(root: Path) -> int:
    """Bytes of every object in a local store (its bookkeeping excluded)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".store" not in p.parts)


def store_everything(result: RunResult, run_dir: Path, store: LocalStore) -> None:
    """What a run publishes (``publish_run``), with every residual blend's image."""
    publish_run(result, run_dir, store, "owner/scarlet", 1, images=len(result.blends))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories")
    args = parser.parse_args()
    for run_dir in args.runs:
        result = RunResult.read(run_dir / "result.json")
        if result.comparison is None:
            result.comparison = compare(result, CompareConfig())
        changed = sum(not c.identical for c in result.comparison.blends)
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalStore(Path(tmp))
            store_everything(result, run_dir, store)
            first = stored_bytes(Path(tmp))
            images = stored_bytes(Path(tmp) / "images")
            count = len(list((Path(tmp) / "images").iterdir()))
            store_everything(result, run_dir, store)
            again = stored_bytes(Path(tmp) / "images") - images
        print(f"{run_dir}: {len(result.comparison.blends)} residual blends, {changed} changed")
        print(
            f"  first store:  {first / 1e3:8.1f} KB ({count} images {images / 1e3:.1f} KB, "
            f"{images / max(count, 1) / 1e3:.1f} KB each)"
        )
        print(f"  images added by storing the same run again: {again} bytes")
        share = images / ORIGINAL_BYTES_PER_PR
        print(f"  images / the original 1.5 MB of plots per PR: {share:.1%}  (goal <= 25%)")
        print(f"  everything (result, report) / 1.5 MB: {first / ORIGINAL_BYTES_PER_PR:.1%}")


if __name__ == "__main__":
    main()
