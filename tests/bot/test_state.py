"""The bot's state, the same contract for both stores: SQLite (the embedded default) and
the private GCS bucket shared by several instances (on fake-gcs-server, which enforces
generation preconditions as GCS does)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.state.gcsstate import Bucket, GCSDeliveryLog, GCSJobStore
from bot.state.jobs import (
    MERGE_PENDING,
    DeliveryLog,
    Job,
    JobStore,
    SQLiteDeliveryLog,
    SQLiteJobStore,
)

LEASE = 1.5  # seconds: short, yet long enough for a loaded machine


def make_job(sha: str = "a" * 40, pr: int | None = 1, kind: str = "pr") -> Job:
    return Job("pmelchior/scarlet", 7, sha, "main", "https://x/s.git", kind=kind, pr=pr)


@dataclass
class Backend:
    """Opens stores of one backend that share their state, as bot instances do."""

    name: str
    jobs: Callable[..., JobStore]
    deliveries: Callable[..., DeliveryLog]


@pytest_asyncio.fixture(params=["sqlite", "gcs"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    opened: list = []

    def remember(store):
        opened.append(store)
        return store

    if request.param == "sqlite":
        path = tmp_path / "bot.sqlite"
        yield Backend(
            "sqlite",
            lambda **kw: remember(SQLiteJobStore(path, **kw)),
            lambda **kw: remember(SQLiteDeliveryLog(path, **kw)),
        )
    else:
        name = request.getfixturevalue("gcs_bucket").name
        client = request.getfixturevalue("gcs_client")

        def bucket() -> Bucket:
            return Bucket(name, "state", client=client, deadline=5.0, timeout=5.0)

        yield Backend(
            "gcs",
            lambda **kw: remember(GCSJobStore(bucket(), **kw)),
            lambda **kw: remember(GCSDeliveryLog(bucket(), **kw)),
        )
    for store in opened:
        await store.close()


async def test_a_key_has_one_unfinished_job(backend):
    store = backend.jobs()
    first = await store.add(make_job())
    assert (await store.add(make_job())).id == first.id
    assert (await store.add(make_job(pr=2))).id != first.id
    assert (await store.add(make_job(kind="baseline", pr=None))).id != first.id
    assert (await store.finish(first.id, "success", result_path="/r.json")).state == "completed"
    assert await store.finish(first.id, "failure") is None, "a job ends once"
    second = await store.add(make_job())
    assert second.id != first.id
    assert (await store.get(first.id)).result_path == "/r.json"
    await store.set_check_run(second.id, 42)
    assert (await store.get(second.id)).check_run_id == 42
    newest = await store.add(make_job("b" * 40))
    assert (await store.latest("pmelchior/scarlet", pr=1)).id == newest.id
    assert (await store.latest("pmelchior/scarlet")).kind == "baseline"
    assert await store.latest("pmelchior/other") is None
    assert [job.id for job in await store.unfinished()] == [
        job.id for job in sorted(await store.unfinished(), key=lambda job: job.created)
    ]


async def test_two_instances_adding_claiming_and_concluding_one_job_each_win_once(backend):
    if backend.name == "sqlite":
        pytest.skip("SQLite is one process's; its transactions are serialised anyway")
    one, two = backend.jobs(), backend.jobs()
    added = await asyncio.gather(*(store.add(make_job()) for store in (one, two) * 3))
    assert len({job.id for job in added}) == 1
    (job_id,) = {job.id for job in added}
    claims = await asyncio.gather(one.claim(job_id), two.claim(job_id))
    assert sum(claim is not None for claim in claims) == 1
    ends = await asyncio.gather(one.finish(job_id, "success"), two.finish(job_id, "failure"))
    (winner,) = [end for end in ends if end is not None]
    assert (await one.get(job_id)).conclusion == winner.conclusion
    assert [job.id for job in await two.unreported()] == [job_id]


async def test_a_running_job_is_recovered_only_once_its_lease_runs_out(backend):
    alive, other = backend.jobs(lease=LEASE), backend.jobs(lease=LEASE)
    job = await alive.add(make_job())
    await alive.claim(job.id)
    assert await other.recover(time.time()) == []
    assert (await other.get(job.id)).state == "running", "the lease holds"
    assert await alive.renew(job.id) is not None
    assert await other.renew(job.id) is None, "only the owner renews"
    await asyncio.sleep(LEASE + 0.1)
    assert await other.recover(time.time()) == []
    requeued = await other.get(job.id)
    assert (requeued.state, requeued.owner) == ("queued", None)
    assert await alive.renew(job.id) is None, "the dead owner has lost it"
    assert await alive.requeue(job.id) is None

    # A job with a Cloud Run execution is Cloud Run's: never recovered from the store.
    await other.claim(job.id)
    await other.set_execution(job.id, "executions/e-1")
    assert await other.recover(math.inf) == []
    assert (await other.get(job.id)).state == "running"


async def test_a_job_interrupted_three_times_is_concluded_error_and_unreported(backend):
    store = backend.jobs()
    job = await store.add(make_job())
    for _ in range(3):
        await store.claim(job.id)
        given_up = await store.recover(math.inf)
    (done,) = given_up
    assert (done.state, done.conclusion, done.attempts) == ("completed", "error", 3)
    assert "interrupted 3 times" in done.error
    assert [j.id for j in await store.unreported()] == [job.id]
    assert await store.unfinished() == []
    assert (await store.add(make_job())).id != job.id, "its key is free again"


async def test_an_unreported_job_is_reported_by_another_once_the_reporter_is_gone(backend):
    dead, other = backend.jobs(lease=LEASE), backend.jobs(lease=LEASE)
    job = await dead.add(make_job())
    await dead.claim(job.id)
    await dead.finish(job.id, "success")
    for _ in range(3):  # a slow report renews its lease ...
        await asyncio.sleep(LEASE / 2)
        assert await dead.renew(job.id) is not None
        assert await other.claim_report(job.id) is None, "its reporter's lease holds"
    await asyncio.sleep(LEASE + 0.1)  # ... until its process dies
    claimed = await other.claim_report(job.id)
    assert claimed is not None and claimed.owner == other.owner
    assert await dead.claim_report(job.id) is None
    await other.mark_notified(job.id)
    assert await other.unreported() == []


async def test_cancel_takes_the_unfinished_jobs_of_a_pr_but_the_sha_kept(backend):
    store = backend.jobs()
    old = await store.add(make_job("a" * 40))
    new = await store.add(make_job("b" * 40))
    other_pr = await store.add(make_job("a" * 40, pr=2))
    cancelled = await store.cancel("pmelchior/scarlet", pr=1, except_sha="b" * 40)
    assert [job.id for job in cancelled] == [old.id]
    assert await store.cancel("pmelchior/scarlet", pr=1, except_sha="b" * 40) == []
    assert {job.id for job in await store.unfinished()} == {new.id, other_pr.id}


async def test_a_day_is_scheduled_once_until_forgotten(backend):
    one, two = backend.jobs(), backend.jobs()
    firsts = await asyncio.gather(
        *(s.first_of_day("o/r", "drift", "2026-12-01") for s in (one, two, one))
    )
    assert sorted(firsts) == [False, False, True]
    await one.forget_day("o/r", "drift", "2026-12-01")
    assert await two.first_of_day("o/r", "drift", "2026-12-01")
    assert await two.first_of_day("o/r", "drift", "2026-12-02")


async def test_a_delivery_is_a_duplicate_once_done_and_free_again_when_released(backend):
    one, two = backend.deliveries(lease=LEASE), backend.deliveries(lease=LEASE)
    taken = await asyncio.gather(*(log.begin("guid-1") for log in (one, two, one, two)))
    assert sorted(taken) == [False, False, False, True], "one of concurrent redeliveries"
    await one.release("guid-1")  # its work failed
    assert await two.begin("guid-1"), "a redelivery tries again"
    await two.done("guid-1")
    assert not await one.begin("guid-1")
    await asyncio.sleep(LEASE + 0.1)
    assert not await one.begin("guid-1"), "done is done, lease or not"

    assert await one.begin("guid-2")  # taken by a process that then died
    assert not await two.begin("guid-2")
    await asyncio.sleep(LEASE + 0.1)
    assert await two.begin("guid-2"), "its lease ran out"


async def test_the_merge_of_a_jobs_shards_is_started_by_one_instance(backend):
    one, two = backend.jobs(lease=LEASE), backend.jobs(lease=LEASE)
    job = await one.add(make_job())
    await one.claim(job.id)
    await one.set_execution(job.id, "executions/shards")
    claims = await asyncio.gather(
        one.claim_merge(job.id, "executions/shards"), two.claim_merge(job.id, "executions/shards")
    )
    assert sum(claim is not None for claim in claims) == 1
    assert (await one.get(job.id)).execution == MERGE_PENDING
    assert await two.claim_merge(job.id, MERGE_PENDING) is None, "its starter's lease holds"
    await asyncio.sleep(LEASE + 0.1)
    assert await two.claim_merge(job.id, MERGE_PENDING) is not None, "its starter died"
    await two.set_execution(job.id, MERGE_PENDING + "executions/merge")
    assert await one.claim_merge(job.id, MERGE_PENDING) is None


def test_the_state_setting_names_a_private_bucket_or_nothing(tmp_path):
    from bot.settings import Settings, SettingsError

    def settings(state: str) -> Settings:
        return Settings("1", "-", "-", tmp_path, (), state=state)

    assert settings("").shared_state is None, "SQLite in the data dir"
    assert settings("gs://bot-state").shared_state == ("bot-state", "")
    assert settings("gs://bot-state/prod/v1").shared_state == ("bot-state", "prod/v1")
    with pytest.raises(SettingsError, match="SCARLET_BOT_STATE"):
        _ = settings("/var/lib/bot").shared_state
