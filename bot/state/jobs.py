"""Jobs and their durable stores: what every store does (``JobStore``, ``DeliveryLog``)
and the embedded default, one SQLite file (WAL) used off the event loop.

Every method of ``SQLiteJobStore`` and ``SQLiteDeliveryLog`` is a coroutine that runs its
SQL on the store's own single thread, so the event loop never blocks on the disk and the
connection is never shared between threads. ``bot.state.gcsstate`` keeps the same state in a
private GCS bucket shared by several bot instances.

Leases: a store belongs to one bot process (its ``owner`` id). Claiming a job, or
concluding it, leases it to that owner for ``lease`` seconds: the claimer runs it (and
renews the lease), the concluder reports it to GitHub and then marks it ``notified``. A
job whose lease ran out while it was running or unreported was left by a process that
died; ``recover`` and ``claim_report`` hand it to another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

Kind = Literal["pr", "baseline", "drift"]
State = Literal["queued", "running", "completed", "cancelled"]
Conclusion = Literal["success", "failure", "neutral", "cancelled", "timed_out", "error"]

UNFINISHED: tuple[State, ...] = ("queued", "running")
MAX_ATTEMPTS = 3
LEASE = 60.0  # seconds a claim or a conclusion is held without renewal
MERGE_PENDING = "merge:"  # the execution of a job whose merge is being started

T = TypeVar("T")


@dataclass
class Job:
    """One run of the runner for a repository at a head SHA, and where it stands.

    ``attempts`` counts how often the job was started (claimed); ``execution`` is the
    Cloud Run execution running it, if any; ``owner`` and ``lease`` (an expiry time) say
    which bot process holds it; ``notified`` that its end has been reported to GitHub.
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
    owner: str | None = None
    lease: float | None = None
    notified: bool = False

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


class JobStore(Protocol):
    """The durable queue and history of jobs, shared by the bot's instances when
    ``shared``. Every update is atomic: of two instances claiming, concluding or
    cancelling one job, one wins and the other is told (None)."""

    owner: str
    lease: float
    shared: bool

    async def add(self, job: Job) -> Job:
        """Store a new queued job, or return the unfinished job with the same key."""

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, if any."""

    async def claim(self, job_id: str) -> Job | None:
        """Queued → running (attempts + 1), leased to this owner; None if not queued."""

    async def renew(self, job_id: str) -> Job | None:
        """Extend this owner's lease of a job it runs, or reports; None when it is no
        longer ours."""

    async def finish(
        self,
        job_id: str,
        conclusion: Conclusion,
        result_path: str | None = None,
        error: str | None = None,
        published_path: str | None = None,
    ) -> Job | None:
        """Conclude an unfinished job (state "cancelled" for conclusion "cancelled", else
        "completed"), leased to this owner to report; None when it had ended already."""

    async def cancel(
        self, repository: str, pr: int | None = None, except_sha: str | None = None
    ) -> list[Job]:
        """Cancel the unfinished jobs of a repository (of one PR when ``pr`` is given),
        except those at ``except_sha``; return those this call cancelled. Stopping a
        running process is the dispatcher's business: pass each to ``Dispatcher.cancel``."""

    async def latest(self, repository: str, pr: int | None = None) -> Job | None:
        """The newest job of the repository's PR ``pr`` (None: of no PR)."""

    async def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first."""

    async def unreported(self) -> list[Job]:
        """Finished jobs not yet ``notified``, oldest first."""

    async def recover(self, stale_before: float, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
        """Jobs left running by a process that died (no Cloud Run execution, lease expired
        before ``stale_before``): back to the queue, or concluded "error" (leased to this
        owner to report) once started ``max_attempts`` times. Returns the concluded."""

    async def requeue(self, job_id: str) -> Job | None:
        """Put this owner's running job back in the queue without counting the attempt
        (a graceful stop of the dispatcher)."""

    async def claim_report(self, job_id: str) -> Job | None:
        """Lease a finished, unreported job whose lease has run out to this owner."""

    async def mark_notified(self, job_id: str) -> Job | None:
        """Record that the job's end was reported to GitHub."""

    async def set_check_run(self, job_id: str, check_run_id: int) -> Job | None:
        """Record the job's check run."""

    async def set_execution(self, job_id: str, execution: str) -> Job | None:
        """Record the Cloud Run execution running the job (its lease is then Cloud Run's)."""

    async def claim_merge(self, job_id: str, shards: str) -> Job | None:
        """Take the start of the merge of a job's shards, leased to this owner (execution
        ``MERGE_PENDING``): if its execution is still ``shards``, or is a pending merge
        whose starter's lease ran out (``shards`` then ``MERGE_PENDING``); else None."""

    async def first_of_day(self, repository: str, kind: Kind, day: str) -> bool:
        """Record a scheduled ``kind`` run of ``repository`` on ``day`` (e.g. 2026-11-30);
        True only for the first of that repository, kind and day."""

    async def forget_day(self, repository: str, kind: Kind, day: str) -> None:
        """Undo ``first_of_day`` for a run that could not be started, so a later call may."""

    async def close(self) -> None:
        """Release the store's connections and threads."""


class DeliveryLog(Protocol):
    """Webhook deliveries: taken while their work is being accepted, then done."""

    async def begin(self, delivery_id: str) -> bool:
        """Take the delivery; False when it is done, or taken by someone whose lease
        has not run out (a redelivery racing the first)."""

    async def done(self, delivery_id: str) -> None:
        """Its work was accepted durably: every later delivery of it is a duplicate."""

    async def release(self, delivery_id: str) -> None:
        """Its work failed: a redelivery may try again."""

    async def close(self) -> None:
        """Release the log's connections and threads."""


def new_owner() -> str:
    """An id for this bot process, as the owner of the leases it takes."""
    return uuid.uuid4().hex


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
# Columns added since the first bot: a job's (new ``Job`` fields) and a delivery's lease
# (NULL, in a row of an older bot: done).
DELIVERY_COLUMNS = ("until",)


def _add_new_fields(db: sqlite3.Connection) -> None:
    """Give a database made by an older bot the columns of fields added since (each
    nullable or defaulted, so the old rows read as before: an old finished job counts as
    notified, an old delivery as done)."""
    for table, names in (("jobs", FIELDS), ("deliveries", DELIVERY_COLUMNS)):
        existing = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        for name in names:
            if name not in existing:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name}")


def _key_text(job: Job) -> str:
    return "\x1f".join(job.key)


def _job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in FIELDS}
    values["notified"] = values["notified"] is None or bool(values["notified"])
    return Job(**values)


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
            # Switching a new file to WAL may answer "database is locked" at once, without
            # waiting the timeout, while another connection sets it up: one at a time.
            with open(self.path.with_name(self.path.name + ".setup"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                _add_new_fields(db)
            # Commits survive the bot's process dying (what the store is for) without an
            # fsync each: only a crash of the machine itself may lose the last ones.
            db.execute("PRAGMA synchronous=NORMAL")
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


class SQLiteJobStore(_Database):
    """``JobStore`` in one SQLite file, for one bot process (not ``shared``)."""

    shared = False

    def __init__(self, path: str | Path, owner: str | None = None, lease: float = LEASE) -> None:
        super().__init__(path)
        self.owner = owner or new_owner()
        self.lease = lease

    async def add(self, job: Job) -> Job:
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
        row = await self._run(
            lambda db: db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return None if row is None else _job(row)

    async def claim(self, job_id: str) -> Job | None:
        return await self._transaction(
            lambda db: _update(
                db,
                job_id,
                "state = 'queued'",
                state="running",
                attempts=_Raw("attempts + 1"),
                owner=self.owner,
                lease=time.time() + self.lease,
            )
        )

    async def renew(self, job_id: str) -> Job | None:
        return await self._transaction(
            lambda db: _update(
                db,
                job_id,
                "owner = :me AND (state = 'running' OR notified = 0)",
                lease=time.time() + self.lease,
                me=_Param(self.owner),
            )
        )

    async def finish(
        self,
        job_id: str,
        conclusion: Conclusion,
        result_path: str | None = None,
        error: str | None = None,
        published_path: str | None = None,
    ) -> Job | None:
        return await self._transaction(
            lambda db: _update(
                db,
                job_id,
                "state IN ('queued', 'running')",
                state="cancelled" if conclusion == "cancelled" else "completed",
                conclusion=conclusion,
                result_path=result_path,
                published_path=published_path,
                error=error,
                owner=self.owner,
                lease=time.time() + self.lease,
                notified=False,
            )
        )

    async def cancel(
        self, repository: str, pr: int | None = None, except_sha: str | None = None
    ) -> list[Job]:
        where = "repository = :repository AND state IN ('queued', 'running')"
        if pr is not None:
            where += " AND pr = :pr"
        if except_sha is not None:
            where += " AND head_sha != :sha"
        now = time.time()
        params = {"repository": repository, "pr": pr, "sha": except_sha, "now": now}
        params |= {"owner": self.owner, "lease": now + self.lease}
        rows = await self._transaction(
            lambda db: db.execute(
                "UPDATE jobs SET state = 'cancelled', conclusion = 'cancelled', updated = :now, "
                f"owner = :owner, lease = :lease, notified = 0 WHERE {where} RETURNING *",
                params,
            ).fetchall()
        )
        return [_job(row) for row in rows]

    async def latest(self, repository: str, pr: int | None = None) -> Job | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT * FROM jobs WHERE repository = ? AND pr IS ? "
                "ORDER BY created DESC, rowid DESC LIMIT 1",
                (repository, pr),
            ).fetchone()
        )
        return None if row is None else _job(row)

    async def unfinished(self) -> list[Job]:
        return await self._select("state IN ('queued', 'running')")

    async def unreported(self) -> list[Job]:
        return await self._select("state NOT IN ('queued', 'running') AND notified = 0")

    async def _select(self, where: str) -> list[Job]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY created, rowid"
            ).fetchall()
        )
        return [_job(row) for row in rows]

    async def recover(self, stale_before: float, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
        def recover(db: sqlite3.Connection) -> list[Job]:
            now = time.time()
            left = "state = 'running' AND execution IS NULL AND (lease IS NULL OR lease < :stale)"
            params = {
                "error": f"interrupted {max_attempts} times (the bot restarted mid-run)",
                "now": now,
                "max": max_attempts,
                "stale": stale_before,
                "owner": self.owner,
                "lease": now + self.lease,
            }
            given_up = db.execute(
                "UPDATE jobs SET state = 'completed', conclusion = 'error', error = :error, "
                "updated = :now, owner = :owner, lease = :lease, notified = 0 "
                f"WHERE {left} AND attempts >= :max RETURNING *",
                params,
            ).fetchall()
            db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease = NULL, updated = :now "
                f"WHERE {left}",
                params,
            )
            return [_job(row) for row in given_up]

        return await self._transaction(recover)

    async def requeue(self, job_id: str) -> Job | None:
        return await self._transaction(
            lambda db: _update(
                db,
                job_id,
                "state = 'running' AND owner = :me",
                state="queued",
                attempts=_Raw("max(attempts - 1, 0)"),
                owner=None,
                lease=None,
                me=_Param(self.owner),
            )
        )

    async def claim_report(self, job_id: str) -> Job | None:
        now = time.time()
        return await self._transaction(
            lambda db: _update(
                db,
                job_id,
                "state NOT IN ('queued', 'running') AND notified = 0 "
                "AND (lease IS NULL OR lease < :now)",
                owner=self.owner,
                lease=now + self.lease,
                now=_Param(now),
            )
        )

    async def mark_notified(self, job_id: str) -> Job | None:
        return await self._transaction(lambda db: _update(db, job_id, "1", notified=True))

    async def first_of_day(self, repository: str, kind: Kind, day: str) -> bool:
        def first(db: sqlite3.Connection) -> bool:
            inserted = db.execute(
                "INSERT OR IGNORE INTO schedules (repository, kind, day, seen) VALUES (?, ?, ?, ?)",
                (repository, kind, day, time.time()),
            ).rowcount
            return inserted == 1

        return await self._transaction(first)

    async def forget_day(self, repository: str, kind: Kind, day: str) -> None:
        await self._transaction(
            lambda db: db.execute(
                "DELETE FROM schedules WHERE repository = ? AND kind = ? AND day = ?",
                (repository, kind, day),
            )
        )

    async def set_check_run(self, job_id: str, check_run_id: int) -> Job | None:
        return await self._transaction(
            lambda db: _update(db, job_id, "1", check_run_id=check_run_id)
        )

    async def set_execution(self, job_id: str, execution: str) -> Job | None:
        return await self._transaction(
            lambda db: _update(db, job_id, "1", execution=execution, lease=None)
        )

    async def claim_merge(self, job_id: str, shards: str) -> Job | None:
        now = time.time()
        return await self._transaction(
            lambda db: _update(
                db,
                job_id,
                "state = 'running' AND ((execution = :shards AND :shards != :pending) "
                "OR (execution = :pending AND lease < :now))",
                execution=MERGE_PENDING,
                owner=self.owner,
                lease=now + self.lease,
                shards=_Param(shards),
                pending=_Param(MERGE_PENDING),
                now=_Param(now),
            )
        )


@dataclass(frozen=True)
class _Raw:
    """An SQL expression assigned as it is (``attempts + 1``)."""

    sql: str


@dataclass(frozen=True)
class _Param:
    """A parameter of the ``where`` clause, not a column to set."""

    value: object


def _update(db: sqlite3.Connection, job_id: str, where: str, **values) -> Job | None:
    params = {name: value.value for name, value in values.items() if isinstance(value, _Param)}
    columns = {name: value for name, value in values.items() if not isinstance(value, _Param)}
    columns["updated"] = time.time()
    assignments = ", ".join(
        f"{name} = {value.sql}" if isinstance(value, _Raw) else f"{name} = :{name}"
        for name, value in columns.items()
    )
    params |= {name: value for name, value in columns.items() if not isinstance(value, _Raw)}
    row = db.execute(
        f"UPDATE jobs SET {assignments} WHERE id = :id AND {where} RETURNING *",
        {**params, "id": job_id},
    ).fetchone()
    return None if row is None else _job(row)


class SQLiteDeliveryLog(_Database):
    """``DeliveryLog`` in SQLite, done deliveries kept for ``retention`` seconds and a
    taken one held for ``lease`` seconds."""

    def __init__(
        self, path: str | Path, retention: float = 14 * 24 * 3600, lease: float = LEASE
    ) -> None:
        super().__init__(path)
        self.retention = retention
        self.lease = lease

    async def begin(self, delivery_id: str) -> bool:
        def begin(db: sqlite3.Connection) -> bool:
            now = time.time()
            db.execute("DELETE FROM deliveries WHERE seen < ?", (now - self.retention,))
            taken = db.execute(
                "INSERT INTO deliveries (id, seen, until) VALUES (:id, :now, :until) "
                "ON CONFLICT (id) DO UPDATE SET seen = :now, until = :until "
                "WHERE until IS NOT NULL AND until < :now",
                {"id": delivery_id, "now": now, "until": now + self.lease},
            ).rowcount
            return taken == 1

        return await self._transaction(begin)

    async def done(self, delivery_id: str) -> None:
        await self._transaction(
            lambda db: db.execute(
                "UPDATE deliveries SET until = NULL, seen = ? WHERE id = ?",
                (time.time(), delivery_id),
            )
        )

    async def release(self, delivery_id: str) -> None:
        await self._transaction(
            lambda db: db.execute(
                "DELETE FROM deliveries WHERE id = ? AND until IS NOT NULL", (delivery_id,)
            )
        )
