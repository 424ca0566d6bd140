"""The Cloud Run dispatcher against a local fake of the Run Admin API (REST)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from bot.dispatch.cloudrun import CloudRunDispatcher
from bot.state.jobs import Job, SQLiteJobStore

JOB_NAME = "projects/demo/locations/us-central1/jobs/runner"


class FakeRunAdmin(BaseHTTPRequestHandler):
    """Records POSTs; answers ``:run`` and ``:cancel`` with a long-running operation
    whose metadata is the execution, and jobs named ``.../denied`` with a 403."""

    requests: list[tuple[str, dict]]
    executions: dict[str, dict]  # GET answers by execution name (running when absent)

    def do_GET(self) -> None:
        name = urlsplit(self.path).path.removeprefix("/v2/")
        self.answer(200, {"name": name, "taskCount": 1, **self.executions.get(name, {})})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = json.loads(self.rfile.read(int(self.headers["content-length"] or 0)) or b"{}")
        self.requests.append((path, body))
        resource = path.removeprefix("/v2/").rsplit(":", 1)[0]
        if resource.endswith("/denied"):
            self.answer(403, {"error": {"code": 403, "message": "runWithOverrides denied"}})
            return
        count = sum(p.endswith(":run") for p, _ in self.requests)
        execution = resource if ":cancel" in path else f"{resource}/executions/runner-{count}"
        self.answer(
            200,
            {
                "name": f"projects/demo/locations/us-central1/operations/op-{len(self.requests)}",
                "metadata": {
                    "@type": "type.googleapis.com/google.cloud.run.v2.Execution",
                    "name": execution,
                },
                "done": False,
            },
        )

    def answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


EXECUTIONS: dict[str, dict] = {}


@pytest.fixture
def fake_api() -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    requests: list[tuple[str, dict]] = []
    EXECUTIONS.clear()
    handler = type("Handler", (FakeRunAdmin,), {"requests": requests, "executions": EXECUTIONS})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", requests
    server.shutdown()
    server.server_close()


def dispatcher(store: SQLiteJobStore, endpoint: str, job_name: str = JOB_NAME, **options):
    client_options = {"api_endpoint": endpoint}
    credentials = AnonymousCredentials()
    return CloudRunDispatcher(
        store,
        job_name,
        runner_args,
        env={"SCARLET_REGRESSION_CACHE": "/cache"},
        timeout=3600,
        jobs_client=run_v2.JobsClient(
            transport="rest", client_options=client_options, credentials=credentials
        ),
        executions_client=run_v2.ExecutionsClient(
            transport="rest", client_options=client_options, credentials=credentials
        ),
        **options,
    )


def runner_args(job: Job, out: Path) -> list[str]:
    """What the container's ``python -m runner`` entrypoint is given for a job."""
    args = ["run", "--repo", job.clone_url, "--head", job.head_sha, "--base", job.base]
    return [*args, "--out", str(out), "--pr", str(job.pr), "--progress-json"]


def make_job(sha: str = "a1b2c3") -> Job:
    return Job(
        repository="pmelchior/scarlet",
        installation_id=7,
        head_sha=sha,
        base="main",
        clone_url="https://github.com/pmelchior/scarlet.git",
        pr=12,
    )


async def test_one_execution_per_job_with_its_overrides(tmp_path, fake_api):
    endpoint, requests = fake_api
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    cloud = dispatcher(store, endpoint)
    try:
        job = await cloud.submit(make_job())
        assert job.state == "running"
        assert job.execution == f"{JOB_NAME}/executions/runner-1"
        assert await store.get(job.id) == job

        [(path, body)] = requests
        assert path == f"/v2/{JOB_NAME}:run"
        [container] = body["overrides"]["containerOverrides"]
        assert container["args"] == [
            "run", "--repo", "https://github.com/pmelchior/scarlet.git", "--head", "a1b2c3",
            "--base", "main", "--out", "/tmp/scarlet-regression/out", "--pr", "12",
            "--progress-json",
        ]  # fmt: skip
        assert {e["name"]: e["value"] for e in container["env"]} == {
            "SCARLET_REGRESSION_CACHE": "/cache",
            "SCARLET_REGRESSION_JOB_ID": job.id,
        }
        assert body["overrides"]["taskCount"] == 1
        assert body["overrides"]["timeout"] == "3600s"

        again = await cloud.submit(make_job())  # same key, still running: no new execution
        assert again.id == job.id and len(requests) == 1
    finally:
        await store.close()


async def test_cancel_cancels_the_execution(tmp_path, fake_api):
    endpoint, requests = fake_api
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    cloud = dispatcher(store, endpoint)
    try:
        job = await cloud.submit(make_job())
        for cancelled in await store.cancel("pmelchior/scarlet", pr=12, except_sha="new"):
            await cloud.cancel(cancelled)
        assert requests[-1][0] == f"/v2/{job.execution}:cancel"
        stored = await store.get(job.id)
        assert (stored.state, stored.conclusion) == ("cancelled", "cancelled")
    finally:
        await store.close()


async def test_a_refused_execution_concludes_error(tmp_path, fake_api):
    endpoint, _ = fake_api
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    finished: list[Job] = []

    async def on_finished(job: Job) -> None:
        finished.append(job)

    cloud = dispatcher(
        store, endpoint, "projects/demo/locations/l/jobs/denied", on_finished=on_finished
    )
    try:
        job = await cloud.submit(make_job())
        assert (job.state, job.conclusion) == ("completed", "error")
        assert "runWithOverrides denied" in job.error
        assert finished == [job]
    finally:
        await store.close()


async def test_start_dispatches_jobs_left_queued(tmp_path, fake_api):
    endpoint, requests = fake_api
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    try:
        job = await store.add(make_job())
        await dispatcher(store, endpoint).start()
        assert (await store.get(job.id)).execution == f"{JOB_NAME}/executions/runner-1"
        assert len(requests) == 1
    finally:
        await store.close()


async def test_finished_executions_conclude_their_jobs(tmp_path, fake_api):
    endpoint, _ = fake_api
    finished: list[Job] = []

    async def on_finished(job: Job) -> None:
        finished.append(job)

    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    runs = dispatcher(store, endpoint, on_finished=on_finished)
    good = await runs.submit(make_job("a" * 40))
    bad = await runs.submit(make_job("b" * 40))
    assert await runs.check() == [], "both executions still run"
    done = "2026-11-25T12:00:00Z"
    EXECUTIONS[good.execution] = {"completionTime": done, "succeededCount": 1}
    EXECUTIONS[bad.execution] = {
        "completionTime": done,
        "failedCount": 1,
        "conditions": [{"type": "Completed", "message": "Task runner-2 exited with code 2"}],
    }
    concluded = {job.head_sha: job for job in await runs.check()}
    assert concluded["a" * 40].conclusion == "success"
    assert concluded["b" * 40].conclusion == "error"
    assert concluded["b" * 40].error == "Task runner-2 exited with code 2"
    assert sorted(job.head_sha for job in finished) == ["a" * 40, "b" * 40]
    assert await runs.check() == [], "a concluded job is not concluded twice"
    await store.close()


async def test_shards_run_as_tasks_and_then_one_merge(tmp_path, fake_api):
    endpoint, requests = fake_api
    finished: list[Job] = []

    async def on_finished(job: Job) -> None:
        finished.append(job)

    def merge_args(job: Job, out: Path) -> list[str]:
        return ["merge", "--out", str(out), "--sha", job.head_sha, "--shards", "4"]

    progress: list[tuple[str, int, int]] = []

    async def on_progress(job: Job, phase: str, done: int, total: int) -> None:
        progress.append((phase, done, total))

    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    runs = dispatcher(
        store,
        endpoint,
        task_count=4,
        merge_args=merge_args,
        on_finished=on_finished,
        on_progress=on_progress,
    )
    job = await runs.submit(make_job("c" * 40))
    path, body = requests[-1]
    assert path.endswith(":run") and body["overrides"]["taskCount"] == 4
    EXECUTIONS[job.execution] = {"taskCount": 4, "runningCount": 2, "succeededCount": 2}
    assert await runs.check() == []
    assert progress == [("deblending on Cloud Run (tasks done)", 2, 4)]
    done = "2026-11-25T12:00:00Z"
    EXECUTIONS[job.execution] = {"completionTime": done, "succeededCount": 4, "taskCount": 4}
    assert await runs.check() == [], "the merge still has to run"
    path, body = requests[-1]
    assert body["overrides"]["taskCount"] == 1
    assert body["overrides"]["containerOverrides"][0]["args"][:2] == ["merge", "--out"]
    merging = await store.get(job.id)
    assert merging.execution.startswith("merge:") and merging.state == "running"
    assert await runs.check() == []
    assert progress[-1] == ("merging the shards on Cloud Run", 0, 0)
    EXECUTIONS[merging.execution.removeprefix("merge:")] = {
        "completionTime": done,
        "succeededCount": 1,
    }
    (concluded,) = await runs.check()
    assert concluded.conclusion == "success" and finished == [concluded]
    await store.close()


async def test_a_drift_run_is_one_task_and_concludes_without_a_merge(tmp_path, fake_api):
    endpoint, requests = fake_api
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    runs = dispatcher(store, endpoint, task_count=4, merge_args=lambda job, out: ["merge"])
    job = await runs.submit(dataclasses.replace(make_job("d" * 40), kind="drift", pr=None))
    (_, body), *_ = requests
    assert body["overrides"]["taskCount"] == 1
    done = "2026-11-25T12:00:00Z"
    EXECUTIONS[job.execution] = {"completionTime": done, "succeededCount": 1, "taskCount": 1}
    (concluded,) = await runs.check()
    assert concluded.conclusion == "success" and len(requests) == 1, "no merge execution"
    await store.close()


async def test_a_shard_that_fails_after_its_retries_fails_the_job(tmp_path, fake_api):
    endpoint, _ = fake_api
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    runs = dispatcher(store, endpoint, task_count=2, merge_args=lambda job, out: ["merge"])
    job = await runs.submit(make_job("d" * 40))
    EXECUTIONS[job.execution] = {
        "completionTime": "2026-11-25T12:00:00Z",
        "succeededCount": 1,
        "failedCount": 1,
        "taskCount": 2,
        "conditions": [{"type": "Completed", "message": "Task 1 failed after 1 retry"}],
    }
    (concluded,) = await runs.check()
    assert concluded.conclusion == "error" and "Task 1 failed" in concluded.error
    await store.close()


def test_the_bot_shards_over_cloud_run_when_a_job_is_configured(tmp_path):
    from bot.app import _dispatcher
    from bot.service import RegressionService
    from bot.settings import Settings
    from runner.store import LocalStore

    settings = Settings(
        app_id="1",
        private_key="-",
        webhook_secret="-",
        data_dir=tmp_path,
        datasets=(tmp_path / "set1",),
        store="gs://bucket/scarlet",
        cloud_run_job=JOB_NAME,
        cloud_run_tasks=8,
    )
    jobs = SQLiteJobStore(tmp_path / "jobs.sqlite")
    service = RegressionService(settings, jobs, LocalStore(tmp_path / "store"), None, None)
    runs = _dispatcher(settings, jobs, service)
    job = make_job("e" * 40)
    run_args = runs.args(job, runs.out)
    assert run_args[0] == "run" and "--progress-json" in run_args
    assert run_args[run_args.index("--store") + 1] == "gs://bucket/scarlet"
    merge = runs.merge_args(job, runs.out)
    assert merge[:2] == ["merge", "--out"] and merge[merge.index("--shards") + 1] == "8"
    assert runs.task_count == 8


async def test_two_instances_seeing_the_shards_succeed_start_one_merge(tmp_path, fake_api):
    endpoint, requests = fake_api

    def merge_args(job: Job, out: Path) -> list[str]:
        return ["merge", "--out", str(out), "--sha", job.head_sha, "--shards", "4"]

    stores = [SQLiteJobStore(tmp_path / "jobs.sqlite") for _ in range(2)]
    one, two = (dispatcher(s, endpoint, task_count=4, merge_args=merge_args) for s in stores)
    job = await one.submit(make_job("d" * 40))
    done = "2026-11-25T12:00:00Z"
    EXECUTIONS[job.execution] = {"completionTime": done, "succeededCount": 4, "taskCount": 4}
    await asyncio.gather(one.check(), two.check())
    merges = [body for path, body in requests if body["overrides"]["taskCount"] == 1]
    assert len(merges) == 1
    assert (await stores[0].get(job.id)).execution.startswith("merge:projects/")
    for store in stores:
        await store.close()
