"""The embedded dispatcher on the SQLite job store, with a stand-in runner
(a small script that prints progress lines, sleeps, fails or hangs as told)."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest

from bot.dispatch.local import EmbeddedDispatcher, runner_environment
from bot.state.gcsstate import Bucket, GCSJobStore
from bot.state.jobs import Job, JobStore, SQLiteJobStore
from runner.secretfiles import HIDE_VARIABLE

# argv: mode, out dir, scratch dir. Modes: ok (verdict in $VERDICT), fail, hang,
# once (hang the first time, then ok), slow (record start and end, then ok).
FAKE_RUNNER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from pathlib import Path

    mode, out, scratch = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def say(**message):
        print(json.dumps(message), flush=True)

    def hang():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (scratch / "pids").write_text(f"{os.getpid()} {child.pid}")
        say(phase="deblending", done=0, total=4)
        time.sleep(600)

    if mode == "fail":
        print("building base environment", file=sys.stderr)
        print("error: unknown revision deadbeef", file=sys.stderr)
        sys.exit(2)
    if mode == "hang" or (mode == "once" and not (scratch / "ran").exists()):
        (scratch / "ran").touch()
        hang()
    if mode == "slow":
        with open(scratch / "spans", "a") as spans:
            spans.write(f"{time.time()} ")
            time.sleep(0.5)
            spans.write(f"{time.time()}\\n")
    say(phase="resolving revisions", done=0, total=0)
    print("not json", flush=True)
    for done in range(3):
        say(phase="deblending", done=done + 1, total=3)
    (out / "result.json").write_text(
        json.dumps({"comparison": {"verdict": os.environ.get("VERDICT", "pass")}})
    )
    say(phase="finished", result=str(out / "result.json"), published=None)
    """
)


def make_job(mode: str = "ok", pr: int | None = 1, repository: str = "pmelchior/scarlet") -> Job:
    """A job whose head SHA tells the stand-in runner what to do."""
    return Job(
        repository=repository,
        installation_id=7,
        head_sha=mode,
        base="main",
        clone_url="https://github.com/pmelchior/scarlet.git",
        pr=pr,
    )


class Harness:
    """A store, a dispatcher on the stand-in runner and what its callbacks saw."""

    def __init__(self, tmp: Path, **options) -> None:
        self.tmp = tmp
        self.script = tmp / "fake_runner.py"
        self.script.write_text(FAKE_RUNNER)
        self.progress: list[tuple[str, str, int, int]] = []
        self.finished: dict[str, Job] = {}
        self.changed = asyncio.Condition()
        self.options = {"timeout": 30, "grace": 1, **options}

    def command(self, job: Job, out: Path) -> list[str]:
        return [sys.executable, str(self.script), job.head_sha, str(out), str(self.tmp)]

    async def open(self, store: JobStore | None = None) -> EmbeddedDispatcher:
        self.store = store or SQLiteJobStore(self.tmp / "jobs.sqlite")
        self.dispatcher = EmbeddedDispatcher(
            self.store,
            self.command,
            self.tmp / "work",
            env={**os.environ, **self.options.pop("env", {})},
            on_progress=self.on_progress,
            on_finished=self.on_finished,
            **self.options,
        )
        await self.dispatcher.start()
        return self.dispatcher

    async def close(self) -> None:
        await self.dispatcher.stop()
        await self.store.close()

    async def on_progress(self, job: Job, phase: str, done: int, total: int) -> None:
        self.progress.append((job.id, phase, done, total))
        async with self.changed:
            self.changed.notify_all()

    async def on_finished(self, job: Job) -> None:
        assert (await self.store.get(job.id)) == job  # the store has the conclusion first
        self.finished[job.id] = job
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate, timeout: float = 20) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    async def outcome(self, job: Job) -> Job:
        await self.until(lambda: job.id in self.finished)
        return self.finished[job.id]


@pytest.fixture
async def harness(tmp_path):
    harness = Harness(tmp_path)
    await harness.open()
    yield harness
    await harness.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie not yet reaped by its parent counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


async def all_gone(pids_file: Path, within: float = 5) -> bool:
    """Whether the stand-in runner and its child are gone (signals land asynchronously)."""
    pids = [int(pid) for pid in pids_file.read_text().split()]
    deadline = asyncio.get_running_loop().time() + within
    while not all(gone(pid) for pid in pids):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_success_forwards_progress_in_order_and_concludes_from_verdict(harness):
    job = await harness.dispatcher.submit(make_job("ok"))
    done = await harness.outcome(job)
    assert (done.state, done.conclusion, done.attempts, done.error) == (
        "completed",
        "success",
        1,
        None,
    )
    assert done.result_path == str(harness.tmp / "work" / job.id / "result.json")
    assert [p[1:] for p in harness.progress] == [
        ("resolving revisions", 0, 0),
        ("deblending", 1, 3),
        ("deblending", 2, 3),
        ("deblending", 3, 3),
    ]


async def test_verdict_fail_concludes_failure(tmp_path):
    harness = Harness(tmp_path, env={"VERDICT": "fail"})
    await harness.open()
    try:
        done = await harness.outcome(await harness.dispatcher.submit(make_job("ok")))
        assert (done.state, done.conclusion) == ("completed", "failure")
    finally:
        await harness.close()


async def test_failure_reports_what_the_exit_code_means_and_the_last_stderr_line(harness):
    done = await harness.outcome(await harness.dispatcher.submit(make_job("fail")))
    assert (done.state, done.conclusion) == ("completed", "error")
    assert done.error == "the runner could not run: unknown revision deadbeef"
    assert done.result_path is None


def test_the_runner_gets_no_secret_but_the_names_of_secret_files_to_hide(tmp_path, monkeypatch):
    key = tmp_path / "keys" / "app.pem"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY_FILE", str(key))
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "webhook secret")
    env = runner_environment()
    assert not [name for name in env if name.startswith("GITHUB_")]
    assert str(key) in env[HIDE_VARIABLE].split(os.pathsep)


async def test_timeout_kills_the_process_group(tmp_path):
    harness = Harness(tmp_path, timeout=1.5)
    await harness.open()
    try:
        done = await harness.outcome(await harness.dispatcher.submit(make_job("hang")))
        assert (done.state, done.conclusion) == ("completed", "timed_out")
        assert "timed out" in done.error
        assert await all_gone(tmp_path / "pids")
    finally:
        await harness.close()


async def test_cancel_running_and_queued(harness):
    running = await harness.dispatcher.submit(make_job("hang"))
    queued = await harness.dispatcher.submit(make_job("ok", pr=2))
    await harness.until(lambda: any(p[0] == running.id for p in harness.progress))
    assert (await harness.store.get(queued.id)).state == "queued"  # concurrency 1

    await harness.dispatcher.cancel(queued)
    await harness.dispatcher.cancel(running)
    assert await all_gone(harness.tmp / "pids")
    for job in (running, queued):
        stored = await harness.store.get(job.id)
        assert (stored.state, stored.conclusion, stored.attempts) == (
            "cancelled",
            "cancelled",
            int(job is running),
        )
    assert harness.finished == {}  # whoever cancels knows
    after = await harness.dispatcher.submit(make_job("ok", pr=3))
    assert (await harness.outcome(after)).conclusion == "success"  # the slot is free again
    assert not (harness.tmp / "work" / queued.id).exists()  # never ran


async def test_superseded_sha_cancelled_through_the_store(harness):
    old = await harness.dispatcher.submit(make_job("hang"))
    await harness.until(lambda: any(p[0] == old.id for p in harness.progress))
    new = make_job("ok")
    for job in await harness.store.cancel("pmelchior/scarlet", pr=1, except_sha=new.head_sha):
        await harness.dispatcher.cancel(job)
    new = await harness.dispatcher.submit(new)
    assert (await harness.outcome(new)).conclusion == "success"
    assert (await harness.store.get(old.id)).conclusion == "cancelled"
    assert old.id not in harness.finished
    assert await all_gone(harness.tmp / "pids")


async def test_only_submitted_jobs_run(harness):
    held = await harness.store.add(make_job("ok", pr=5))  # e.g. a fork awaiting approval
    job = await harness.dispatcher.submit(make_job("ok"))
    await harness.outcome(job)
    assert (await harness.store.get(held.id)).state == "queued"


async def test_concurrency_one_runs_jobs_one_after_the_other(harness):
    first = await harness.dispatcher.submit(make_job("slow", pr=1))
    second = await harness.dispatcher.submit(make_job("slow", pr=2))
    await harness.outcome(first)
    await harness.outcome(second)
    spans = [
        tuple(map(float, line.split())) for line in (harness.tmp / "spans").read_text().splitlines()
    ]
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0]


async def test_graceful_stop_keeps_the_job_and_a_new_dispatcher_completes_it(tmp_path):
    harness = Harness(tmp_path)
    await harness.open()
    job = await harness.dispatcher.submit(make_job("once"))
    await harness.until(lambda: harness.progress)
    await harness.close()
    assert await all_gone(tmp_path / "pids")
    assert harness.finished == {}

    again = Harness(tmp_path)
    await again.open()
    try:
        done = await again.outcome(job)
        assert (done.conclusion, done.attempts) == ("success", 1)
    finally:
        await again.close()


async def test_crash_mid_job_is_recovered_on_restart(tmp_path):
    crashed = SQLiteJobStore(tmp_path / "jobs.sqlite")
    job = await crashed.add(make_job("ok"))
    assert (await crashed.claim(job.id)).id == job.id  # a bot that died mid-run
    await crashed.close()

    harness = Harness(tmp_path)
    await harness.open()
    try:
        done = await harness.outcome(job)
        assert (done.conclusion, done.attempts) == ("success", 2)
    finally:
        await harness.close()


async def test_a_job_interrupted_three_times_concludes_error(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    job = await store.add(make_job("ok"))
    for attempt in (1, 2):
        assert (await store.claim(job.id)).attempts == attempt
        assert await store.recover(math.inf) == []
    assert (await store.claim(job.id)).attempts == 3
    await store.close()

    harness = Harness(tmp_path)
    await harness.open()
    try:
        done = await harness.outcome(job)  # reported by start()
        assert (done.state, done.conclusion, done.attempts) == ("completed", "error", 3)
        assert "interrupted 3 times" in done.error
    finally:
        await harness.close()


async def test_a_database_of_an_older_bot_gains_the_new_fields_and_keeps_its_jobs(tmp_path):
    import sqlite3

    from bot.state.jobs import FIELDS

    old = [name for name in FIELDS if name not in ("branch", "merged_at")]
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    db.execute(f"CREATE TABLE jobs ({', '.join(old)}, key TEXT NOT NULL, PRIMARY KEY (id))")
    row = {"repository": "o/r", "installation_id": 1, "head_sha": "a" * 40, "base": "main"}
    row |= {"clone_url": "https://x/o/r.git", "kind": "pr", "pr": 3, "id": "old-job"}
    row |= {"state": "queued", "created": 1.0, "updated": 1.0, "attempts": 0}
    columns = ", ".join([*row, "key"])
    db.execute(
        f"INSERT INTO jobs ({columns}) VALUES ({', '.join('?' * (len(row) + 1))})",
        [*row.values(), "o/r\x1f3\x1f" + "a" * 40 + "\x1fpr"],
    )
    db.commit()
    db.close()

    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    (kept,) = await store.unfinished()
    assert (kept.id, kept.branch, kept.merged_at) == ("old-job", None, None)
    new = await store.add(Job("o/r", 1, "b" * 40, "main", "https://x/o/r.git", branch="feature"))
    assert (await store.get(new.id)).branch == "feature"
    await store.close()


def shared_store(bucket, client, lease: float = 1.5) -> GCSJobStore:
    """A job store of another bot instance on the same bucket."""
    return GCSJobStore(Bucket(bucket.name, "state", client=client, deadline=5.0), lease=lease)


async def test_a_job_whose_instance_died_runs_on_another_once_its_lease_ran_out(
    tmp_path, gcs_bucket, gcs_client
):
    dead = shared_store(gcs_bucket, gcs_client)
    job = await dead.add(make_job("ok"))
    await dead.claim(job.id)  # ... and its instance dies: the lease is never renewed
    harness = Harness(tmp_path)
    await harness.open(shared_store(gcs_bucket, gcs_client))
    try:
        await asyncio.sleep(0.5)
        assert (await harness.store.get(job.id)).state == "running", "its lease holds"
        await asyncio.sleep(1.1)
        await harness.dispatcher.resume()  # what the reconciler does every minute
        done = await harness.outcome(job)
        assert (done.conclusion, done.attempts) == ("success", 2)
    finally:
        await harness.close()
        await dead.close()


async def test_a_job_cancelled_by_another_instance_stops_its_runner_here(
    tmp_path, gcs_bucket, gcs_client
):
    harness = Harness(tmp_path)
    await harness.open(shared_store(gcs_bucket, gcs_client))
    other = shared_store(gcs_bucket, gcs_client)
    try:
        job = await harness.dispatcher.submit(make_job("hang"))
        await harness.until(lambda: harness.progress)
        cancelled = await other.cancel(job.repository, pr=job.pr)  # the PR closed there
        assert [c.id for c in cancelled] == [job.id]
        assert await all_gone(tmp_path / "pids", within=5), "stopped once its lease was lost"
        assert (await harness.store.get(job.id)).conclusion == "cancelled"
        assert harness.finished == {}, "whoever cancels reports it"
    finally:
        await harness.close()
        await other.close()
