"""The bot in production under GitHub's delivery order: several instances sharing their
state in a bucket (fake-gcs-server), runs on a fake of Cloud Run that really runs the
runner. A state store that fails under the watcher, a run cancelled while Cloud Run is
still starting its execution, and two instances watching one run."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
from test_bot import REPO, head, until
from test_delivery_order import push
from test_production import JOB, Deployment

from bot.service import SERVICE


def cloud_run_settings(cloud_run, **more) -> dict:
    return {"cloud_run_job": JOB, "cloud_run_emulator": cloud_run.endpoint, **more}


async def health(bot) -> tuple[int, dict]:
    async with bot.session.get(f"{bot.url}/healthz") as response:
        return response.status, await response.json()


async def test_a_state_store_failing_under_the_watcher_is_survived_and_shown_by_healthz(
    fake_github, tmp_path, synthetic_set, monkeypatch, gcs_outage_emulator, cloud_run
):
    gcs = gcs_outage_emulator
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    bucket = gcs.client().create_bucket(f"bot-state-{uuid.uuid4().hex[:12]}")
    settings = cloud_run_settings(
        cloud_run, watch_interval=0.3, state_deadline=1.0, health_stale=2.0
    )
    async with aiohttp.ClientSession() as session:
        deployment = Deployment(
            fake_github, tmp_path, synthetic_set, f"gs://{bucket.name}/bot", session, **settings
        )
        bot = await deployment.instance("one")
        try:
            assert (await health(bot))[0] == 200
            pull = fake_github.add_pull(REPO, 60, head_sha=head(bot), base_ref="main")
            assert await bot.send("pull_request", "opened", pull=pull) == 202
            service = bot.server.app[SERVICE]
            for _ in range(600):
                job = await service.jobs.latest(REPO, 60)
                if job is not None and job.execution:
                    break
                await asyncio.sleep(0.1)
            assert job.execution, "the execution runs, recorded on its job"

            # The state bucket fails (GCS unavailable past the state's retry deadline) while
            # the execution runs: the watcher's passes fail, and /healthz says so.
            gcs.stop()
            for _ in range(100):
                status, body = await health(bot)
                if status == 503:
                    break
                await asyncio.sleep(0.1)
            assert status == 503, body
            assert body["watcher"]["failures"] >= 1 and body["watcher"]["last_error"]
            await asyncio.sleep(1.0)

            # The state comes back: the watcher carries on and the job concludes.
            assert gcs.start()
            (run,) = await bot.completed(pull.head_sha, timeout=120)
            assert run.conclusion == "success", run.output
            assert len(bot.report_comments(60)) == 1
            status, body = await health(bot)
            assert status == 200 and body["watcher"]["failures"] == 0, body
        finally:
            await bot.server.cleanup()


async def test_a_run_cancelled_while_its_execution_starts_has_that_execution_cancelled(
    deployment, cloud_run
):
    deployment.shared |= cloud_run_settings(cloud_run, watch_interval=0.5)
    cloud_run.run_delay = 3.0  # Cloud Run answers the start of an execution slowly
    one = await deployment.instance("one")
    two = await deployment.instance("two")
    fake = deployment.fake
    pull = fake.add_pull(REPO, 61, head_sha=head(one), base_ref="main")
    old = pull.head_sha
    assert await one.send("pull_request", "opened", pull=pull) == 202
    await until(lambda: cloud_run.processes, timeout=60)
    (starting,) = cloud_run.processes  # started; its name not yet given to the bot

    # A second push, within seconds, reaches the other instance.
    pull.head_sha = new = push(one, "a second push")
    assert await two.send("pull_request", "synchronize", pull=pull) == 202
    (run,) = await two.completed(new, timeout=120)
    assert run.conclusion == "success", run.output
    (superseded,) = fake.check_runs(REPO, old)
    assert superseded.conclusion == "cancelled"
    await until(lambda: starting in cloud_run.cancelled, timeout=15)
    assert cloud_run.processes[starting].wait(timeout=15) != 0, "stopped, not run to its end"
    (report,) = one.report_comments(61)
    assert new[:10] in report.body


async def test_two_instances_watching_one_run_start_its_check_run_once(deployment, cloud_run):
    deployment.shared |= cloud_run_settings(cloud_run, watch_interval=0.2)
    one = await deployment.instance("one")
    two = await deployment.instance("two")
    pull = deployment.fake.add_pull(REPO, 62, head_sha=head(one), base_ref="main")
    assert await one.send("pull_request", "opened", pull=pull) == 202
    (run,) = await two.completed(pull.head_sha, timeout=120)
    assert run.conclusion == "success", run.output
    await asyncio.sleep(1.0)  # more passes of both watchers
    sent = [c.json for c in deployment.fake.calls("PATCH", f"/repos/{REPO}/check-runs/{run.id}")]
    shown = [update for update in sent if update.get("status") == "in_progress"]
    assert len(shown) >= 2, "both instances watched it"
    assert sum("started_at" in update for update in sent) == 1, "started once"
    assert [update.get("status") for update in sent].count("completed") == 1
    assert sent[-1]["status"] == "completed", "nothing reopened it"
