"""What several verbs print and do last: one-line errors, the verdict line, progress,
the report and publishing a finished run."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from runner.deblend.run import Progress


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


def progress(args: argparse.Namespace):
    """How the options ask for progress: JSON lines for the bot, or a bar."""
    return JsonProgress() if args.progress_json else ProgressBar()


def warn_failed_builds(result, names: dict[str, str]) -> None:
    """Warn on stderr of each side (named in ``names``) whose build failed."""
    for side, name in names.items():
        info = getattr(result.provenance, side)
        if info.build.status == "failed":
            print(
                f"{info.build.log_tail}\nwarning: {name} {info.sha[:12]} did not build: "
                f"{info.build.error}",
                file=sys.stderr,
            )


def write_report(result, run_dir: Path, out: Path) -> None:
    """Write a run's report to ``out`` and say so."""
    from runner.publish.publish import write_report

    files = write_report(result, run_dir, out)
    images = sum(path.suffix == ".png" for path in files)
    print(f"wrote the report to {out}: comment, check run, HTML page, {images} residual image(s)")


def finish(result, args: argparse.Namespace) -> int:
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
        write_report(result, args.out, args.report)
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
