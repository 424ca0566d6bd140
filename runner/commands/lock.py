"""``python -m runner lock adopt``: write a lock with the newer versions a drift run
found, for review."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.commands.output import fail_early


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    lock = commands.add_parser("lock", help="work with the runner's locks")
    lock_commands = lock.add_subparsers(dest="lock_command", required=True)
    adopter = lock_commands.add_parser(
        "adopt", help="write a lock with the newer versions a drift run found, for review"
    )
    adopter.add_argument("source", type=Path, help="a drift run's result.json")
    adopter.add_argument("--out", type=Path, required=True, help="where to write the new lock")
    adopter.add_argument("--lock", type=Path, help="the lock the run used (default: the adapter's)")
    adopter.set_defaults(handler=adopt)


def adopt(args: argparse.Namespace) -> int:
    """Write the adopted lock."""
    import hashlib

    from runner.deblend.adapters import get_adapter
    from runner.deblend.lockfile import adopt
    from runner.result import RunResult

    try:
        result = RunResult.read(args.source)
        drift = result.provenance.drift
        if drift is None:
            raise ValueError(f"{args.source} is not the result of a drift run")
        lock = args.lock or get_adapter(result.provenance.adapter).lock
        if hashlib.sha256(lock.read_bytes()).hexdigest() != result.provenance.lock:
            raise ValueError(f"{lock} is not the lock the drift run used")
        new = adopt(lock.read_text(), drift.packages, args.source.name)
        args.out.write_text(new)
    except (OSError, ValueError) as error:
        return fail_early(error)
    print(f"wrote {args.out}: {lock} with {len(drift.packages)} package(s) moved; review it")
    return 0
