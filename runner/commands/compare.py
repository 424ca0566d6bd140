"""``python -m runner compare``: compare head with base in a run result again, by a
configuration file, the result's own configuration or the defaults."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.commands.output import reason, summary_line, write_report


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    comparer = commands.add_parser("compare", help="compare head with base in a run result")
    comparer.add_argument("result", type=Path, help="a run's result.json")
    comparer.add_argument("--config", type=Path, help="a scarlet-regression.toml")
    comparer.add_argument("--out", type=Path, help="where to write (default: in place)")
    comparer.add_argument("--report", type=Path, help="write comment, check run and HTML page here")
    comparer.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Compare, write the result, say the verdict, write the report if asked."""
    from runner.judge.compare import compare
    from runner.judge.metrics import metric_names
    from runner.judge.policy import CompareConfig, ConfigError, config_from_dict, parse_config
    from runner.result import Policy, RunResult

    try:
        result = RunResult.read(args.result)
        known = metric_names(result.bands)
        if args.config:
            config = parse_config(args.config.read_text(), known)
            policy = Policy("file", note=str(args.config))
        elif result.comparison is not None:
            config = config_from_dict(result.comparison.config, known)
            policy = result.comparison.policy
        else:
            config, policy = CompareConfig(), Policy("defaults")
    except (OSError, ValueError, ConfigError) as error:
        print(f"error: {reason(error)}", file=sys.stderr)
        return 2
    result.comparison = compare(result, config, policy)
    result.write(args.out or args.result)
    print(summary_line(result))
    if args.report:
        write_report(result, args.result.parent, args.report)
    return 0
