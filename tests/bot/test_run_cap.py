"""The per-repository cap on concurrent runs: further jobs wait in the store's queue and
start newest first; a waiting job cancelled (superseded) never starts; instances sharing
a bucket never exceed the cap between them."""

from __future__ import annotations

import asyncio

from test_jobs import Harness, make_job
from test_state import backend  # noqa: F401


async def test_a_repositorys_runs_wait_beyond_its_cap_and_start_newest_first(tmp_path):
    harness = Harness(tmp_path, concurrency=4, cap=2)
    await harness.open()
    started: list[str] = []
    claim_next = harness.store.claim_next

    async def claiming(repository, cap):
        job = await claim_next(repository, cap)
        if job is not None:
            started.append(job.id)
        return job

    harness.store.claim_next = claiming
    try:
        jobs = [await harness.dispatcher.submit(make_job("slow", pr=n)) for n in range(1, 6)]
        elsewhere = await harness.dispatcher.submit(make_job("ok", repository="octo/other"))
        superseded = jobs[3]
        await harness.dispatcher.cancel(superseded)  # a newer push came while it waited
        for job in [*jobs[:3], jobs[4], elsewhere]:
            await harness.outcome(job)
    finally:
        await harness.close()

    ours = [job_id for job_id in started if job_id != elsewhere.id]
    assert ours == [jobs[0].id, jobs[1].id, jobs[4].id, jobs[2].id], "newest waiting first"
    assert elsewhere.id in started[:3], "another repository's run does not wait for these"
    spans = [
        tuple(map(float, line.split())) for line in (tmp_path / "spans").read_text().splitlines()
    ]
    assert len(spans) == 4
    most = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert most == 2, "at most the cap of one repository at a time"
    assert not (tmp_path / "work" / superseded.id).exists(), "never started"


async def test_instances_sharing_the_state_claim_at_most_the_cap_between_them(backend):  # noqa: F811
    one, two = backend.jobs(), backend.jobs()
    for n in range(6):
        await one.add(make_job("ok", pr=n))
    claiming = (store.claim_next("pmelchior/scarlet", 2) for store in (one, two) * 3)
    claims = await asyncio.gather(*claiming)
    claimed = [job for job in claims if job is not None]
    assert len(claimed) == 2
    assert sorted(job.pr for job in claimed) == [4, 5], "the newest two"
    assert await one.claim_next("pmelchior/scarlet", 2) is None
    await two.finish(claimed[0].id, "success")
    assert (await one.claim_next("pmelchior/scarlet", 2)).pr == 3, "a slot freed: the next newest"
