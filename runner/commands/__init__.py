"""``python -m runner``: synth, run, drift, lock adopt, merge, compare and release-repo."""

from __future__ import annotations

import argparse
import os
import signal

from runner.commands import compare, drift, lock, merge, release_repo, run, synth

VERBS = (synth, run, drift, lock, merge, compare, release_repo)
"""The verbs' modules, in the order the help lists them; each adds its own subcommand."""


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows the default of every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose help, and its subcommands', shows the defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    main = Parser(prog="python -m runner", description=__doc__)
    commands = main.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(commands)
    return main


def _terminate(signum: int, frame: object) -> None:
    from runner.deblend.environments import kill_all_builds
    from runner.deblend.pool import kill_all_workers

    kill_all_workers()
    kill_all_builds()
    os._exit(128 + signum)


def exit_with_workers_on_sigterm() -> None:
    """On SIGTERM (a cancelled or timed-out job) take the worker processes and build steps
    down too: they run in sessions of their own and would outlive the runner."""
    signal.signal(signal.SIGTERM, _terminate)


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = parser().parse_args(argv)
    return args.handler(args)
