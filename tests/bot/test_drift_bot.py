"""Scheduled drift runs end to end: the scheduler's call in, the shared fake GitHub on the
other side, the real runner with the tiny drift deblender (it requires ``tinyscale>=1``;
its lock pins 1.0) and a wheel directory standing in for the package index."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from test_bot import free_port

from bot import drift
from bot.app import create_app
from bot.settings import Settings
from fake_github import FakeGitHub
from runner.publish.report import DRIFT_MARKER
from support import tiny_drift_repository, tinyscale_wheels, two_blends

REPO = "octo/scarlet"
SECRET = "the-scheduler-secret"
TINY_RUNNER = Path(__file__).parents[1] / "support" / "tiny_runner.py"
BROKEN = "tinyscale-2.0-py3-none-any.whl"


@pytest_asyncio.fixture
async def bot(fake_github: FakeGitHub, tmp_path, synthetic_set, monkeypatch):
    """The bot with a scheduler secret; ``index`` holds tinyscale 1.0 only, ``broken``
    the 2.0 release that drops the keyword the deblender calls it with."""
    index = tinyscale_wheels(tmp_path / "v1", ["1.0"])
    broken = tinyscale_wheels(tmp_path / "v2", ["2.0"]) / BROKEN
    monkeypatch.setenv("UV_FIND_LINKS", str(index))
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    repo, sha = tiny_drift_repository(tmp_path / "scarlet")
    dataset = two_blends(synthetic_set, tmp_path / "blends")
    installation = fake_github.add_installation("octo", [REPO])
    fake_github.add_repo(
        REPO, installation_id=installation.id, branches={"main": sha}, clone_url=str(repo)
    )
    port = free_port()
    settings = Settings(
        app_id=str(fake_github.app_id),
        private_key=fake_github.private_key_pem,
        webhook_secret=fake_github.webhook_secret,
        data_dir=tmp_path / "bot",
        datasets=(dataset,),
        api_url=fake_github.url,
        public_url=f"http://127.0.0.1:{port}",
        workers=1,
        github_backoff=0.01,
        runner=(sys.executable, str(TINY_RUNNER), "--tiny-drift"),
        scheduler_secret=SECRET,
        app_engine=True,  # as on App Engine, where only its cron service sends the header
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as session:

        async def schedule(token: str | None = SECRET) -> int:
            headers = {drift.TOKEN_HEADER: token} if token is not None else {}
            url = f"{settings.public_url}/schedule/drift"
            async with session.post(url, headers=headers) as response:
                return response.status

        async def cron(headers: dict[str, str]) -> int:
            async with session.get(f"{settings.public_url}/schedule/drift", headers=headers) as r:
                return r.status

        yield SimpleNamespace(
            fake=fake_github,
            schedule=schedule,
            cron=cron,
            index=index,
            broken=broken,
            settings=settings,
        )
    await runner.cleanup()


def drift_jobs(bot) -> list[tuple[str, str]]:
    """(state, conclusion) of every drift job in the bot's store."""
    with sqlite3.connect(bot.settings.data_dir / "jobs.sqlite") as db:
        return db.execute("SELECT state, conclusion FROM jobs WHERE kind = 'drift'").fetchall()


async def reported(bot, count: int, timeout: float = 180) -> None:
    """Wait until ``count`` drift runs have been reported (each looks for its issue)."""
    for _ in range(int(timeout * 10)):
        if len(bot.fake.calls("GET", f"/repos/{REPO}/issues")) >= count:
            await asyncio.sleep(0.5)  # what the report does after looking
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} drift run(s) not reported after {timeout} s: {drift_jobs(bot)}")


async def test_the_scheduler_endpoint_refuses_calls_without_its_token(bot):
    before = len(bot.fake.calls())
    assert await bot.schedule(None) == 401
    assert await bot.schedule("not the secret") == 401
    assert await bot.schedule("") == 401
    await asyncio.sleep(0.5)
    assert len(bot.fake.calls()) == before and not drift_jobs(bot)
    request = make_mocked_request("POST", "/schedule/drift", headers={drift.TOKEN_HEADER: ""})
    assert not drift.authorised("", request), "no secret configured: nobody gets in"


async def test_app_engine_cron_is_let_in_by_its_header_and_nobody_else(bot):
    assert await bot.cron({}) == 403
    assert await bot.cron({drift.CRON_HEADER: "false"}) == 403
    assert not drift_jobs(bot)
    assert await bot.cron({drift.CRON_HEADER: "true"}) == 202
    for _ in range(100):
        if drift_jobs(bot):
            break
        await asyncio.sleep(0.1)
    assert drift_jobs(bot), "the cron call scheduled the day's drift run"
    # Off App Engine anyone could send the header: it is not trusted there.
    request = make_mocked_request("GET", "/schedule/drift", headers={drift.CRON_HEADER: "true"})
    assert not drift.from_cron(False, request)


async def test_a_dependency_break_opens_one_issue_until_drift_is_clean_again(bot, monkeypatch):
    fake = bot.fake
    # Day 1: nothing newer than the lock. The run is clean and says nothing.
    monkeypatch.setattr(drift, "today", lambda: "2026-11-30")
    assert await bot.schedule() == 202
    await reported(bot, 1)
    assert drift_jobs(bot) == [("completed", "success")]
    assert not fake.issues(REPO)

    # Someone, and another app, paste the bot's marker into issues of their own: the bot
    # leaves them alone.
    decoy = fake.add_issue(REPO, "copied", user="someone", body=DRIFT_MARKER + " not mine")
    other = DRIFT_MARKER + " another app's"
    bot_decoy = fake.add_issue(REPO, "copied", user="other[bot]", user_type="Bot", body=other)

    # Day 2: tinyscale 2.0 is released and breaks every deblend. The scheduler calls
    # twice (a retry): one run, one issue naming the package, with the errors.
    shutil.copy(bot.broken, bot.index)
    monkeypatch.setattr(drift, "today", lambda: "2026-12-01")
    assert [await bot.schedule(), await bot.schedule()] == [202, 202]
    await reported(bot, 2)
    assert len(drift_jobs(bot)) == 2 and drift_jobs(bot)[1] == ("completed", "failure")
    assert len(fake.calls("GET", f"/repos/{REPO}/branches/main")) == 2
    (issue,) = [i for i in fake.issues(REPO) if i not in (decoy, bot_decoy)]
    assert issue.state == "open" and issue.body.startswith(DRIFT_MARKER)
    assert "tinyscale" in issue.title
    assert "| `tinyscale` | 1.0 | 2.0 |" in issue.body and "TypeError" in issue.body
    assert "/trends" not in issue.body, "drift runs are no point of the trends"

    # Day 3: still broken. The same issue is updated; no second one.
    monkeypatch.setattr(drift, "today", lambda: "2026-12-02")
    assert await bot.schedule() == 202
    await reported(bot, 3)
    assert fake.issues(REPO) == [decoy, bot_decoy, issue] and issue.state == "open"
    assert len(fake.calls("POST", f"/repos/{REPO}/issues")) == 1
    assert len(fake.calls("PATCH", f"/repos/{REPO}/issues/{issue.number}")) == 1

    # Day 4: tinyscale 2.0 is yanked; drift is clean again: a comment, and the issue closes.
    (bot.index / BROKEN).unlink()
    monkeypatch.setattr(drift, "today", lambda: "2026-12-03")
    assert await bot.schedule() == 202
    await reported(bot, 4)
    assert issue.state == "closed" and issue.state_reason == "completed"
    assert decoy.state == "open" and decoy.body.endswith("not mine")
    assert bot_decoy.state == "open" and bot_decoy.body == other
    (cleared,) = fake.comments(REPO, issue.number)
    assert cleared.body.startswith("✅ Drift is clean again")
    assert len(fake.calls("POST", f"/repos/{REPO}/issues")) == 1
    assert [c for _, c in drift_jobs(bot)] == ["success", "failure", "failure", "success"]


async def test_a_repository_that_cannot_be_started_is_left_for_a_later_call(bot, monkeypatch):
    monkeypatch.setattr(drift, "today", lambda: "2026-12-10")
    bot.fake.fail_next("GET", f"/repos/{REPO}/branches/*", 404)  # e.g. an empty repository
    assert await bot.schedule() == 202
    for _ in range(100):
        if bot.fake.calls("GET", f"/repos/{REPO}/branches/main"):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert not drift_jobs(bot), "nothing started"

    # The scheduler calls again the same day: this time the run starts.
    assert await bot.schedule() == 202
    await reported(bot, 1)
    assert drift_jobs(bot) == [("completed", "success")]
