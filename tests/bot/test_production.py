"""The bot as it runs in production: several instances sharing their state in a private
bucket (fake-gcs-server), runs on Cloud Run (a fake of its Admin API that really runs
the runner), and instances that die and are replaced by new ones with nothing on disk."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from test_bot import REPO, TINY_RUNNER, Bot, bot_settings, free_port, head, scarlet_repository

from fake_cloud_run import FakeCloudRun, serve

JOB = "projects/demo/locations/us-central1/jobs/scarlet-runner"


class Deployment:
    """Bot instances of one deployment: its fake GitHub, repository, blend set, shared
    state (a bucket) and artifact store; each instance has its own port and data dir."""

    def __init__(self, fake, tmp_path: Path, synthetic_set: Path, state: str, session, **shared):
        self.fake, self.tmp, self.session = fake, tmp_path, session
        self.repo, self.dataset, self.installation = scarlet_repository(
            fake, tmp_path, synthetic_set
        )
        self.shared = {"state": state, "store": str(tmp_path / "artifacts"), **shared}
        self.instances: list[Bot] = []

    async def instance(self, name: str) -> Bot:
        """A new instance, started, with an empty data dir of its own."""
        port = free_port()
        settings = bot_settings(self.fake, self.tmp / name, self.dataset, port, **self.shared)
        bot = Bot(settings, self.fake, self.repo, self.session, self.installation)
        await bot.serve()
        self.instances.append(bot)
        return bot


@pytest_asyncio.fixture
async def deployment(fake_github, tmp_path, synthetic_set, monkeypatch, gcs_emulator):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    bucket = gcs_emulator.client().create_bucket(f"bot-state-{uuid.uuid4().hex[:12]}")
    async with aiohttp.ClientSession() as session:
        made = Deployment(
            fake_github, tmp_path, synthetic_set, f"gs://{bucket.name}/bot", session, lease=3.0
        )
        yield made
        for bot in made.instances:
            await bot.server.cleanup()


@pytest.fixture
def cloud_run(tmp_path) -> AsyncIterator[FakeCloudRun]:
    fake = FakeCloudRun([sys.executable, str(TINY_RUNNER)], tmp_path / "cloud-run")
    server = serve(fake)
    yield fake
    server.shutdown()
    fake.stop()


async def test_two_instances_given_the_same_deliveries_run_once(deployment):
    one = await deployment.instance("one")
    two = await deployment.instance("two")
    fake = deployment.fake
    pull = fake.add_pull(REPO, 30, head_sha=head(one), base_ref="main")
    merge = {"repository": {"clone_url": str(deployment.repo)}}
    headers, body = fake.webhook("pull_request", "opened", pull=pull, merge=merge)
    statuses = await asyncio.gather(*(bot.deliver(headers, body) for bot in (one, two) * 3))
    assert sorted(statuses) == [200] * 5 + [202]
    (run,) = await one.completed(pull.head_sha)
    assert run.conclusion == "success", run.output
    redelivered = await asyncio.gather(*(bot.deliver(headers, body) for bot in (two, one)))
    assert redelivered == [200, 200]
    await asyncio.sleep(1.0)
    assert len(fake.calls("POST", f"/repos/{REPO}/check-runs")) == 1
    assert len(one.report_comments(30)) == 1


@pytest.mark.parametrize("old_instance", ["gone", "outlives the deploy"])
async def test_a_bot_killed_mid_run_is_replaced_by_one_with_nothing_on_disk(
    deployment, cloud_run, old_instance
):
    deployment.shared |= {
        "cloud_run_job": JOB,
        "cloud_run_emulator": cloud_run.endpoint,
        "watch_interval": 0.5,
    }
    old = await deployment.instance("old")
    pull = deployment.fake.add_pull(REPO, 31, head_sha=head(old), base_ref="main")
    assert await old.send("pull_request", "opened", pull=pull) == 202
    for _ in range(300):
        if cloud_run.processes:
            break
        await asyncio.sleep(0.1)
    (execution,) = cloud_run.processes.values()
    assert execution.poll() is None, "the run is under way"

    # A deploy: the instance goes away with its disk, or it stays a while beside the new
    # one and both watch the execution; the execution goes on.
    if old_instance == "gone":
        await old.server.cleanup()
        deployment.instances.remove(old)
        shutil.rmtree(old.settings.data_dir)
    new = await deployment.instance("new")
    (run,) = await new.completed(pull.head_sha, timeout=60)
    assert run.conclusion == "success", run.output
    assert len(new.report_comments(31)) == 1
    assert len(cloud_run.processes) == 1, "the run was not started again"
    await asyncio.sleep(1.5)  # three more polls of every instance still alive
    assert len(new.report_comments(31)) == 1
    completing = [
        c
        for c in deployment.fake.calls("PATCH", f"/repos/{REPO}/check-runs/*")
        if c.json.get("status") == "completed"
    ]
    assert len(completing) == 1, "one instance concluded it"
    shown = [c.json for c in deployment.fake.calls("PATCH", f"/repos/{REPO}/check-runs/*")]
    assert any(u["output"]["title"].startswith("deblending on Cloud Run") for u in shown)
    assert len(deployment.fake.calls("POST", f"/repos/{REPO}/check-runs")) == 1


async def test_a_conclusion_github_refused_is_written_later_by_the_reconciler(deployment):
    deployment.shared |= {"reconcile_interval": 0.5, "report_backoff": 1.0}
    bot = await deployment.instance("one")
    fake = deployment.fake
    # Every try of the conclusion fails (the bot tries six times) ...
    fake.fail_next("PATCH", "/repos/*/check-runs/*", 500, times=6, when={"status": "completed"})
    pull = fake.add_pull(REPO, 32, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    # ... and once its lease has run out, the reconciler reports the job again.
    (run,) = await bot.completed(pull.head_sha, timeout=90)
    assert run.conclusion == "success", run.output
    assert len(fake.calls("PATCH", "/repos/*/check-runs/*", status=500)) == 6
    assert len(bot.report_comments(32)) == 1


async def test_the_webhook_answers_503_while_the_state_is_unreachable(
    fake_github, tmp_path, synthetic_set, monkeypatch, gcs_outage_emulator
):
    gcs = gcs_outage_emulator
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    bucket = gcs.client().create_bucket("bot-state")
    async with aiohttp.ClientSession() as session:
        deployment = Deployment(
            fake_github, tmp_path, synthetic_set, f"gs://{bucket.name}", session
        )
        bot = await deployment.instance("one")
        try:
            pull = fake_github.add_pull(REPO, 33, head_sha=head(bot), base_ref="main")
            merge = {"repository": {"clone_url": str(deployment.repo)}}
            headers, body = fake_github.webhook("pull_request", "opened", pull=pull, merge=merge)
            gcs.stop()
            started = time.monotonic()
            assert await bot.deliver(headers, body) == 503
            assert time.monotonic() - started < 10, "within GitHub's webhook deadline"
            assert gcs.start()
            assert await bot.deliver(headers, body) == 202, "GitHub's redelivery runs"
            (run,) = await bot.completed(pull.head_sha)
            assert run.conclusion == "success", run.output
        finally:
            await bot.server.cleanup()
