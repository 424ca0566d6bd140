"""``python -m runner synth``: write a deterministic synthetic blend set."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.commands.options import positive


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    synth = commands.add_parser("synth", help="write a deterministic synthetic blend set")
    synth.add_argument("--out", type=Path, required=True, help="the folder to write the set to")
    synth.add_argument("--blends", type=positive, default=20, help="how many blends")
    synth.add_argument("--seed", type=int, default=0, help="the set's random seed")
    synth.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Write the set."""
    from runner.synth import write_synthetic_set

    paths = write_synthetic_set(args.out, args.blends, args.seed)
    print(f"wrote {len(paths)} blends to {args.out}")
    return 0
