"""The production dispatcher: one Cloud Run Jobs execution per job, started with that
job's runner arguments and environment as per-execution overrides.

Needs ``run.jobs.runWithOverrides`` on the Cloud Run job, ``run.executions.get`` to
watch executions and ``run.executions.cancel``. The Google client library is imported
only when a client is first needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import logs
from bot.dispatch.local import OnFinished, OnProgress, call_safely
from bot.state.jobs import MERGE_PENDING, Job, JobStore

log = logging.getLogger(__name__)

JOB_ID_VARIABLE = "SCARLET_REGRESSION_JOB_ID"
MERGING = MERGE_PENDING  # marks a job's execution as the merge of its shards
DEBLENDING = "deblending on Cloud Run (tasks done)"
MERGING_PHASE = "merging the shards on Cloud Run"


@dataclass(frozen=True)
class Execution:
    """What Cloud Run says of an execution: its tasks, and whether it has ended."""

    tasks: int
    succeeded: int
    failed: int
    completed: bool
    reasons: str = ""

    @property
    def outcome(self) -> tuple[str, str | None]:
        """The job's conclusion once ended ("success" when every task succeeded, else
        "error"), and why it failed."""
        if self.succeeded >= max(self.tasks, 1) and not self.failed:
            return "success", None
        return "error", self.reasons or f"{self.failed} task(s) failed"


class CloudRunDispatcher:
    """Starts one execution of the Cloud Run job ``job_name``
    (``projects/P/locations/L/jobs/J``) per job, without waiting for it.

    ``args(job, out)`` are the container's arguments (the image's entrypoint being
    ``python -m runner``), with ``out`` a directory inside the container; ``env`` is
    added to the container's environment, with ``SCARLET_REGRESSION_JOB_ID`` set to the
    job's id. The execution's name is recorded on the job; every ``poll_interval``
    seconds the running jobs' executions are looked at, and a finished one concludes its
    job ("success" when every task succeeded: the runner has published the result to
    the store, where the bot reads the verdict; "error" otherwise) and is passed to
    ``on_finished``, as are jobs that could not be started. With ``task_count`` > 1 each
    task deblends a shard (the runner reads ``CLOUD_RUN_TASK_INDEX``/``COUNT``); when all
    succeeded, one more execution runs ``merge_args`` (``runner merge`` from the store),
    and its end concludes the job. Cloud Run retries failed tasks (the job's
    ``maxRetries``); a shard that still fails fails the execution and so the job, with
    Cloud Run's reason. While an execution runs, ``on_progress`` hears its phase and
    its tasks done of all (Cloud Run's counts).
    """

    def __init__(
        self,
        store: JobStore,
        job_name: str,
        args: Callable[[Job, Path], Sequence[str]],
        *,
        out: Path = Path("/tmp/scarlet-regression/out"),
        env: Mapping[str, str] | None = None,
        container: str = "",
        task_count: int = 1,
        timeout: float | None = None,
        jobs_client: Any = None,
        executions_client: Any = None,
        on_finished: OnFinished | None = None,
        on_progress: OnProgress | None = None,
        poll_interval: float = 30.0,
        merge_args: Callable[[Job, Path], Sequence[str]] | None = None,
    ) -> None:
        self.store = store
        self.job_name = job_name
        self.args = args
        self.out = out
        self.env = dict(env or {})
        self.container = container
        self.task_count = task_count
        self.timeout = timeout
        self.on_finished = on_finished
        self.on_progress = on_progress
        self._jobs = jobs_client
        self._executions = executions_client
        self.poll_interval = poll_interval
        self.merge_args = merge_args
        self._watcher: asyncio.Task | None = None
        if task_count > 1 and merge_args is None:
            raise ValueError("sharding over several tasks needs merge_args")

    async def start(self) -> None:
        """Start the jobs a previous process stored but never dispatched, and watch the
        executions of running ones (also those started before a restart)."""
        await self.resume()
        self._watcher = asyncio.create_task(self._watch())

    async def resume(self) -> list[Job]:
        """``Dispatcher.resume``: a job claimed by a process that died before Cloud Run
        named its execution (lease run out) is started again; queued jobs are started.
        The executions themselves are Cloud Run's, looked at by ``check``."""
        given_up = await self.store.recover(time.time())
        for job in given_up:
            await self._notify(job)
        for job in await self.store.unfinished():
            if job.state == "queued":
                await self.submit(job)
        return given_up

    async def stop(self) -> None:
        """Stop watching: executions go on without the bot and are watched after a restart."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def check(self) -> list[Job]:
        """Conclude the running jobs whose executions have finished; return them."""
        finished = []
        for job in await self.store.unfinished():
            if job.state != "running" or not job.execution:
                continue
            with logs.context(job=job.id, repository=job.repository, pr=job.pr):
                done = await self._check(job)
            if done is not None:
                finished.append(done)
        return finished

    async def _check(self, job: Job) -> Job | None:
        """Look at the job's execution: show its progress, start the merge of its shards,
        or conclude it (returning the job, when this call concluded it)."""
        if job.execution == MERGE_PENDING:  # being started, or left by a starter that died
            await self._start_merge(job)
            return None
        try:
            execution = await asyncio.to_thread(self._execution, job.execution)
        except Exception:
            log.exception("job %s: could not look at %s", job.id, job.execution)
            return None
        if not execution.completed:
            if self.on_progress is not None:
                merging = _merging(job)
                phase = MERGING_PHASE if merging else DEBLENDING
                done, total = (0, 0) if merging else (execution.succeeded, execution.tasks)
                await call_safely(self.on_progress, job, phase, done, total)
            return None
        conclusion, error = execution.outcome
        if conclusion == "success" and self._tasks(job) > 1 and not _merging(job):
            await self._start_merge(job)
            return None
        done = await self.store.finish(job.id, conclusion, error=error)
        if done is not None:  # None: another instance concluded it first
            await self._notify(done)
        return done

    async def _start_merge(self, job: Job) -> None:
        """All shards succeeded: start one task that merges them and publishes the run,
        once (the instance that claims the merge starts it)."""
        if await self.store.claim_merge(job.id, job.execution) is None:
            return
        try:
            args = list(self.merge_args(job, self.out))
            execution = await asyncio.to_thread(self._run_job, job, args, 1)
        except Exception as error:
            log.exception("job %s: Cloud Run did not start the merge", job.id)
            done = await self.store.finish(job.id, "error", error=f"Cloud Run merge: {error}")
            if done is not None:
                await self._notify(done)
            return
        await self.store.set_execution(job.id, MERGING + execution)

    async def _watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.poll_interval)

    async def submit(self, job: Job) -> Job:
        """Store the job (idempotent on its key) and start its execution; a job already
        running or finished is returned as it is."""
        job = await self.store.add(job)
        claimed = await self.store.claim(job.id)
        if claimed is None:
            return job
        try:
            args = list(self.args(claimed, self.out))
            execution = await asyncio.to_thread(self._run_job, claimed, args, self._tasks(claimed))
        except Exception as error:
            log.exception("job %s: Cloud Run did not start an execution", job.id)
            done = await self.store.finish(job.id, "error", error=f"Cloud Run: {error}")
            if done is not None:
                await self._notify(done)
            return done or job
        return await self.store.set_execution(job.id, execution)

    def _tasks(self, job: Job) -> int:
        """Tasks of the job's execution: ``task_count``, but one for a drift run (it
        deblends with two environments of its own and is not sharded)."""
        return 1 if job.kind == "drift" else self.task_count

    async def cancel(self, job: Job) -> None:
        """Conclude the job "cancelled" (unless it has finished) and cancel its execution."""
        stored = await self.store.finish(job.id, "cancelled") or await self.store.get(job.id)
        if stored is None or stored.conclusion != "cancelled" or not stored.execution:
            return
        try:
            await asyncio.to_thread(self._cancel_execution, stored.execution)
        except Exception:
            log.exception("job %s: could not cancel %s", job.id, stored.execution)

    def _run_job(self, job: Job, args: list[str], task_count: int) -> str:
        from google.cloud import run_v2

        overrides = run_v2.RunJobRequest.Overrides
        env = {**self.env, JOB_ID_VARIABLE: job.id}
        request = run_v2.RunJobRequest(
            name=self.job_name,
            overrides=overrides(
                container_overrides=[
                    overrides.ContainerOverride(
                        name=self.container,
                        args=args,
                        env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()],
                    )
                ],
                task_count=task_count,
                **({"timeout": {"seconds": int(self.timeout)}} if self.timeout else {}),
            ),
        )
        if self._jobs is None:
            self._jobs = run_v2.JobsClient()
        metadata = self._jobs.run_job(request=request).metadata
        if metadata is None or not metadata.name:
            raise RuntimeError("the run operation names no execution")
        return metadata.name

    def _execution(self, name: str) -> Execution:
        """The execution as Cloud Run reports it."""
        from google.cloud import run_v2

        if self._executions is None:
            self._executions = run_v2.ExecutionsClient()
        request = run_v2.GetExecutionRequest(name=name.removeprefix(MERGING))
        execution = self._executions.get_execution(request=request)
        return Execution(
            tasks=execution.task_count,
            succeeded=execution.succeeded_count,
            failed=execution.failed_count,
            completed=bool(execution.completion_time),
            reasons="; ".join(c.message for c in execution.conditions if c.message),
        )

    def _cancel_execution(self, name: str) -> None:
        from google.cloud import run_v2

        if self._executions is None:
            self._executions = run_v2.ExecutionsClient()
        request = run_v2.CancelExecutionRequest(name=name.removeprefix(MERGING))
        self._executions.cancel_execution(request=request)

    async def _notify(self, job: Job) -> None:
        if self.on_finished is not None:
            await call_safely(self.on_finished, job)


def _merging(job: Job) -> bool:
    return bool(job.execution and job.execution.startswith(MERGING))
