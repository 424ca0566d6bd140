"""Handing jobs to the runner: the dispatcher interface and the embedded backend, which
runs ``python -m runner run ... --progress-json`` as a subprocess of the bot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from bot import logs
from bot.state.jobs import Conclusion, Job, JobStore
from runner.secretfiles import HIDE_VARIABLE, secret_paths

log = logging.getLogger(__name__)

OnProgress = Callable[[Job, str, int, int], Awaitable[None]]
OnFinished = Callable[[Job], Awaitable[None]]
Command = Callable[[Job, Path], Sequence[str]]

VERDICT_CONCLUSIONS: dict[str, Conclusion] = {
    "pass": "success",
    "fail": "failure",
    "neutral": "neutral",
}
# What the runner may see of the bot's environment: never the bot's secrets, since the
# runner builds the pull request's own code.
PASSED_VARIABLES = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "TMPDIR",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "STORAGE_EMULATOR_HOST",
    # Where the machine's trusted certificates are (package indexes, git over https).
    *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"),
)
PASSED_PREFIXES = ("LC_", "UV_", "PIP_", "SCARLET_REGRESSION_")
# What the runner's exit codes mean (README, "The runner"): the headline of a job's error.
RUNNER_FAILURES = {
    2: "the runner could not run",
    3: "the artifact store failed",
}
STDERR_TAIL = 8192


class Dispatcher(Protocol):
    """Runs jobs somewhere and reports back through the callbacks it was built with."""

    async def start(self) -> None:
        """Recover what a previous process left and start taking jobs."""

    async def resume(self) -> list[Job]:
        """Take up what bot processes that died left in the store: their running jobs
        whose lease ran out go back to the queue (or are concluded "error" and passed to
        ``on_finished`` after three attempts), and every queued job is got run. Returns
        the jobs it concluded."""

    async def stop(self) -> None:
        """Stop taking jobs; queued ones stay queued in the store."""

    async def submit(self, job: Job) -> Job:
        """Store the job (or find its unfinished twin by key) and get it run."""

    async def cancel(self, job: Job) -> None:
        """Conclude the job "cancelled" and stop whatever runs it (no ``on_finished``)."""


def runner_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The bot's environment less everything but the basics, plus the names of the bot's
    secret files (its App key file, ...), which the runner hides from the code it runs,
    plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in PASSED_VARIABLES or key.startswith(PASSED_PREFIXES)
    }
    secrets = [str(path) for path in secret_paths(os.environ)]
    if secrets:
        env[HIDE_VARIABLE] = os.pathsep.join(secrets)
    return {**env, **(extra or {})}


def conclusion_of(result_path: Path) -> Conclusion:
    """The check-run conclusion for a run result's verdict (no comparison: neutral)."""
    comparison = json.loads(result_path.read_text()).get("comparison") or {}
    return VERDICT_CONCLUSIONS.get(comparison.get("verdict"), "neutral")


async def call_safely(callback: Callable[..., Awaitable[None]], job: Job, *args: Any) -> None:
    """Await a callback about ``job``; log what it raises instead of passing it on."""
    try:
        await callback(job, *args)
    except Exception:
        log.exception("%s failed for job %s", getattr(callback, "__name__", callback), job.id)


@dataclass
class _Active:
    """A job this dispatcher has claimed, and why it should stop early, if it should."""

    job: Job
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: Literal["cancelled", "stopping", "lost"] | None = None

    def interrupt(self, reason: Literal["cancelled", "stopping", "lost"]) -> None:
        self.reason = self.reason or reason
        self.stop.set()


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class EmbeddedDispatcher:
    """Runs jobs as subprocesses of this process, ``concurrency`` at a time, in the order
    they were submitted.

    Only submitted jobs run (and, after a restart, those the store holds unfinished), so a
    job that was added to the store but held back never starts. Each job gets
    ``workdir/<job id>/`` as its ``--out``; ``command(job, out)`` is the full command
    line, run in its own process group with ``env`` (default: ``runner_environment()``).
    A process that outlives ``timeout`` seconds concludes "timed_out"; stopping one is
    SIGTERM to its group, then SIGKILL after ``grace`` seconds. While a job runs, its
    lease is renewed every third of the store's ``lease``; a job whose lease was lost
    (cancelled by another instance, or taken over after this one stalled) is stopped.
    ``on_finished`` follows every conclusion but "cancelled" (whoever cancels knows).
    """

    def __init__(
        self,
        store: JobStore,
        command: Command,
        workdir: Path,
        *,
        concurrency: int = 1,
        timeout: float = 3 * 3600,
        grace: float = 10,
        env: Mapping[str, str] | None = None,
        on_progress: OnProgress | None = None,
        on_finished: OnFinished | None = None,
    ) -> None:
        self.store = store
        self.command = command
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.timeout = timeout
        self.grace = grace
        self.env = dict(env) if env is not None else runner_environment()
        self.on_progress = on_progress
        self.on_finished = on_finished
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: dict[str, _Active] = {}
        self._tasks: set[asyncio.Task] = set()
        self._puller: asyncio.Task | None = None

    async def start(self) -> None:
        """Requeue jobs a previous process left running (concluding "error" those started
        three times already), queue every unfinished job and start running them. A store
        of this process alone (not ``shared``) gives back every running job at once; a
        shared one only those whose lease has run out."""
        await self._resume(time.time() if self.store.shared else math.inf)
        self._puller = asyncio.create_task(self._pull(), name="dispatcher")

    async def resume(self) -> list[Job]:
        """``Dispatcher.resume``."""
        return await self._resume(time.time())

    async def _resume(self, stale_before: float) -> list[Job]:
        given_up = await self.store.recover(stale_before)
        for job in given_up:
            await self._notify(job)
        for job in await self.store.unfinished():
            if job.state == "queued":
                self._enqueue(job.id)
        return given_up

    def _enqueue(self, job_id: str) -> None:
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    async def stop(self) -> None:
        """Stop starting jobs; end running processes and put their jobs back in the queue
        (the store's), so that the next ``start`` runs them again."""
        if self._puller is not None:
            self._puller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._puller
            self._puller = None
        for active in self._active.values():
            active.interrupt("stopping")
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, job: Job) -> Job:
        """Store the job (idempotent on its key) and queue it to run."""
        job = await self.store.add(job)
        if job.state == "queued":
            self._enqueue(job.id)
        return job

    async def cancel(self, job: Job) -> None:
        """Conclude the job "cancelled" (unless it has finished) and kill its process, if
        it runs here; returns without waiting for the process to end."""
        await self.store.finish(job.id, "cancelled")
        active = self._active.get(job.id)
        if active is not None:
            active.interrupt("cancelled")

    async def _pull(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            await slots.acquire()
            job_id = await self._queue.get()
            self._queued.discard(job_id)
            job = await self.store.claim(job_id)
            if job is None:  # cancelled, or a duplicate submission
                slots.release()
                continue
            self._active[job.id] = _Active(job)
            task = asyncio.create_task(self._run(job), name=f"job {job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _run(self, job: Job) -> None:
        with logs.context(job=job.id, repository=job.repository, pr=job.pr):
            await self._run_logged(job)

    async def _run_logged(self, job: Job) -> None:
        try:
            done = await self._execute(self._active[job.id])
        except Exception as error:
            log.exception("job %s failed in the dispatcher", job.id)
            done = await self.store.finish(job.id, "error", error=f"dispatcher: {error}")
        finally:
            del self._active[job.id]
        if done is not None and done.conclusion != "cancelled":
            await self._notify(done)

    async def _execute(self, active: _Active) -> Job | None:
        """Run the job's process; the job as concluded in the store, or None when it was
        cancelled or the dispatcher is stopping (the job is then requeued)."""
        job = active.job
        out = self.workdir / job.id
        await asyncio.to_thread(_fresh_dir, out)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(job, out),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as error:
            return await self.store.finish(job.id, "error", error=f"could not start: {error}")
        finished: dict = {}
        tail = bytearray()

        async def read_stdout() -> None:
            assert process.stdout is not None
            async for line in process.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("phase") == "finished":
                    finished.update(message)
                else:
                    await self._progress(job, message)

        async def read_stderr() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.read(65536):
                tail.extend(chunk)
                del tail[:-STDERR_TAIL]

        work = asyncio.gather(read_stdout(), read_stderr(), process.wait())
        stop = asyncio.create_task(active.stop.wait())
        heartbeat = asyncio.create_task(self._renew(active))
        await asyncio.wait({work, stop}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        heartbeat.cancel()
        interrupted = not work.done()
        if interrupted or process.returncode is None:
            await self._terminate(process)
            await asyncio.wait({work}, timeout=self.grace)
            if work.cancel():
                await asyncio.wait({work})
        _killpg(process.pid, signal.SIGKILL)  # any straggler of the group
        if not work.cancelled() and work.exception() is not None:
            log.error("job %s: reading the runner failed", job.id, exc_info=work.exception())
        if interrupted and active.reason == "stopping":
            await self.store.requeue(job.id)
            return None
        if interrupted and active.reason in ("cancelled", "lost"):
            return None
        if interrupted:
            return await self.store.finish(
                job.id, "timed_out", error=f"timed out after {self.timeout:g} s"
            )
        return await self._conclude(job, process.returncode, finished, tail, out)

    async def _conclude(
        self, job: Job, code: int, finished: dict, tail: bytearray, out: Path
    ) -> Job | None:
        if code != 0:
            lines = tail.decode(errors="replace").strip().splitlines()
            headline = RUNNER_FAILURES.get(code, f"the runner exited with {code}")
            if code < 0:
                headline = f"the runner was killed by signal {-code}"
            reason = f"{headline}: {lines[-1].removeprefix('error: ')}" if lines else headline
            return await self.store.finish(job.id, "error", error=reason)
        result = Path(finished.get("result") or out / "result.json")
        try:
            conclusion = await asyncio.to_thread(conclusion_of, result)
        except (OSError, ValueError, AttributeError) as error:
            return await self.store.finish(
                job.id, "error", error=f"the runner gave no readable result: {error}"
            )
        return await self.store.finish(
            job.id, conclusion, result_path=str(result), published_path=finished.get("published")
        )

    async def _renew(self, active: _Active) -> None:
        """Renew the job's lease while it runs; stop it once the lease is lost."""
        while True:
            await asyncio.sleep(self.store.lease / 3)
            try:
                renewed = await self.store.renew(active.job.id)
            except Exception:
                log.exception("job %s: could not renew its lease", active.job.id)
                continue
            if renewed is None:
                log.warning("job %s: lease lost (cancelled or taken over)", active.job.id)
                active.interrupt("lost")
                return

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        _killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.grace)
        except TimeoutError:
            _killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def _progress(self, job: Job, message: dict) -> None:
        if self.on_progress is not None:
            await call_safely(
                self.on_progress,
                job,
                str(message.get("phase", "")),
                int(message.get("done") or 0),
                int(message.get("total") or 0),
            )

    async def _notify(self, job: Job) -> None:
        if self.on_finished is not None:
            await call_safely(self.on_finished, job)
