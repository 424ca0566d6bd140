"""The bot's state in a private GCS bucket, shared by every instance of the bot.

Objects under the bucket's prefix (each a small JSON document):

- ``jobs/<id>.json``: a job. Every change is a read and a write under a generation
  precondition (``if_generation_match``), started again on a 412, so two instances
  claiming, concluding or cancelling one job never both win.
- ``active/<sha256 of the key>``: the id of the unfinished job of a key, made
  create-only (``if_generation_match=0``): of two instances adding the same work, one
  makes it and the other gets that job. Deleted when the job ends.
- ``open/<id>``: a job not yet reported to GitHub (unfinished or unreported), listed by
  the reconciler. Deleted once the job is ``notified``.
- ``latest/<owner>/<name>/<pr or "commit">``: the id of the newest job of a PR.
- ``deliveries/<id>``: a webhook delivery, taken create-only (``{"until": t}``, a
  lease) and then done (``{}``); a bucket lifecycle rule deletes them after 14 days.
- ``schedules/<kind>/<owner>/<name>/<day>``: a scheduled run's day, create-only.

Calls run on a small thread pool with the client's retry: create-only writes and writes
under a generation precondition are safe to repeat, so they are retried like reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bot.state.jobs import LEASE, MAX_ATTEMPTS, MERGE_PENDING, Conclusion, Job, Kind, new_owner

T = TypeVar("T")
DELIVERY_DEADLINE = 5.0  # seconds the webhook's test-and-set may take, retries included
FIELDS = {f.name for f in dataclasses.fields(Job)}


class Bucket:
    """Create-only, conditional and plain reads and writes of JSON objects under a prefix;
    each call retried for ``deadline`` seconds (GCS's default 120), each request given
    ``timeout`` seconds."""

    def __init__(
        self,
        name: str,
        prefix: str = "",
        client: Any = None,
        deadline: float | None = None,
        timeout: float = 60.0,
    ):
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.name = name
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or storage.Client()
        self.retry = DEFAULT_RETRY if deadline is None else DEFAULT_RETRY.with_timeout(deadline)
        self.timeout = timeout
        self._bucket = self.client.bucket(name)
        self._executor = ThreadPoolExecutor(8, thread_name_prefix=f"gcs-state:{name}")

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a blocking client call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def read(self, name: str) -> tuple[dict, int] | None:
        """The object's JSON and generation, or None when it does not exist."""
        from google.api_core.exceptions import NotFound

        blob = self._bucket.blob(self.prefix + name)
        try:
            data = blob.download_as_bytes(retry=self.retry, timeout=self.timeout)
        except NotFound:
            return None
        return json.loads(data), int(blob.generation)

    def write(self, name: str, data: dict, generation: int | None = None) -> bool:
        """Write the object: only if absent (``generation`` 0), only over that generation,
        or unconditionally (None); False when the precondition failed."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(self.prefix + name)
        try:
            blob.upload_from_string(
                json.dumps(data),
                content_type="application/json",
                if_generation_match=generation,
                retry=self.retry,
                timeout=self.timeout,
            )
        except PreconditionFailed:
            return False
        return True

    def create(self, name: str, data: dict) -> bool:
        """Write the object only if absent; True when it now holds ``data`` (which names its
        writer uniquely), also when a retried attempt found its own earlier write."""
        if self.write(name, data, generation=0):
            return True
        found = self.read(name)
        return found is not None and found[0] == data

    def delete(self, name: str, generation: int | None = None) -> bool:
        """Delete the object (only that generation, when given); False if it was not there
        (or not at that generation)."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._bucket.blob(self.prefix + name).delete(
                if_generation_match=generation, retry=self.retry, timeout=self.timeout
            )
        except (NotFound, PreconditionFailed):
            return False
        return True

    def names(self, folder: str) -> list[str]:
        """The names of the objects in ``folder`` (after it)."""
        start = self.prefix + folder
        blobs = self.client.list_blobs(
            self.name, prefix=start, retry=self.retry, timeout=self.timeout
        )
        return [blob.name[len(start) :] for blob in blobs]

    def close(self) -> None:
        """Stop the thread pool."""
        self._executor.shutdown()


def _job(data: dict) -> Job:
    return Job(**{name: value for name, value in data.items() if name in FIELDS})


def _key_name(job: Job) -> str:
    return "active/" + hashlib.sha256("\x1f".join(job.key).encode()).hexdigest()


def _latest_name(repository: str, pr: int | None) -> str:
    return f"latest/{repository}/{'commit' if pr is None else pr}"


class GCSJobStore:
    """``JobStore`` in a private bucket (``shared``: every bot instance may use it)."""

    shared = True

    def __init__(self, bucket: Bucket, owner: str | None = None, lease: float = LEASE) -> None:
        self.bucket = bucket
        self.owner = owner or new_owner()
        self.lease = lease

    async def add(self, job: Job) -> Job:
        return await self.bucket.call(lambda: self._add(job))

    def _add(self, job: Job) -> Job:
        new = dataclasses.replace(job, state="queued", updated=time.time())
        self.bucket.create(f"jobs/{new.id}.json", dataclasses.asdict(new))
        self.bucket.create(f"open/{new.id}", {})
        while True:
            if self.bucket.create(_key_name(new), {"job": new.id}):
                self.bucket.write(_latest_name(new.repository, new.pr), {"job": new.id})
                return new
            found = self.bucket.read(_key_name(new))
            if found is None:
                continue  # its job ended meanwhile: try again
            (marker, generation) = found
            other = self._get(marker["job"])
            if other is not None and not other.finished:
                self.bucket.delete(f"open/{new.id}")
                self.bucket.delete(f"jobs/{new.id}.json")
                return other
            self.bucket.delete(_key_name(new), generation)  # left by an ended job

    async def get(self, job_id: str) -> Job | None:
        return await self.bucket.call(lambda: self._get(job_id))

    def _get(self, job_id: str) -> Job | None:
        found = self.bucket.read(f"jobs/{job_id}.json")
        return None if found is None else _job(found[0])

    def _change(self, job_id: str, change: Callable[[Job], Job | None]) -> Job | None:
        """Apply ``change`` to the stored job under its generation (again after a 412);
        None when there is no such job or ``change`` declines."""
        while True:
            found = self.bucket.read(f"jobs/{job_id}.json")
            if found is None:
                return None
            data, generation = found
            new = change(_job(data))
            if new is None:
                return None
            new = dataclasses.replace(new, updated=time.time())
            if self.bucket.write(f"jobs/{job_id}.json", dataclasses.asdict(new), generation):
                return new

    async def _update(self, job_id: str, change: Callable[[Job], Job | None]) -> Job | None:
        return await self.bucket.call(lambda: self._change(job_id, change))

    def _leased(self, job: Job, **changes: Any) -> Job:
        return dataclasses.replace(job, owner=self.owner, lease=time.time() + self.lease, **changes)

    async def claim(self, job_id: str) -> Job | None:
        def claim(job: Job) -> Job | None:
            if job.state != "queued":
                return None
            return self._leased(job, state="running", attempts=job.attempts + 1)

        return await self._update(job_id, claim)

    async def renew(self, job_id: str) -> Job | None:
        def renew(job: Job) -> Job | None:
            held = job.state == "running" or (job.finished and not job.notified)
            if not held or job.owner != self.owner:
                return None
            return self._leased(job)

        return await self._update(job_id, renew)

    def _conclude(self, job_id: str, conclusion: Conclusion, **fields: Any) -> Job | None:
        def conclude(job: Job) -> Job | None:
            if job.finished:
                return None
            state = "cancelled" if conclusion == "cancelled" else "completed"
            return self._leased(job, state=state, conclusion=conclusion, notified=False, **fields)

        done = self._change(job_id, conclude)
        if done is not None:
            self._release_key(done)
        return done

    def _release_key(self, job: Job) -> None:
        found = self.bucket.read(_key_name(job))
        if found is not None and found[0].get("job") == job.id:
            self.bucket.delete(_key_name(job), found[1])

    async def finish(
        self,
        job_id: str,
        conclusion: Conclusion,
        result_path: str | None = None,
        error: str | None = None,
        published_path: str | None = None,
    ) -> Job | None:
        fields = {"result_path": result_path, "error": error, "published_path": published_path}
        return await self.bucket.call(lambda: self._conclude(job_id, conclusion, **fields))

    async def cancel(
        self, repository: str, pr: int | None = None, except_sha: str | None = None
    ) -> list[Job]:
        cancelled = []
        for job in await self.unfinished():
            if job.repository != repository or (pr is not None and job.pr != pr):
                continue
            if except_sha is not None and job.head_sha == except_sha:
                continue
            done = await self.bucket.call(lambda job=job: self._conclude(job.id, "cancelled"))
            if done is not None:
                cancelled.append(done)
        return cancelled

    async def latest(self, repository: str, pr: int | None = None) -> Job | None:
        def latest() -> Job | None:
            found = self.bucket.read(_latest_name(repository, pr))
            return None if found is None else self._get(found[0]["job"])

        return await self.bucket.call(latest)

    async def _open(self) -> list[Job]:
        def open_jobs() -> list[Job]:
            jobs = [self._get(name) for name in self.bucket.names("open/")]
            return sorted((job for job in jobs if job is not None), key=lambda job: job.created)

        return await self.bucket.call(open_jobs)

    async def unfinished(self) -> list[Job]:
        return [job for job in await self._open() if not job.finished]

    async def unreported(self) -> list[Job]:
        return [job for job in await self._open() if job.finished and not job.notified]

    async def recover(self, stale_before: float, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
        given_up = []

        def recover(job: Job) -> Job | None:
            left = job.state == "running" and job.execution is None
            if not left or (job.lease is not None and job.lease >= stale_before):
                return None
            if job.attempts < max_attempts:
                return dataclasses.replace(job, state="queued", owner=None, lease=None)
            error = f"interrupted {max_attempts} times (the bot restarted mid-run)"
            return self._leased(
                job, state="completed", conclusion="error", error=error, notified=False
            )

        for job in await self.unfinished():
            changed = await self._update(job.id, recover)
            if changed is not None and changed.finished:
                await self.bucket.call(lambda changed=changed: self._release_key(changed))
                given_up.append(changed)
        return given_up

    async def requeue(self, job_id: str) -> Job | None:
        def requeue(job: Job) -> Job | None:
            if job.state != "running" or job.owner != self.owner:
                return None
            attempts = max(job.attempts - 1, 0)
            return dataclasses.replace(
                job, state="queued", attempts=attempts, owner=None, lease=None
            )

        return await self._update(job_id, requeue)

    async def claim_report(self, job_id: str) -> Job | None:
        def claim(job: Job) -> Job | None:
            if not job.finished or job.notified:
                return None
            if job.lease is not None and job.lease >= time.time():
                return None
            return self._leased(job)

        return await self._update(job_id, claim)

    async def mark_notified(self, job_id: str) -> Job | None:
        def notified() -> Job | None:
            job = self._change(job_id, lambda job: dataclasses.replace(job, notified=True))
            self.bucket.delete(f"open/{job_id}")
            return job

        return await self.bucket.call(notified)

    async def set_check_run(self, job_id: str, check_run_id: int) -> Job | None:
        return await self._update(
            job_id, lambda job: dataclasses.replace(job, check_run_id=check_run_id)
        )

    async def set_execution(self, job_id: str, execution: str) -> Job | None:
        return await self._update(
            job_id, lambda job: dataclasses.replace(job, execution=execution, lease=None)
        )

    async def claim_merge(self, job_id: str, shards: str) -> Job | None:
        def claim(job: Job) -> Job | None:
            if job.state != "running":
                return None
            fresh = job.execution == shards != MERGE_PENDING
            left = job.execution == MERGE_PENDING and (job.lease or 0) < time.time()
            if not (fresh or left):
                return None
            return self._leased(job, execution=MERGE_PENDING)

        return await self._update(job_id, claim)

    async def first_of_day(self, repository: str, kind: Kind, day: str) -> bool:
        name = f"schedules/{kind}/{repository}/{day}"
        mark = {"by": self.owner, "at": time.time()}
        return await self.bucket.call(lambda: self.bucket.create(name, mark))

    async def forget_day(self, repository: str, kind: Kind, day: str) -> None:
        name = f"schedules/{kind}/{repository}/{day}"
        await self.bucket.call(lambda: self.bucket.delete(name))

    async def close(self) -> None:
        """Stop the bucket's threads."""
        self.bucket.close()


class GCSDeliveryLog:
    """``DeliveryLog`` in the bucket: a delivery taken create-only, with a lease. Its
    bucket should give up within GitHub's 10 s webhook deadline (``DELIVERY_DEADLINE``):
    the webhook then answers 503, and GitHub's delivery can be redelivered."""

    def __init__(self, bucket: Bucket, lease: float = LEASE) -> None:
        self.bucket = bucket
        self.lease = lease

    async def begin(self, delivery_id: str) -> bool:
        def begin() -> bool:
            name = f"deliveries/{delivery_id}"
            while True:
                taken = {"until": time.time() + self.lease, "by": new_owner()}
                if self.bucket.create(name, taken):
                    return True
                found = self.bucket.read(name)
                if found is None:
                    continue  # released meanwhile
                data, generation = found
                if data.get("until") is None or data["until"] >= time.time():
                    return False
                return self.bucket.write(name, taken, generation)

        return await self.bucket.call(begin)

    async def done(self, delivery_id: str) -> None:
        await self.bucket.call(lambda: self.bucket.write(f"deliveries/{delivery_id}", {}))

    async def release(self, delivery_id: str) -> None:
        await self.bucket.call(lambda: self.bucket.delete(f"deliveries/{delivery_id}"))

    async def close(self) -> None:
        """Stop the bucket's threads."""
        self.bucket.close()
