"""The runner's command line for a job: what the embedded dispatcher starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bot.pages.trends import trends_url
from bot.settings import Settings
from bot.state.jobs import Job


def _publishing(settings: Settings, job: Job) -> list[str]:
    argv = ["--store", settings.store_spec, "--private-store", settings.private_store_spec]
    argv += ["--repository", job.repository, "--progress-json"]
    if settings.store_url:
        argv += ["--store-url", settings.store_url]
    if settings.store_deadline is not None:
        argv += ["--store-deadline", f"{settings.store_deadline:g}"]
    if job.pr is not None:
        argv += ["--pr", str(job.pr)]
    if job.branch:
        argv += ["--branch", job.branch]
    if job.merged_at:
        argv += ["--merged-at", job.merged_at]
    if job.kind == "drift":  # drift runs are no point of the trends
        return argv
    return [*argv, "--trends-url", trends_url(settings.public_url, job.repository, job.pr)]


def runner_command(settings: Settings) -> Callable[[Job, Path], list[str]]:
    """A function giving the argv of ``python -m runner run`` (``drift`` for a drift job)
    for a job and its folder."""

    def command(job: Job, out: Path) -> list[str]:
        if job.kind == "drift":  # the default branch's head, locked and newest
            argv = [*settings.runner, "drift", "--repo", job.clone_url, "--rev", job.head_sha]
        else:
            argv = [*settings.runner, "run", "--repo", job.clone_url]
            argv += ["--head", job.head_sha, "--base", job.base]
            if job.base_sha:  # the event's base commit; job.base is then refs/heads/<name>
                argv += ["--base-sha", job.base_sha]
            if job.kind == "baseline" and job.base.startswith("refs/heads/"):
                # The default branch's own push: its compilations and outcomes are shared.
                argv += ["--trusted-ref", job.base.removeprefix("refs/heads/")]
        argv += ["--out", str(out)]
        for dataset in settings.datasets:
            argv += ["--dataset", str(dataset)]
        return [*argv, "--workers", str(settings.workers), *_publishing(settings, job)]

    return command


def merge_arguments(settings: Settings) -> Callable[[Job, Path], list[str]]:
    """The arguments of ``runner merge`` for a job run as ``cloud_run_tasks`` shards."""

    def arguments(job: Job, out: Path) -> list[str]:
        argv = ["merge", "--out", str(out), "--sha", job.head_sha]
        return [*argv, "--shards", str(settings.cloud_run_tasks), *_publishing(settings, job)]

    return arguments
