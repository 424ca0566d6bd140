"""A drift run: one revision deblended in the locked environment (base) and with the
newest releases its requirements allow (head), compared like base and head.

A break that comes from a new release of a dependency, not from a pull request, shows
up here: the comparison is the usual one, and ``provenance.drift`` names every package
whose version differs between the two environments.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from runner.commands.options import publishing, run_config, run_options
from runner.commands.output import fail_early, finish, progress, warn_failed_builds
from runner.deblend import revisions
from runner.deblend.adapters import Adapter
from runner.deblend.environments import BuildError, Environment, build_newest_environment
from runner.deblend.lockfile import normalise
from runner.deblend.run import Progress, Run, RunConfig, RunError, _environment
from runner.result import Drift, PackageChange, RunResult


def package_changes(locked: dict[str, str], newest: dict[str, str]) -> list[PackageChange]:
    """The packages whose versions differ between two environments, by name."""
    old = {normalise(name): version for name, version in locked.items()}
    new = {normalise(name): version for name, version in newest.items()}
    return [
        PackageChange(name, old.get(name), new.get(name))
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]


class DriftRun(Run):
    """A run whose base is ``config.head`` in the locked environment and whose head is
    the same revision in the newest environment (built in the cache, removed after)."""

    def __init__(self, config: RunConfig, progress: Callable[[Progress], None]):
        super().__init__(config, progress)
        self.newest_dir = self.config.cache / "newest" / uuid.uuid4().hex

    def execute(self) -> RunResult:
        """Do the drift run, record the packages that moved, rewrite ``result.json``."""
        try:
            result = super().execute()
        finally:
            shutil.rmtree(self.newest_dir, ignore_errors=True)
        base, head = result.provenance.base, result.provenance.head
        both = base.packages and head.packages  # empty where an environment did not build
        changes = package_changes(base.packages, head.packages) if both else []
        result.provenance.drift = Drift(self.config.head, head.sha, changes)
        result.write(self.config.out / "result.json")
        return result

    def isolate(self) -> None:
        """As a run's; the newest environment's build too runs without network: the runner
        resolves and fetches its requirements (see ``runner.deblend.environments``)."""
        super().isolate()
        self.isolation["newest build"] = self.isolation["build"]

    def described_isolation(self) -> dict[str, str]:
        described = super().described_isolation()
        described["newest build"] = (
            "requirements resolved (wheels only) and fetched by the runner, with network;"
            " installed offline: " + self.isolation["newest build"].describe()
        )
        return described

    def _environments(
        self, repo: Path, revs: revisions.Revisions, adapter: Adapter
    ) -> dict[str, Environment | BuildError]:
        self.progress(Progress("building the locked environment"))
        compiler_cache = None  # no trusted ref: compiled without the shared cache
        locked = _environment(
            repo, revs.head, adapter, self.config.cache, self.isolation["build"], compiler_cache
        )
        self.progress(Progress("building the newest environment"))
        source = revisions.checkout(repo, revs.head, self.config.cache / "checkouts" / revs.head)
        sandbox = self.isolation["newest build"]
        try:
            newest = build_newest_environment(
                source, revs.head, adapter, self.newest_dir, sandbox, compiler_cache
            )
        except BuildError as error:
            newest = error
        return {"base": locked, "head": newest}


def drift(config: RunConfig, progress: Callable[[Progress], None] = lambda p: None) -> RunResult:
    """Do one drift run of ``config.head`` (``config.base`` is ignored; see DriftRun); an
    empty ``config.head`` is the repository's default branch, resolved now, so that the
    newest commit of main is deblended and an adapter it breaks shows the same day."""
    head = config.head
    if not head:
        try:
            repo = revisions.local_repository(config.repo, config.cache.resolve())
            head = revisions.default_branch(repo)
        except revisions.RevisionError as error:
            raise RunError(str(error)) from None
    return DriftRun(dataclasses.replace(config, head=head, base=head), progress).execute()


def add_parser(commands) -> None:
    """Add the verb to the runner's subcommands."""
    drifter = commands.add_parser(
        "drift", help="deblend one revision with the lock and with the newest allowed releases"
    )
    drifter.add_argument("--repo", required=True, help="scarlet git repository: path or URL")
    drifter.add_argument(
        "--rev", default="", help="revision (default: the default branch's newest commit)"
    )
    run_options(drifter)
    publishing(drifter)
    drifter.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Drift-run, say which packages moved, then finish (summarise, report, publish)."""
    if args.store and not args.repository:
        return fail_early("--store needs --repository owner/name")
    made = not args.out.exists()
    try:
        result = drift(run_config(args, head=args.rev, base=args.rev), progress(args))
    except RunError as error:
        return fail_early(error, args.out, made)
    warn_failed_builds(result, {"base": "locked", "head": "newest"})
    moved = result.provenance.drift.packages
    names = ", ".join(f"{p.name} {p.locked or '–'} → {p.newest or '–'}" for p in moved)
    report = sys.stderr if args.progress_json else sys.stdout
    print(f"newer than the lock: {names or 'nothing'}", file=report)
    return finish(result, args)
