"""The regression service: turns requests for runs into jobs, check runs and one comment.

Webhook handlers call ``request_run``, ``approve`` and ``cancel_pr``; the dispatcher calls
back ``on_progress`` and ``on_finished``; the reconciler (``bot.state.reconcile``) calls
``resume`` and ``on_finished`` for what a bot process that died left. GitHub is written to
here and in ``bot.github.client`` only; the text comes from ``runner.publish.report``.

A job is stored held, given its check run, and only then queued (a fork's stays held
until a maintainer approves it), so nothing runs without a check run, and no pass of the
reconciler can start a fork's code. Holding, cancelling and superseding go through the
store and the dispatcher, which stops whatever runs. What a check run shows is decided
from the shared state: its ``started_at`` is sent once, progress never follows its
conclusion, and a report GitHub refuses is tried a bounded number of times.
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
from bot.settings import CHECK_NAME, Settings, check_name
from bot.state.jobs import Job, JobStore
from runner.publish.report import CheckRunOutput, Links, check_run_output, comment
from runner.publish.untrusted import code, one_line
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
FORK_WAITS = (
    "Code from forks runs after a maintainer approves it: the check run's "
    "**Approve and run** button, or a comment `/rerun-regression`."
)
APPROVED = "Approved by a maintainer: queued."
NOT_HEAD = (
    "This run is of {sha}, which is no longer the pull request's head: its report is "
    "here only, and the PR's report comment (of the head) was left as it was."
)
NO_COMMENT = (
    "**The PR's report comment could not be written** ({error}); the report is here. " + RERUN
)
PROGRESS_HOLD = 30.0  # seconds a progress write may take before the concluder goes on
MAX_REPORT_WAIT = 3600.0  # the longest wait between two tries of a report


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
    base_sha: str | None = None  # the base branch's commit the event named (base: its ref)
    default_branch: str | None = None

    @property
    def check_name(self) -> str:
        """The name of its check run: a PR's carries its base when that is not the
        repository's default branch."""
        return check_name(self.base, self.default_branch) if self.kind == "pr" else CHECK_NAME


def _waiting(text: str) -> CheckRunOutput:
    return CheckRunOutput("scarlet regression", text, "")


def failure_output(job: Job) -> CheckRunOutput:
    """The check run's output for a job that ended without a result: the error's headline
    (the part before ``": "``), what it means, the error itself (it may quote the PR's
    own text: one line in a code span) and how to run again."""
    error = job.error or job.conclusion or "unknown"
    headline = one_line(error.partition(": ")[0])
    parts = [EXPLANATIONS.get(headline, "The run ended without a result."), code(error, 1000)]
    if job.pr is not None:
        parts.append(RERUN)
    summary = "\n\n".join(parts)
    return CheckRunOutput(headline, summary[:60000], "")


def refusal_mark(repository: str, pr: int) -> str:
    """The mark of the refusal comment given on a PR (given once; then a reaction)."""
    return f"refusal:{repository}#{pr}"


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
        # Requests for one PR's runs (or one repository's commits) are taken in turn here:
        # reading the PR's head, superseding and queueing.
        self._pr_locks: dict[tuple[str, int | None], asyncio.Lock] = {}
        self._request_locks: dict[tuple[str, int | None], asyncio.Lock] = {}

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

    def requesting(self, repository: str, pr: int | None) -> asyncio.Lock:
        """The lock a handler holds while it reads a PR's head and requests its run, so
        that this instance takes one PR's deliveries in turn."""
        return self._request_locks.setdefault((repository, pr), asyncio.Lock())

    async def request_run(self, gh: GitHubAPI, request: RunRequest) -> Job | None:
        """Request a run: supersede the PR's runs of other SHAs (unless told not to), store
        the job held, give it its check run (``external_id`` the job's id), then queue it,
        or leave it held for a maintainer (a fork's not yet approved). A request for a job
        held for a maintainer, approved, approves it."""
        if request.pr is not None and request.supersede:
            await self.cancel_pr(gh, request.repository, request.pr, except_sha=request.head_sha)
        hold = request.fork and not request.approved and not self.settings.run_forks
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
                base_sha=request.base_sha,
                state="held",
                approval=hold,
                check_name=request.check_name,
            )
        )
        if job.check_run_id is not None:  # the same run is held, queued or running already
            if job.state == "held" and job.approval and not hold:
                return await self.approve(gh, job)
            return job
        job = await self.open_check_run(gh, job, FORK_WAITS if hold else "Queued.", hold)
        if job is None or hold:
            return None
        return await self._queue(job)

    async def _queue(self, job: Job) -> Job | None:
        """Held → queued, and to the dispatcher; None when the job ended meanwhile."""
        queued = await self.jobs.queue(job.id)
        if queued is None:
            return None
        return await self.dispatcher.submit(queued)

    async def approve(self, gh: GitHubAPI, job: Job) -> Job | None:
        """Run a job held for a maintainer, in its check run (its button taken away);
        None when it is no longer held."""
        queued = await self.jobs.queue(job.id)
        if queued is None:
            return None
        if queued.check_run_id is not None:
            await github.wait_check_run(
                gh, queued.repository, queued.check_run_id, _waiting(APPROVED)
            )
        return await self.dispatcher.submit(queued)

    async def open_check_run(
        self, gh: GitHubAPI, job: Job, text: str, hold: bool = False
    ) -> Job | None:
        """Give the job its queued check run (one waiting on that SHA for this job, or for
        an earlier job of the same key, else a new one; with the approval button when it
        is held for a maintainer); None, with the check run concluded, when the job ended
        meanwhile (the PR closed, or a newer push came)."""
        check_run_id = await self._adoptable(gh, job)
        if check_run_id is None:
            details = self.details_url(job.repository, job.pr, job.head_sha)
            check_run_id = await github.create_check_run(
                gh,
                job.repository,
                job.head_sha,
                job.check_name or CHECK_NAME,
                details,
                _waiting(text),
                job.id,
                hold,
            )
        else:
            await github.adopt_check_run(
                gh, job.repository, check_run_id, job.id, _waiting(text), hold
            )
        job = await self.jobs.set_check_run(job.id, check_run_id) or job
        if job.finished:
            await self._conclude(gh, job, "cancelled", _waiting(job.error or CANCELLED))
            await self.jobs.mark_notified(job.id)
            return None
        return job

    async def _adoptable(self, gh: GitHubAPI, job: Job) -> int | None:
        """A queued check run of the job's name on its SHA whose ``external_id`` names this
        job, or an ended job of the same key (a fork's that waited for a maintainer
        before this bot kept held jobs): never one of another PR or base."""
        for run in await github.queued_check_runs(gh, job.repository, job.head_sha):
            if run["name"] != (job.check_name or CHECK_NAME):
                continue
            named = run.get("external_id")
            if named == job.id:
                return int(run["id"])
            other = await self.jobs.get(named) if named else None
            if other is not None and other.key == job.key and other.finished:
                return int(run["id"])
        return None

    async def resume(self, job: Job) -> None:
        """Carry on with a job a bot process left held or queued: give it its check run if
        it has none (drift runs have none), queue it unless it waits for a maintainer,
        and get it run."""
        if job.kind != "drift":
            if job.check_run_id is None:
                gh = await self.client(job.installation_id)
                text = FORK_WAITS if job.approval else "Queued."
                opened = await self.open_check_run(gh, job, text, job.approval)
                if opened is None:
                    return
                job = opened
            if job.state == "held":
                if job.approval:
                    return
                await self._queue(job)
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
        """Cancel the PR's held, queued and running jobs (all, or those not at
        ``except_sha``) through the dispatcher, which stops whatever runs them, and
        conclude their check runs saying ``reason`` (by default: superseded, or closed)."""
        if reason is None:
            reason = "Superseded by a newer push." if except_sha else "The PR was closed."
        for job in await self.jobs.cancel(repository, pr=pr, except_sha=except_sha):
            await self.dispatcher.cancel(job)
            if job.check_run_id is not None:  # else its maker concludes it once made
                await self._conclude(gh, job, "cancelled", _waiting(reason))
                await self.jobs.mark_notified(job.id)

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
            stopped += 1
        log.info("installation %s: %d job(s) stopped", installation_id, stopped)

    async def on_progress(self, job: Job, phase: str, done: int, total: int) -> None:
        """Show progress on the check run, at most every ``progress_interval`` seconds
        (whichever instance shows it) and never once the job has ended: the write is
        leased in the shared state, and the concluder waits it out. The first progress
        of a job, on any instance, sends the check run's ``started_at``."""
        taken = await self.jobs.begin_progress(
            job.id, self.settings.progress_interval, PROGRESS_HOLD
        )
        if taken is None:
            return
        current, first = taken
        try:
            if current.check_run_id is None:
                return
            title = f"{phase}: {done} of {total}" if total else phase
            gh = await self.client(job.installation_id)
            async with asyncio.timeout(PROGRESS_HOLD):
                await github.start_check_run(
                    gh,
                    job.repository,
                    current.check_run_id,
                    CheckRunOutput(title, title, ""),
                    first,
                )
        finally:
            await self.jobs.end_progress(job.id)

    async def _conclude(
        self, gh: GitHubAPI, job: Job, conclusion: str, output: CheckRunOutput
    ) -> None:
        """Conclude the job's check run once no progress is being written to it (the
        job has ended, so none starts): the conclusion is its last word."""
        deadline = time.time() + PROGRESS_HOLD
        while time.time() < deadline:
            current = await self.jobs.get(job.id)
            if current is None or current.progress_until is None:
                break
            if current.progress_until < time.time():
                break
            await asyncio.sleep(0.1)
        await github.complete_check_run(gh, job.repository, job.check_run_id, conclusion, output)

    async def on_finished(self, job: Job) -> None:
        """Report the job's end, then mark it notified: the PR's one report comment and the
        check run's conclusion (a drift run: open, update or close the drift issue). The
        check run is concluded whatever happens to the comment, with the reason. A report
        that fails is tried again later, with a backoff (``report_failed``)."""
        try:
            async with self._reporting(job):
                if job.kind == "drift":
                    await self._drift_finished(job)
                elif job.check_run_id is not None:
                    gh = await self.client(job.installation_id)
                    conclusion, output = await self._outcome(gh, job)
                    await self._conclude(gh, job, conclusion, output)
        except Exception as error:
            await self.report_failed(job, error)
            return
        await self.jobs.mark_notified(job.id)

    async def report_failed(self, job: Job, error: Exception) -> None:
        """A report failed: try again after ``report_backoff`` · 2^(attempts - 1) seconds
        (at most an hour), or, once GitHub has refused it (a 4xx that is no rate limit)
        ``report_attempts`` times, give up with one ERROR line."""
        stored = await self.jobs.get(job.id) or job
        attempts = stored.report_attempts + 1
        if github.refused(error) and attempts >= self.settings.report_attempts:
            reason = f"GitHub refused the report {attempts} times: {error}"[:500]
            await self.jobs.report_failed(job.id, time.time(), give_up=reason)
            log.error("job %s of %s: failed to report: %s", job.id, job.repository, reason)
            return
        wait = min(self.settings.report_backoff * 2 ** (attempts - 1), MAX_REPORT_WAIT)
        await self.jobs.report_failed(job.id, time.time() + wait)
        log.warning(
            "job %s: report attempt %d failed (%s: %s); trying again in %.0f s",
            job.id,
            attempts,
            type(error).__name__,
            error,
            wait,
            exc_info=not isinstance(error, GitHubException | aiohttp.ClientError),
        )

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
                "the run result could not be read", code(str(error), 1000), ""
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
            return NO_COMMENT.format(error=code(str(error) or type(error).__name__, 300))
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


SERVICE = web.AppKey("service", RegressionService)
