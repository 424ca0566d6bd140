"""Jobs and their durable store: one SQLite file (WAL), used off the event loop.

Every method of ``JobStore`` and ``DeliveryLog`` is a coroutine that runs its SQL on
the store's own single thread, so the event loop never blocks on the disk and the
connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

Kind = Literal["pr", "baseline", "drift"]
State = Literal["queued", "running", "completed", "cancelled"]
Conclusion = Literal["success", "failure", "neutral", "cancelled", "timed_out", "error"]

UNFINISHED: tuple[State, ...] = ("queued", "running")
MAX_ATTEMPTS = 3

T = TypeVar("T")


@dataclass
class Job:
    """One run of the runner for a repository at a head SHA, and where it stands.

    ``attempts`` counts how often the job was started (claimed); ``execution`` is the
    Cloud Run execution running it, if any.
    """

    repository: str
    installation_id: int
    head_sha: str
    base: str
    clone_url: str
    kind: Kind = "pr"
    pr: int | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    check_run_id: int | None = None
    state: State = "queued"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    attempts: int = 0
    conclusion: Conclusion | None = None
    result_path: str | None = None
    published_path: str | None = None
    error: str | None = None
    execution: str | None = None
    branch: str | None = None
    merged_at: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes two jobs the same work: (repository, pr or "", head SHA, kind)."""
        return (self.repository, "" if self.pr is None else str(self.pr), self.head_sha, self.kind)

    @property
    def finished(self) -> bool:
        """Whether the job has ended (completed or cancelled)."""
        return self.state not in UNFINISHED


FIELDS = [f.name for f in dataclasses.fields(Job)]
COLUMNS = ", ".join(FIELDS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    {", ".join(FIELDS)},
    key TEXT NOT NULL,
    PRIMARY KEY (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active_key ON jobs (key)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    repository TEXT NOT NULL, kind TEXT NOT NULL, day TEXT NOT NULL, seen REAL NOT NULL,
    PRIMARY KEY (repository, kind, day)
);
CREATE INDEX IF NOT EXISTS deliveries_seen ON deliveries (seen);
"""


def _add_new_fields(db: sqlite3.Connection) -> None:
    """Give a database made by an older bot the columns of fields added to ``Job`` since
    (each nullable or defaulted, so the old rows read as before)."""
    existing = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    for name in FIELDS:
        if name not in existing:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name}")


def _key_text(job: Job) -> str:
    return "\x1f".join(job.key)


def _job(row: sqlite3.Row) -> Job:
    return Job(**{name: row[name] for name in FIELDS})


class _Database:
    """One SQLite connection owned by one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite:{self.path.name}")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            _add_new_fields(db)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._connect()))

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                value = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return value

        return await self._run(run)

    async def close(self) -> None:
        """Close the connection and stop the thread."""

        def close(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(close)
        self._executor.shutdown()


class JobStore(_Database):
    """The durable queue and history of jobs."""

    async def add(self, job: Job) -> Job:
        """Store a new queued job, or return the unfinished job with the same key."""

        def add(db: sqlite3.Connection) -> Job:
            row = db.execute(
                "SELECT * FROM jobs WHERE key = ? AND state IN ('queued', 'running')",
                (_key_text(job),),
            ).fetchone()
            if row is not None:
                return _job(row)
            new = dataclasses.replace(job, state="queued", updated=time.time())
            values = [getattr(new, name) for name in FIELDS]
            db.execute(
                f"INSERT INTO jobs ({COLUMNS}, key) VALUES ({', '.join('?' * (len(FIELDS) + 1))})",
                (*values, _key_text(new)),
            )
            return new

        return await self._transaction(add)

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, if any."""
        row = await self._run(
            lambda db: db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return None if row is None else _job(row)

    async def claim(self, job_id: str) -> Job | None:
        """Move this job from queued to running (attempts + 1); None if it was not queued."""
        return await self._transaction(lambda db: _claim(db, job_id))

    async def claim_next(self) -> Job | None:
        """Move the oldest queued job to running (attempts + 1) and return it."""

        def claim(db: sqlite3.Connection) -> Job | None:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, rowid LIMIT 1"
            ).fetchone()
            return None if row is None else _claim(db, row["id"])

        return await self._transaction(claim)

    async def finish(
        self,
        job_id: str,
        conclusion: Conclusion,
        result_path: str | None = None,
        error: str | None = None,
        published_path: str | None = None,
    ) -> Job | None:
        """Conclude an unfinished job (state "cancelled" for conclusion "cancelled",
        else "completed") and return it; a job already finished is returned unchanged."""

        def finish(db: sqlite3.Connection) -> Job | None:
            job = _update(
                db,
                job_id,
                "state IN ('queued', 'running')",
                state="cancelled" if conclusion == "cancelled" else "completed",
                conclusion=conclusion,
                result_path=result_path,
                published_path=published_path,
                error=error,
            )
            if job is not None:
                return job
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self._transaction(finish)

    async def cancel(
        self, repository: str, pr: int | None = None, except_sha: str | None = None
    ) -> list[Job]:
        """Cancel the unfinished jobs of a repository (of one PR when ``pr`` is given),
        except those at ``except_sha``, and return them as cancelled. Stopping a running
        process is the dispatcher's business: pass each to ``Dispatcher.cancel``."""
        where = "repository = :repository AND state IN ('queued', 'running')"
        if pr is not None:
            where += " AND pr = :pr"
        if except_sha is not None:
            where += " AND head_sha != :sha"
        params = {"repository": repository, "pr": pr, "sha": except_sha, "now": time.time()}
        rows = await self._transaction(
            lambda db: db.execute(
                "UPDATE jobs SET state = 'cancelled', conclusion = 'cancelled', updated = :now "
                f"WHERE {where} RETURNING *",
                params,
            ).fetchall()
        )
        return [_job(row) for row in rows]

    async def latest(self, repository: str, pr: int | None = None) -> Job | None:
        """The newest job of the repository's PR ``pr`` (None: of no PR)."""
        row = await self._run(
            lambda db: db.execute(
                "SELECT * FROM jobs WHERE repository = ? AND pr IS ? "
                "ORDER BY created DESC, rowid DESC LIMIT 1",
                (repository, pr),
            ).fetchone()
        )
        return None if row is None else _job(row)

    async def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first."""
        rows = await self._run(
            lambda db: db.execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created, rowid"
            ).fetchall()
        )
        return [_job(row) for row in rows]

    async def recover(self, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
        """After a restart: put jobs left running back in the queue, and conclude "error"
        those already started ``max_attempts`` times. Returns the concluded ones."""

        def recover(db: sqlite3.Connection) -> list[Job]:
            now = time.time()
            given_up = db.execute(
                "UPDATE jobs SET state = 'completed', conclusion = 'error', error = :error, "
                "updated = :now WHERE state = 'running' AND attempts >= :max RETURNING *",
                {
                    "error": f"interrupted {max_attempts} times (the bot restarted mid-run)",
                    "now": now,
                    "max": max_attempts,
                },
            ).fetchall()
            db.execute(
                "UPDATE jobs SET state = 'queued', updated = ? WHERE state = 'running'", (now,)
            )
            return [_job(row) for row in given_up]

        return await self._transaction(recover)

    async def requeue(self, job_id: str) -> Job | None:
        """Put a running job back in the queue without counting the attempt (a graceful
        stop of the dispatcher)."""
        row = await self._transaction(
            lambda db: db.execute(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), updated = ? "
                "WHERE id = ? AND state = 'running' RETURNING *",
                (time.time(), job_id),
            ).fetchone()
        )
        return None if row is None else _job(row)

    async def first_of_day(self, repository: str, kind: Kind, day: str) -> bool:
        """Record a scheduled ``kind`` run of ``repository`` on ``day`` (e.g. 2026-11-30);
        True only for the first of that repository, kind and day."""

        def first(db: sqlite3.Connection) -> bool:
            inserted = db.execute(
                "INSERT OR IGNORE INTO schedules (repository, kind, day, seen) VALUES (?, ?, ?, ?)",
                (repository, kind, day, time.time()),
            ).rowcount
            return inserted == 1

        return await self._transaction(first)

    async def forget_day(self, repository: str, kind: Kind, day: str) -> None:
        """Undo ``first_of_day`` for a run that could not be started, so a later call may."""
        await self._transaction(
            lambda db: db.execute(
                "DELETE FROM schedules WHERE repository = ? AND kind = ? AND day = ?",
                (repository, kind, day),
            )
        )

    async def set_check_run(self, job_id: str, check_run_id: int) -> Job | None:
        """Record the job's check run."""
        return await self._transaction(
            lambda db: _update(db, job_id, "1", check_run_id=check_run_id)
        )

    async def set_execution(self, job_id: str, execution: str) -> Job | None:
        """Record the Cloud Run execution running the job."""
        return await self._transaction(lambda db: _update(db, job_id, "1", execution=execution))


def _update(db: sqlite3.Connection, job_id: str, where: str, **values) -> Job | None:
    values["updated"] = time.time()
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    row = db.execute(
        f"UPDATE jobs SET {assignments} WHERE id = :id AND {where} RETURNING *",
        {**values, "id": job_id},
    ).fetchone()
    return None if row is None else _job(row)


def _claim(db: sqlite3.Connection, job_id: str) -> Job | None:
    row = db.execute(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated = ? "
        "WHERE id = ? AND state = 'queued' RETURNING *",
        (time.time(), job_id),
    ).fetchone()
    return None if row is None else _job(row)


class DeliveryLog(_Database):
    """Webhook delivery ids already handled, kept for ``retention`` seconds."""

    def __init__(self, path: str | Path, retention: float = 14 * 24 * 3600) -> None:
        super().__init__(path)
        self.retention = retention

    async def seen(self, delivery_id: str) -> bool:
        """Record ``delivery_id``; True when it had been recorded before."""

        def seen(db: sqlite3.Connection) -> bool:
            now = time.time()
            db.execute("DELETE FROM deliveries WHERE seen < ?", (now - self.retention,))
            inserted = db.execute(
                "INSERT OR IGNORE INTO deliveries (id, seen) VALUES (?, ?)", (delivery_id, now)
            ).rowcount
            return inserted == 0

        return await self._transaction(seen)
