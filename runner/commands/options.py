"""What several verbs share: argument types, the option groups for deblending and for
publishing, and the run those options describe."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

from runner.deblend.adapters import ADAPTERS
from runner.deblend.run import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TIMEOUT,
    DEFAULT_TIMING_SAMPLE,
    RunConfig,
    default_cache,
)


def utc_time(text: str) -> str:
    """An ISO 8601 time (``Z`` or any offset) as UTC, so that times sort as text."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time's offset (e.g. Z): {text!r}")
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def positive(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_config(args: argparse.Namespace, head: str, base: str, shard=None) -> RunConfig:
    """The run that the options describe."""
    options = {"max_iter": args.max_iter} if args.max_iter else {}
    return RunConfig(
        repo=args.repo,
        head=head,
        base=base,
        datasets=args.dataset,
        out=args.out,
        workers=args.workers,
        adapter=args.adapter,
        timeout=args.timeout,
        options=options,
        shard=shard,
        memory_limit=args.memory_limit * 2**20,
        config_from=args.config_from,
        cache=args.cache,
        store=args.store,
        store_deadline=args.store_deadline,
        shortcuts=not args.full,
        timing_sample=args.timing_sample,
    )


def publishing(command: argparse.ArgumentParser) -> None:
    """Options for writing a report and publishing to a store."""
    command.add_argument("--report", type=Path, help="write comment, check run and HTML page here")
    command.add_argument("--store", help="publish to this store: a directory or gs://bucket/prefix")
    command.add_argument("--store-url", help="public address of the store (default: its own)")
    command.add_argument(
        "--store-deadline", type=float, help="seconds to keep retrying a store call (GCS: 120)"
    )
    command.add_argument("--repository", help="owner/name the run is stored under")
    command.add_argument("--pr", type=int, help="pull request number the run is stored under")
    command.add_argument("--branch", help="for the history: the branch whose head this is")
    command.add_argument(
        "--merged-at",
        type=utc_time,
        help="for the history: when a default-branch head landed (ISO 8601)",
    )
    command.add_argument("--trends-url", help="the trend page the report links to")
    command.add_argument(
        "--progress-json", action="store_true", help="progress as JSON lines on stdout"
    )


def run_options(command: argparse.ArgumentParser) -> None:
    """Options for deblending blend sets (run and drift)."""
    command.add_argument(
        "--dataset",
        type=Path,
        action="append",
        required=True,
        help="a blend set: a directory of .npz blends, e.g. data/hsc/set1; repeat for more sets",
    )
    command.add_argument(
        "--out", type=Path, required=True, help="where to write result.json, blends/ and logs/"
    )
    command.add_argument(
        "--workers",
        type=positive,
        default=os.cpu_count() or 1,
        help="worker processes deblending at once (one per core)",
    )
    command.add_argument(
        "--adapter", choices=sorted(ADAPTERS), help="(default: detected from head's source tree)"
    )
    command.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per blend")
    command.add_argument(
        "--memory-limit",
        type=positive,
        default=DEFAULT_MEMORY_LIMIT // 2**20,
        help="MiB of resident memory a worker may use",
    )
    command.add_argument("--max-iter", type=positive, help="deblender iterations (adapter default)")
    command.add_argument(
        "--config-from",
        choices=("base", "head"),
        default="base",
        help="whose .github/scarlet-regression.toml to judge by; base's keeps a pull request"
        " from loosening its own gate",
    )
    command.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        help="environments and checkouts; $SCARLET_REGRESSION_CACHE sets the default",
    )
    command.add_argument(
        "--full",
        action="store_true",
        help="do all the work: build and deblend both sides even where head cannot change a"
        " model or base's outcomes are stored",
    )
    command.add_argument(
        "--timing-sample",
        type=positive,
        default=DEFAULT_TIMING_SAMPLE,
        help="blends timed on both sides in this run when base's outcomes are reused",
    )
