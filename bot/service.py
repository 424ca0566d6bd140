"""The regression service: turns requests for runs into jobs, check runs and one comment.

Webhook handlers call ``request_run`` and ``cancel_pr``; the dispatcher calls back
``on_progress`` and ``on_finished``; the reconciler (``bot.state.reconcile``) calls ``resume``
and ``on_finished`` for what a bot process that died left. GitHub is written to here and
in ``bot.github.client`` only; the text comes from ``runner.publish.report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web
from gidgethub import GitHubException
from gidgethub.abc import GitHubAPI

from bot import drift_issue
from bot.dispatch.local import RUNNER_FAILURES, VERDICT_CONCLUSIONS
from bot.github import client as github
from bot.pages.trends import trends_url
from bot.settings import Settings
from bot.state.jobs import Job, JobStore
from runner.publish.report import CheckRunOutput, Links, check_run_output, comment
from runner.result import RunResult
from runner.store import ArtifactStore, StoreError, run_prefix

log = logging.getLogger(__name__)

CANCELLED = "The PR was closed or superseded before the run started."
FAILED = {"timed_out": "timed_out", "cancelled": "cancelled", "error": "failure"}
# What a maintainer should know about a run that ended without a report, by its headline.
EXPLANATIONS = {
    RUNNER_FAILURES[2]: "The runner could not start: a revision, a blend set or the "
    "configuration at head is wrong.",
    RUNNER_FAILURES[3]: "The run finished, but its result, report and images could not be "
    "stored, so no report was posted and the PR's report comment was left as it was.",
}
RERUN = "Comment `/rerun-regression` on the pull request to run it again."
HELD = "waiting for a maintainer"
FORK_WAITS = (
    "Code from forks runs after a maintainer approves it: the check run's "
    "**Approve and run** button, or a comment `/rerun-regression`."
)
NOT_HEAD = (
    "This run is of {sha}, which is no longer the pull request's head: its report is "
    "here only, and the PR's report comment (of the head) was left as it was."
)
NO_COMMENT = (
    "**The PR's report comment could not be written** ({error}); the report is here. " + RERUN
)


@dataclass(frozen=True)
class RunRequest:
    """A run to start: what to deblend and where the answer goes."""

    repository: str
    installation_id: int
    head_sha: str
    base: str
    clone_url: str
    pr: int | None = None
    kind: str = "pr"
    fork: bool = False
    approved: bool = False
    branch: str | None = None
    merged_at: str | None = None
    supersede: bool = True  # cancel the PR's runs of other SHAs (a push does; a re-run not)


def _waiting(text: str) -> CheckRunOutput:
    return CheckRunOutput("scarlet regression", text, "")


def failure_output(job: Job) -> CheckRunOutput:
    """The check run's output for a job that ended without a result: the error's headline
    (the part before ``": "``), what it means, the error itself and how to run again."""
    error = job.error or job.conclusion or "unknown"
    headline = error.partition(": ")[0][:200]
    parts = [EXPLANATIONS.get(headline, "The run ended without a result."), f"```\n{error}\n```"]
    if job.pr is not None:
        parts.append(RERUN)
    summary = "\n\n".join(parts)
    return CheckRunOutput(headline, summary[:60000], "")


class RegressionService:
    """Coordinates jobs, check runs and the report comment of every PR."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        store: ArtifactStore,
        client: Callable[[int], Awaitable[GitHubAPI]],
        bot_login: Callable[[], Awaitable[str]],
    ):
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.client = client
        self.bot_login = bot_login
        self.dispatcher = None
        self._pr_locks: dict[tuple[str, int], asyncio.Lock] = {}
        # One lock per unfinished job's check run: progress and conclusion are written in
        # turn, and no progress follows a conclusion (it would reopen the check run).
        self._check_run_locks: dict[str, asyncio.Lock] = {}
        self._progress_sent: dict[str, float] = {}
        self._started: set[str] = set()  # jobs whose check run has its started_at

    def details_url(self, repository: str, pr: int | None, sha: str) -> str:
        """The stable address of the report a check run links to (served by the bot)."""
        if pr is not None:
            return f"{self.settings.public_url}/{repository}/pr/{pr}"
        return f"{self.settings.public_url}/{repository}/commit/{sha}"

    def published(self, repository: str, pr: int | None, sha: str, drift: bool = False) -> dict:
        """The addresses the runner published for a run (``published.json``)."""
        prefix = run_prefix(repository, pr, sha, drift)
        return json.loads(self.store.get(prefix + "published.json"))

    def report_url(self, repository: str, pr: int | None, sha: str) -> str | None:
        """Where the stored report of a run is, if the run was published."""
        try:
            return self.published(repository, pr, sha)["report"]
        except (StoreError, ValueError):
            return None

    async def request_run(self, gh: GitHubAPI, request: RunRequest) -> Job | None:
        """Queue a run: supersede older SHAs of the PR (unless told not to), create the
        check run (its ``external_id`` the job's id), dispatch."""
        if request.pr is not None and request.supersede:
            await self.cancel_pr(gh, request.repository, request.pr, except_sha=request.head_sha)
        job = await self.jobs.add(
            Job(
                repository=request.repository,
                installation_id=request.installation_id,
                head_sha=request.head_sha,
                base=request.base,
                clone_url=request.clone_url,
                kind=request.kind,
                pr=request.pr,
                branch=request.branch,
                merged_at=request.merged_at,
            )
        )
        if job.check_run_id is not None:
            return job  # the same run is queued or running already
        hold = request.fork and not request.approved and not self.settings.run_forks
        job = await self.open_check_run(gh, job, FORK_WAITS if hold else "Queued.", hold)
        if job is None:
            return None
        if hold:
            if await self.jobs.finish(job.id, "cancelled", error=HELD) is not None:
                await self.jobs.mark_notified(job.id)  # its check run waits, queued
            return None
        await self.dispatcher.submit(job)
        return job

    async def open_check_run(
        self, gh: GitHubAPI, job: Job, text: str, hold: bool = False
    ) -> Job | None:
        """Give the job its queued check run (a fork's waiting one on that SHA, else a new
        one; with the approval button when it is held for a maintainer); None, with the
        check run concluded, when the job ended meanwhile (the PR closed, or a newer push
        came)."""
        check_run_id = await github.waiting_check_run(gh, job.repository, job.head_sha)
        if check_run_id is None:
            details = self.details_url(job.repository, job.pr, job.head_sha)
            check_run_id = await github.create_check_run(
                gh, job.repository, job.head_sha, details, _waiting(text), job.id, hold
            )
        else:
            await github.adopt_check_run(gh, job.repository, check_run_id, job.id, hold)
        job = await self.jobs.set_check_run(job.id, check_run_id) or job
        if job.finished:
            async with self._check_run_lock(job.id):
                await github.complete_check_run(
                    gh, job.repository, check_run_id, "cancelled", _waiting(CANCELLED)
                )
            await self.jobs.mark_notified(job.id)
            self._forget(job.id)
            return None
        return job

    async def resume(self, job: Job) -> None:
        """Get a queued job run that a bot process left before giving it its check run
        (drift runs have none)."""
        if job.kind != "drift" and job.check_run_id is None:
            gh = await self.client(job.installation_id)
            if await self.open_check_run(gh, job, "Queued.") is None:
                return
        await self.dispatcher.submit(job)

    async def cancel_pr(
        self,
        gh: GitHubAPI,
        repository: str,
        pr: int,
        except_sha: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Cancel the PR's queued and running jobs (all, or those not at ``except_sha``),
        and conclude a fork's check run left waiting for a maintainer, saying ``reason``
        (by default: superseded, or closed)."""
        if reason is None:
            reason = "Superseded by a newer push." if except_sha else "The PR was closed."
        latest = await self.jobs.latest(repository, pr)
        for job in await self.jobs.cancel(repository, pr=pr, except_sha=except_sha):
            await self.dispatcher.cancel(job)
            if job.check_run_id is not None:
                async with self._check_run_lock(job.id):
                    await github.complete_check_run(
                        gh, repository, job.check_run_id, "cancelled", _waiting(reason)
                    )
                await self.jobs.mark_notified(job.id)
            self._forget(job.id)
        held = latest is not None and latest.error == HELD and latest.head_sha != except_sha
        if held and latest.check_run_id is not None:
            waiting = await github.waiting_check_run(gh, repository, latest.head_sha)
            if waiting == latest.check_run_id:
                await github.complete_check_run(
                    gh, repository, waiting, "cancelled", _waiting(reason)
                )

    async def stop_installation(
        self, installation_id: int, repositories: set[str] | None = None
    ) -> None:
        """Cancel the unfinished jobs of an installation (of ``repositories`` only, when
        given) that is gone: its check runs cannot be written, so none is."""
        stopped = 0
        for job in await self.jobs.unfinished():
            if job.installation_id != installation_id:
                continue
            if repositories is not None and job.repository not in repositories:
                continue
            await self.dispatcher.cancel(job)
            await self.jobs.mark_notified(job.id)
            self._forget(job.id)
            stopped += 1
        log.info("installation %s: %d job(s) stopped", installation_id, stopped)

    async def on_progress(self, job: Job, phase: str, done: int, total: int) -> None:
        """Show progress on the check run, at most every ``progress_interval`` seconds and
        never once the job has ended (a closed PR's run still reports its last phases)."""
        last = self._progress_sent.get(job.id)
        if last is not None and time.monotonic() - last < self.settings.progress_interval:
            return
        self._progress_sent[job.id] = time.monotonic()
        title = f"{phase}: {done} of {total}" if total else phase
        gh = await self.client(job.installation_id)
        async with self._check_run_lock(job.id):
            current = await self.jobs.get(job.id)
            if current is None or current.finished:
                self._forget(job.id)
                return
            if current.check_run_id is None:
                return
            first = job.id not in self._started
            await github.start_check_run(
                gh, job.repository, current.check_run_id, CheckRunOutput(title, title, ""), first
            )
            self._started.add(job.id)

    async def on_finished(self, job: Job) -> None:
        """Report the job's end, then mark it notified: the PR's one report comment and the
        check run's conclusion (a drift run: open, update or close the drift issue). The
        check run is concluded whatever happens to the comment, with the reason."""
        try:
            async with self._reporting(job):
                if job.kind == "drift":
                    await self._drift_finished(job)
                elif job.check_run_id is not None:
                    gh = await self.client(job.installation_id)
                    conclusion, output = await self._outcome(gh, job)
                    async with self._check_run_lock(job.id):
                        await github.complete_check_run(
                            gh, job.repository, job.check_run_id, conclusion, output
                        )
            await self.jobs.mark_notified(job.id)
        finally:
            self._forget(job.id)

    @contextlib.asynccontextmanager
    async def _reporting(self, job: Job) -> AsyncIterator[None]:
        """Renew the lease of the job's report while it is written (GitHub may keep it
        waiting past the lease), so that no other instance reports it meanwhile."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.jobs.lease / 3)
                await self.jobs.renew(job.id)

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()

    async def _outcome(self, gh: GitHubAPI, job: Job) -> tuple[str, CheckRunOutput]:
        """The check run's conclusion and output, after writing the PR's report comment."""
        if job.conclusion == "cancelled":
            return "cancelled", _waiting(job.error or CANCELLED)
        if job.conclusion not in VERDICT_CONCLUSIONS.values():
            return FAILED.get(job.conclusion or "", "failure"), failure_output(job)
        try:
            result, links = await asyncio.to_thread(self.load, job)
        except (StoreError, ValueError, KeyError) as error:
            return "failure", CheckRunOutput(
                "the run result could not be read", str(error)[:60000], ""
            )
        output = check_run_output(result, links)
        if job.pr is not None:
            note = await self._comment(gh, job, comment(result, links))
            if note:
                output = replace(output, summary=f"{note}\n\n{output.summary}")
        return VERDICT_CONCLUSIONS[result.comparison.verdict], output

    async def _comment(self, gh: GitHubAPI, job: Job, body: str) -> str | None:
        """Write the PR's report comment when the job is of the PR's head; what the check
        run should say instead, if anything."""
        try:
            async with self._pr_lock(job.repository, job.pr):
                pull = await github.pull_request(gh, job.repository, job.pr)
                if pull["head"]["sha"] != job.head_sha:
                    return NOT_HEAD.format(sha=job.head_sha[:10])
                bot_login = await self.bot_login()
                await github.upsert_comment(gh, job.repository, job.pr, body, bot_login)
        except (GitHubException, aiohttp.ClientError, LookupError) as error:
            log.warning("job %s: the report comment failed: %r", job.id, error)
            return NO_COMMENT.format(error=str(error)[:300] or type(error).__name__)
        return None

    async def _drift_finished(self, job: Job) -> None:
        if job.conclusion not in VERDICT_CONCLUSIONS.values():
            log.error("drift run of %s ended %s: %s", job.repository, job.conclusion, job.error)
            return
        try:
            result, links = await asyncio.to_thread(self.load, job)
        except (StoreError, ValueError, KeyError) as error:
            log.error("the drift run of %s cannot be read: %s", job.repository, error)
            return
        gh = await self.client(job.installation_id)
        await drift_issue.report(gh, job.repository, result, links, await self.bot_login())

    def load(self, job: Job) -> tuple[RunResult, Links]:
        """The compared result the runner stored for ``job`` and the addresses of its parts."""
        is_drift = job.kind == "drift"
        prefix = run_prefix(job.repository, job.pr, job.head_sha, is_drift)
        result = RunResult.from_json(self.store.get(prefix + "result.json").decode())
        if result.comparison is None:
            raise ValueError("the stored result has no comparison")
        published = self.published(job.repository, job.pr, job.head_sha, is_drift)
        images = {tuple(key.split("/", 1)): url for key, url in published["images"].items()}
        links = Links(report=published["report"], images=images)
        if not is_drift:  # drift runs are no point of the trends, nor of a PR or commit
            links = replace(
                links,
                trends=trends_url(self.settings.public_url, job.repository, job.pr),
                latest=self.details_url(job.repository, job.pr, job.head_sha),
            )
        return result, links

    def _pr_lock(self, repository: str, pr: int) -> asyncio.Lock:
        return self._pr_locks.setdefault((repository, pr), asyncio.Lock())

    def _check_run_lock(self, job_id: str) -> asyncio.Lock:
        return self._check_run_locks.setdefault(job_id, asyncio.Lock())

    def _forget(self, job_id: str) -> None:
        """Drop what was kept for an unfinished job (its progress time and lock)."""
        self._progress_sent.pop(job_id, None)
        self._check_run_locks.pop(job_id, None)
        self._started.discard(job_id)


SERVICE = web.AppKey("service", RegressionService)
