"""``python -m runner merge``: merge the results of a run's shards, from folders or from
the store, then finish as a run does."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.commands.options import positive, publishing
from runner.commands.output import fail_early, finish


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    merger = commands.add_parser("merge", help="merge the results of a run's shards")
    merger.add_argument("parts", type=Path, nargs="*", help="shard result folders")
    merger.add_argument("--out", type=Path, required=True)
    merger.add_argument("--sha", help="with --store: the head SHA of the sharded run")
    merger.add_argument("--shards", type=positive, help="with --store: how many shards")
    publishing(merger)
    merger.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Merge, then finish (summarise, report, publish)."""
    from runner.publish.merge import MergeError, merge_from_store, merge_results
    from runner.result import RunResult
    from runner.store import StoreError, open_store

    if args.store and not args.repository:
        return fail_early("--store needs --repository owner/name")
    made = not args.out.exists()
    try:
        if args.parts:
            parts = [(RunResult.read(folder / "result.json"), folder) for folder in args.parts]
            result = merge_results(parts, args.out)
        elif args.store and args.sha and args.shards:
            store = open_store(args.store, base_url=args.store_url, deadline=args.store_deadline)
            result = merge_from_store(
                store, args.repository, args.pr, args.sha, args.shards, args.out
            )
        else:
            return fail_early("give shard folders, or --store with --sha and --shards")
    except (MergeError, StoreError, OSError, ValueError) as error:
        return fail_early(error, args.out, made)
    return finish(result, args)
