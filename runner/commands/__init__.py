"""``python -m runner``: synth, run, drift, lock adopt, merge, compare and release-repo."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from runner.deblend.adapters import ADAPTERS
from runner.deblend.run import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TIMEOUT,
    DEFAULT_TIMING_SAMPLE,
    Progress,
    RunConfig,
    RunError,
    default_cache,
    run,
)


def _synth(args: argparse.Namespace) -> int:
    from runner.commands.synth import write_synthetic_set

    paths = write_synthetic_set(args.out, args.blends, args.seed)
    print(f"wrote {len(paths)} blends to {args.out}")
    return 0


def _release_repo(args: argparse.Namespace) -> int:
    from runner.commands.release_repo import ReleaseError, release_repository

    try:
        tag = release_repository(args.requirement, args.out)
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: git repository of {args.requirement}, tagged {tag}")
    return 0


def _compare(args: argparse.Namespace) -> int:
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
        _write_report(result, args.result.parent, args.report)
    return 0


def _write_report(result, run_dir: Path, out: Path) -> None:
    from runner.publish.publish import write_report

    files = write_report(result, run_dir, out)
    images = sum(path.suffix == ".png" for path in files)
    print(f"wrote the report to {out}: comment, check run, HTML page, {images} residual image(s)")


def utc_time(text: str) -> str:
    """An ISO 8601 time (``Z`` or any offset) as UTC, so that times sort as text."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time's offset (e.g. Z): {text!r}")
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def reason(error: Exception) -> str:
    """An error as one line; a file that cannot be read as its path and why."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"cannot read {error.filename}: {error.strerror}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def fail_early(error: Exception | str, out: Path | None = None, made: bool = False) -> int:
    """Say in one line on stderr why a command could not run, remove ``out`` when the
    command itself made it, and return exit status 2."""
    if made and out is not None:
        shutil.rmtree(out, ignore_errors=True)
    text = error if isinstance(error, str) else reason(error)
    print(f"error: {text}", file=sys.stderr)
    return 2


def positive(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def summary_line(result) -> str:
    """One line: the verdict and its reasons."""
    comparison = result.comparison
    reasons = "; ".join(comparison.reasons)
    return f"verdict: {comparison.verdict}" + (f" ({reasons})" if reasons else "")


class JsonProgress:
    """Progress as one JSON object per line on stdout, for the bot."""

    def __call__(self, progress: Progress) -> None:
        line = {"phase": progress.phase, "done": progress.done, "total": progress.total}
        print(json.dumps(line), flush=True)


class ProgressBar:
    """Phases as lines on stderr, deblending as a tqdm bar."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, progress: Progress) -> None:
        if progress.phase == "deblending":
            if self.bar is None:
                self.bar = tqdm(
                    total=progress.total, desc="deblending", unit="blend", file=sys.stderr
                )
            self.bar.update(progress.done - self.bar.n)
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if progress.phase != "done":
            print(f"{progress.phase}…", file=sys.stderr)


def _run_config(args: argparse.Namespace, head: str, base: str, shard=None) -> RunConfig:
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


def _progress(args: argparse.Namespace):
    return JsonProgress() if args.progress_json else ProgressBar()


def _warn_failed_builds(result, names: dict[str, str]) -> None:
    for side, name in names.items():
        info = getattr(result.provenance, side)
        if info.build.status == "failed":
            print(
                f"{info.build.log_tail}\nwarning: {name} {info.sha[:12]} did not build: "
                f"{info.build.error}",
                file=sys.stderr,
            )


def _run(args: argparse.Namespace) -> int:
    try:
        shard = _shard(args)
    except ValueError as error:
        return fail_early(error)
    if args.store and not args.repository:
        return fail_early("--store needs --repository owner/name")
    made = not args.out.exists()
    try:
        result = run(_run_config(args, args.head, args.base, shard), _progress(args))
    except RunError as error:
        return fail_early(error, args.out, made)
    _warn_failed_builds(result, {"base": "base", "head": "head"})
    return _finish(result, args)


def _drift(args: argparse.Namespace) -> int:
    from runner.commands.drift import drift

    if args.store and not args.repository:
        return fail_early("--store needs --repository owner/name")
    made = not args.out.exists()
    try:
        result = drift(_run_config(args, head=args.rev, base=args.rev), _progress(args))
    except RunError as error:
        return fail_early(error, args.out, made)
    _warn_failed_builds(result, {"base": "locked", "head": "newest"})
    moved = result.provenance.drift.packages
    names = ", ".join(f"{p.name} {p.locked or '–'} → {p.newest or '–'}" for p in moved)
    report = sys.stderr if args.progress_json else sys.stdout
    print(f"newer than the lock: {names or 'nothing'}", file=report)
    return _finish(result, args)


def _adopt(args: argparse.Namespace) -> int:
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


def _finish(result, args: argparse.Namespace) -> int:
    """Summarise a run (or merged shards), write its report, publish it, say where."""
    report = sys.stderr if args.progress_json else sys.stdout
    errored = sum(b.base.status == "errored" or b.head.status == "errored" for b in result.blends)
    print(
        f"wrote {args.out / 'result.json'}: {len(result.blends)} blends, {errored} with errors",
        file=report,
    )
    if result.comparison is not None:
        print(summary_line(result), file=report)
    if args.report and result.comparison is not None:
        _write_report(result, args.out, args.report)
    published = None
    if args.store:
        from runner.publish.history import append_record
        from runner.publish.merge import store_shard
        from runner.publish.publish import publish_run
        from runner.publish.summarise import summarise
        from runner.store import StoreError, open_store

        try:
            store = open_store(args.store, base_url=args.store_url, deadline=args.store_deadline)
            if result.shard is not None:
                store_shard(store, args.out, result, args.repository, args.pr)
            else:
                addresses = publish_run(
                    result, args.out, store, args.repository, args.pr, trends=args.trends_url
                )
                published = str((args.out / "published.json").resolve())
        except (StoreError, ValueError) as error:
            print(f"error: cannot store the run: {error}".splitlines()[0], file=sys.stderr)
            return 3
        if published and result.provenance.drift is None:  # drift runs are no trend point
            record = summarise(
                result,
                args.repository,
                pr=args.pr,
                branch=args.branch,
                merged_at=args.merged_at,
                report=addresses["report"],
            )
            try:
                append_record(store, record)
            except StoreError as error:  # the report stands; only its trend point is missing
                message = f"warning: the run is published, its history record is not: {error}"
                print(message.splitlines()[0], file=sys.stderr)
    if args.progress_json:
        result_path = str((args.out / "result.json").resolve())
        finished = {"phase": "finished", "result": result_path, "published": published}
        print(json.dumps(finished), flush=True)
    return 0


def _merge(args: argparse.Namespace) -> int:
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
    return _finish(result, args)


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


def _publishing(command: argparse.ArgumentParser) -> None:
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


def _run_options(command: argparse.ArgumentParser) -> None:
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

    synth = commands.add_parser("synth", help="write a deterministic synthetic blend set")
    synth.add_argument("--out", type=Path, required=True, help="the folder to write the set to")
    synth.add_argument("--blends", type=positive, default=20, help="how many blends")
    synth.add_argument("--seed", type=int, default=0, help="the set's random seed")
    synth.set_defaults(handler=_synth)

    runner = commands.add_parser("run", help="deblend blend sets with head and base")
    runner.add_argument("--repo", required=True, help="scarlet git repository: path or URL")
    runner.add_argument("--head", required=True, help="revision under test")
    runner.add_argument("--base", required=True, help="base revision; a branch means merge-base")
    _run_options(runner)
    runner.add_argument("--shard", help="I/N: deblend shard I of N and write a partial result")
    _publishing(runner)
    runner.set_defaults(handler=_run)

    drifter = commands.add_parser(
        "drift", help="deblend one revision with the lock and with the newest allowed releases"
    )
    drifter.add_argument("--repo", required=True, help="scarlet git repository: path or URL")
    drifter.add_argument("--rev", required=True, help="revision, e.g. the default branch")
    _run_options(drifter)
    _publishing(drifter)
    drifter.set_defaults(handler=_drift)

    lock = commands.add_parser("lock", help="work with the runner's locks")
    lock_commands = lock.add_subparsers(dest="lock_command", required=True)
    adopter = lock_commands.add_parser(
        "adopt", help="write a lock with the newer versions a drift run found, for review"
    )
    adopter.add_argument("source", type=Path, help="a drift run's result.json")
    adopter.add_argument("--out", type=Path, required=True, help="where to write the new lock")
    adopter.add_argument("--lock", type=Path, help="the lock the run used (default: the adapter's)")
    adopter.set_defaults(handler=_adopt)

    merger = commands.add_parser("merge", help="merge the results of a run's shards")
    merger.add_argument("parts", type=Path, nargs="*", help="shard result folders")
    merger.add_argument("--out", type=Path, required=True)
    merger.add_argument("--sha", help="with --store: the head SHA of the sharded run")
    merger.add_argument("--shards", type=positive, help="with --store: how many shards")
    _publishing(merger)
    merger.set_defaults(handler=_merge)

    comparer = commands.add_parser("compare", help="compare head with base in a run result")
    comparer.add_argument("result", type=Path, help="a run's result.json")
    comparer.add_argument("--config", type=Path, help="a scarlet-regression.toml")
    comparer.add_argument("--out", type=Path, help="where to write (default: in place)")
    comparer.add_argument("--report", type=Path, help="write comment, check run and HTML page here")
    comparer.set_defaults(handler=_compare)

    release = commands.add_parser(
        "release-repo", help="make a git repository from a released sdist on PyPI"
    )
    release.add_argument("requirement", help="e.g. scarlet2==0.5.1")
    release.add_argument("--out", type=Path, required=True)
    release.set_defaults(handler=_release_repo)
    return main


def _terminate(signum: int, frame: object) -> None:
    from runner.deblend.pool import kill_all_workers

    kill_all_workers()
    os._exit(128 + signum)


def exit_with_workers_on_sigterm() -> None:
    """On SIGTERM (a cancelled or timed-out job) take the worker processes down too: they
    run in sessions of their own and would outlive the runner."""
    signal.signal(signal.SIGTERM, _terminate)


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = parser().parse_args(argv)
    return args.handler(args)
