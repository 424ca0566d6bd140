"""``python -m runner run``: deblend blend sets with head and base, compare, report and
publish."""

from __future__ import annotations

import argparse
import os

from runner.commands.options import publishing, run_config, run_options
from runner.commands.output import fail_early, finish, progress, warn_failed_builds
from runner.deblend.run import RunError, run


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    runner = commands.add_parser("run", help="deblend blend sets with head and base")
    runner.add_argument("--repo", required=True, help="scarlet git repository: path or URL")
    runner.add_argument("--head", required=True, help="revision under test")
    runner.add_argument("--base", required=True, help="base revision; a branch means merge-base")
    run_options(runner)
    runner.add_argument("--shard", help="I/N: deblend shard I of N and write a partial result")
    publishing(runner)
    runner.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Run, then finish (summarise, report, publish)."""
    try:
        shard = _shard(args)
    except ValueError as error:
        return fail_early(error)
    if args.store and not args.repository:
        return fail_early("--store needs --repository owner/name")
    made = not args.out.exists()
    try:
        result = run(run_config(args, args.head, args.base, shard), progress(args))
    except RunError as error:
        return fail_early(error, args.out, made)
    warn_failed_builds(result, {"base": "base", "head": "head"})
    return finish(result, args)


def _shard(args: argparse.Namespace):
    """``--shard``, or Cloud Run's task index and count when there are several tasks."""
    from runner.result import Shard

    if args.shard:
        try:
            return Shard.parse(args.shard)
        except ValueError:
            raise ValueError(f"--shard is I/N with 0 <= I < N, got {args.shard!r}") from None
    count = int(os.environ.get("CLOUD_RUN_TASK_COUNT", "1"))
    if count > 1:
        return Shard(int(os.environ.get("CLOUD_RUN_TASK_INDEX", "0")), count)
    return None
