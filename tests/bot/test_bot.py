"""The GitHub App end to end: GitHub's example webhooks in, the shared fake GitHub
(validating every request against the pinned API description) on the other side, the
embedded queue running the real runner with the tiny test deblender on two synthetic
blends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from bot.app import create_app
from bot.routers.comments import COMMAND
from bot.service import SERVICE
from bot.settings import CHECK_NAME, Settings
from fake_github import FakeGitHub, sign
from runner.commands.release_repo import commit
from runner.deblend.revisions import git
from runner.publish.report import MARKER
from support import tiny_pull_request, tiny_repository, two_blends, write_blend_with

REPO = "octo/scarlet"
TINY_RUNNER = Path(__file__).parents[1] / "support" / "tiny_runner.py"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Bot:
    """The running bot, its fake GitHub and the scarlet repository it deblends."""

    def __init__(self, settings, fake, repo, session, installation):
        self.url, self.fake, self.repo, self.session = settings.public_url, fake, repo, session
        self.installation, self.settings = installation, settings
        self.dataset = settings.datasets[0]
        self.server: web.AppRunner | None = None

    async def serve(self) -> None:
        """Start the bot (again) on its address, with its settings and data folder."""
        self.server = web.AppRunner(create_app(self.settings))
        await self.server.setup()
        port = int(self.url.rsplit(":", 1)[1])
        await web.TCPSite(self.server, "127.0.0.1", port).start()

    async def restart(self) -> None:
        """Stop the bot as App Engine does on a deploy (SIGTERM: cleanup), then start it."""
        await self.server.cleanup()
        await self.serve()

    async def deliver(self, headers, body) -> int:
        async with self.session.post(f"{self.url}/webhook", data=body, headers=headers) as resp:
            return resp.status

    async def send(self, event, action=None, merge=None, **overrides) -> int:
        merge = {"repository": {"clone_url": str(self.repo)}, **(merge or {})}
        headers, body = self.fake.webhook(event, action, merge=merge, **overrides)
        return await self.deliver(headers, body)

    async def comment(self, pull, body: str, user: str) -> int:
        """Comment on the PR as ``user`` and deliver the issue_comment webhook."""
        comment = self.fake.add_comment(REPO, pull.number, body, user=user)
        merge = {"comment": {"id": comment.id}}
        return await self.send(
            "issue_comment", "created", pull=pull, body=body, sender=user, merge=merge
        )

    async def completed(self, sha: str, count: int = 1, timeout: float = 180) -> list:
        """Wait until ``count`` check runs on ``sha`` are completed; return them."""
        for _ in range(int(timeout * 10)):
            runs = [r for r in self.fake.check_runs(REPO, sha) if r.status == "completed"]
            if len(runs) >= count:
                return runs
            await asyncio.sleep(0.1)
        raise AssertionError(f"no completed check run on {sha} after {timeout} s")

    async def queued(self, sha: str, timeout: float = 10) -> list:
        """Wait until a check run on ``sha`` exists; return the check runs on it."""
        for _ in range(int(timeout * 10)):
            runs = self.fake.check_runs(REPO, sha)
            if runs:
                return runs
            await asyncio.sleep(0.1)
        raise AssertionError(f"no check run on {sha} after {timeout} s")

    async def started(self, sha: str, timeout: float = 60) -> None:
        """Wait until the check run on ``sha`` shows the run's first progress."""
        for _ in range(int(timeout * 10)):
            if any(r.status == "in_progress" for r in self.fake.check_runs(REPO, sha)):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no check run in progress on {sha} after {timeout} s")

    async def assert_images_resolve(self, urls: list[str]) -> None:
        """Each address answers with an immutable PNG."""
        for url in urls:
            async with self.session.get(url) as response:
                assert response.status == 200 and response.content_type == "image/png", url
                assert "immutable" in response.headers["Cache-Control"]

    def report_comments(self, number: int) -> list:
        return [c for c in self.fake.comments(REPO, number) if c.body.startswith(MARKER)]


def scarlet_repository(fake_github: FakeGitHub, tmp_path: Path, synthetic_set: Path):
    """A tiny scarlet repository (a PR branch ``feature`` whose models are 0.1 % brighter,
    within every tolerance) installed on the fake GitHub, and two synthetic blends:
    (repository folder, blend set, installation id)."""
    repo, main = tiny_repository(tmp_path / "scarlet")
    tiny_pull_request(repo)
    dataset = two_blends(synthetic_set, tmp_path / "blends")
    installation = fake_github.add_installation("octo", [REPO])
    fake_github.add_repo(
        REPO,
        installation_id=installation.id,
        collaborators={"maintainer": "maintain", "reader": "read"},
        branches={"main": main},  # a PR's base.sha
    )
    return repo, dataset, installation.id


def bot_settings(
    fake_github: FakeGitHub, data_dir: Path, dataset: Path, port: int, **settings
) -> Settings:
    """The test bot's settings on 127.0.0.1:``port``; ``settings`` override its defaults."""
    defaults = {
        "app_id": str(fake_github.app_id),
        "private_key": fake_github.private_key_pem,
        "webhook_secret": fake_github.webhook_secret,
        "data_dir": data_dir,
        "datasets": (dataset,),
        "api_url": fake_github.url,
        "public_url": f"http://127.0.0.1:{port}",
        "workers": 1,
        "progress_interval": 0.0,
        "github_backoff": 0.01,
        "runner": (sys.executable, str(TINY_RUNNER)),
    }
    return Settings(**{**defaults, **settings})


@contextlib.asynccontextmanager
async def running_bot(
    fake_github: FakeGitHub, tmp_path: Path, synthetic_set: Path, port: int, **settings
) -> AsyncIterator[Bot]:
    """The bot on 127.0.0.1:``port`` with a tiny scarlet repository (a PR branch
    ``feature``) and two synthetic blends; ``settings`` override its defaults."""
    repo, dataset, installation = scarlet_repository(fake_github, tmp_path, synthetic_set)
    configured = bot_settings(fake_github, tmp_path / "bot", dataset, port, **settings)
    async with aiohttp.ClientSession() as session:
        bot = Bot(configured, fake_github, repo, session, installation)
        await bot.serve()
        try:
            yield bot
        finally:
            await bot.server.cleanup()


@pytest_asyncio.fixture
async def bot(fake_github: FakeGitHub, tmp_path, synthetic_set, monkeypatch):
    """The bot with its local store, served under its own /artifacts/."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    async with running_bot(fake_github, tmp_path, synthetic_set, free_port()) as bot:
        yield bot


@pytest_asyncio.fixture
async def gcs_bot(fake_github: FakeGitHub, tmp_path, synthetic_set, monkeypatch,
                  gcs_outage_emulator):  # fmt: skip
    """The bot storing runs in a bucket of the test's own GCS emulator (bot and runner
    both reach it through ``STORAGE_EMULATOR_HOST``), its images served under the bot's
    /artifacts/, and a GCS call given up after 2 s."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_outage_emulator.endpoint)
    bucket = gcs_outage_emulator.client().create_bucket("scarlet-artifacts")
    port = free_port()
    async with running_bot(
        fake_github,
        tmp_path,
        synthetic_set,
        port,
        store=f"gs://{bucket.name}/regression",
        store_public_url=f"http://127.0.0.1:{port}/artifacts/",
        store_deadline=2.0,
    ) as bot:
        yield bot


def head(bot: Bot) -> str:
    return git(bot.repo, "rev-parse", "feature")


async def test_a_pr_gets_a_check_run_and_one_comment_whose_images_resolve(bot):
    pull = bot.fake.add_pull(REPO, 7, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (check_run,) = await bot.completed(pull.head_sha)
    assert check_run.name == CHECK_NAME
    assert check_run.conclusion == "success", check_run.output
    assert check_run.output["title"].startswith("pass")
    (report,) = bot.report_comments(7)
    assert "## ✅ scarlet regression: pass" in report.body
    images = IMAGE.findall(report.body)
    assert len(images) == 2
    await bot.assert_images_resolve(images)
    async with bot.session.get(check_run.details_url) as response:
        assert response.status == 200 and "scarlet regression: pass" in await response.text()

    # A push: a new check run on the new head, and the same comment edited in place.
    (bot.repo / "NOTES").write_text("a second change\n")
    pull.head_sha = commit(bot.repo, "second push")
    assert await bot.send("pull_request", "synchronize", pull=pull) == 202
    await bot.completed(pull.head_sha)
    (edited,) = bot.report_comments(7)
    assert edited.id == report.id and pull.head_sha[:10] in edited.body
    assert len(bot.fake.calls("POST", f"/repos/{REPO}/issues/7/comments")) == 1


async def test_rerun_needs_write_access_and_runs_at_the_sha_pinned_then(bot):
    pull = bot.fake.add_pull(REPO, 8, head_sha=head(bot), base_ref="main")
    assert await bot.comment(pull, COMMAND, "reader") == 202
    for _ in range(100):
        if len(bot.fake.comments(REPO, 8)) == 2:
            break
        await asyncio.sleep(0.1)
    refusal = bot.fake.comments(REPO, 8)[-1]
    assert refusal.body.startswith("Sorry @reader")
    assert not bot.fake.check_runs(REPO)

    pinned = pull.head_sha
    assert await bot.comment(pull, f"please\n{COMMAND}\n", "maintainer") == 202
    (check_run,) = await bot.completed(pinned)
    assert check_run.conclusion == "success"
    reactions = [r.content for c in bot.fake.comments(REPO, 8) for r in c.reactions]
    assert reactions.count("eyes") == 2 and reactions.count("rocket") == 1
    assert len(bot.report_comments(8)) == 1


async def test_five_redeliveries_of_one_delivery_start_one_run(bot):
    pull = bot.fake.add_pull(REPO, 9, head_sha=head(bot), base_ref="main")
    merge = {"repository": {"clone_url": str(bot.repo)}}
    headers, body = bot.fake.webhook("pull_request", "opened", pull=pull, merge=merge)
    statuses = [await bot.deliver(headers, body) for _ in range(5)]
    assert statuses == [202, 200, 200, 200, 200]
    await bot.completed(pull.head_sha)
    await asyncio.sleep(0.5)
    assert len(bot.fake.check_runs(REPO, pull.head_sha)) == 1


async def test_a_forged_signature_is_refused_and_nothing_reaches_github(bot):
    pull = bot.fake.add_pull(REPO, 10, head_sha=head(bot), base_ref="main")
    before = len(bot.fake.calls())
    headers, body = bot.fake.webhook("pull_request", "opened", pull=pull, secret="not the secret")
    assert await bot.deliver(headers, body) == 401
    del headers["X-Hub-Signature-256"]
    assert await bot.deliver(headers, body) == 401
    await asyncio.sleep(0.5)
    assert len(bot.fake.calls()) == before


@pytest.mark.parametrize(
    ("content_type", "status"), [("text/plain", 415), ("application/json", 400)]
)
async def test_bad_deliveries_get_a_clear_status(bot, content_type, status):
    headers, body = bot.fake.webhook("push", merge={"repository": {"clone_url": str(bot.repo)}})
    if status == 400:
        body = b'{"ref": "refs/heads/main"}'
        headers["X-Hub-Signature-256"] = sign(body, bot.fake.webhook_secret)
    headers["Content-Type"] = content_type
    assert await bot.deliver(headers, body) == status


async def test_a_fork_waits_for_a_maintainer_and_then_runs_in_the_same_check_run(bot):
    pull = bot.fake.add_pull(REPO, 11, head_sha=head(bot), base_ref="main", head_repo="eve/scarlet")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (waiting,) = await bot.queued(pull.head_sha)
    assert waiting.status == "queued" and "/rerun-regression" in waiting.output["summary"]
    await asyncio.sleep(1.0)
    assert waiting.status == "queued", "fork code does not run by itself"
    assert await bot.comment(pull, COMMAND, "maintainer") == 202
    (done,) = await bot.completed(pull.head_sha)
    assert done.id == waiting.id and done.conclusion == "success"


async def test_the_re_run_button_of_a_fork_check_run_finds_its_pr_by_sha(bot):
    pull = bot.fake.add_pull(REPO, 12, head_sha=head(bot), base_ref="main")
    delivered = await bot.send(
        "check_run",
        "rerequested",
        repo=REPO,
        installation_id=bot.installation,
        head_sha=pull.head_sha,
        check_name=CHECK_NAME,
        pull_requests=[],
    )
    assert delivered == 202
    await bot.completed(pull.head_sha)
    assert len(bot.report_comments(12)) == 1


async def test_closing_a_pr_cancels_its_run(bot):
    source = sorted(bot.dataset.glob("*.npz"))[0]
    images = np.load(source)["images"].copy()
    images[0, 0, 0] = 1002.0  # the tiny deblender hangs on this blend
    write_blend_with(bot.dataset / "hangs.npz", source, images=images)
    pull = bot.fake.add_pull(REPO, 13, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await bot.started(pull.head_sha)
    pull.state = "closed"
    assert await bot.send("pull_request", "closed", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha, timeout=60)
    assert run.conclusion == "cancelled"
    assert run.output["summary"] == "The PR was closed."
    # The progress the runner printed before it was stopped is still read afterwards: it
    # must not reopen the concluded check run.
    service = bot.server.app[SERVICE]
    await service.on_progress(await service.jobs.latest(REPO, 13), "deblending", 1, 3)
    await asyncio.sleep(1.0)
    (run,) = bot.fake.check_runs(REPO, pull.head_sha)
    assert (run.status, run.conclusion) == ("completed", "cancelled")
    assert not bot.report_comments(13)


async def test_a_pr_closed_while_its_check_run_is_created_concludes_it(bot):
    # GitHub holds the check run's creation for a second (a secondary rate limit): the
    # PR is closed meanwhile, and its check run must not stay queued.
    bot.fake.fail_next("POST", "/repos/*/check-runs", 403, {"retry-after": "1"})
    pull = bot.fake.add_pull(REPO, 15, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await asyncio.sleep(0.3)
    pull.state = "closed"
    assert await bot.send("pull_request", "closed", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha, timeout=30)
    assert run.conclusion == "cancelled"
    await asyncio.sleep(0.5)
    assert not bot.report_comments(15)
    assert not any(_is_runner(p, bot) for p in Path("/proc").glob("[0-9]*")), "nothing ran"


async def test_github_failures_are_retried_to_one_comment_and_one_concluded_check_run(bot):
    fake = bot.fake
    fake.fail_next("POST", "/repos/*/check-runs", 503, times=2)
    fake.fail_next("PATCH", "/repos/*/check-runs/*", 502, times=2)
    fake.fail_next("GET", "/repos/*/issues/*/comments", 502)
    fake.fail_next("POST", "/repos/*/issues/*/comments", 403, {"retry-after": "0"})
    pull = fake.add_pull(REPO, 14, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success"
    assert len(bot.report_comments(14)) == 1
    assert len(fake.calls("POST", "/repos/*/check-runs", status=503)) == 2

    # The bot's cached installation token expires: a 401, a new token, and on.
    for token in list(fake.tokens):
        fake.expire_token(token)
    (bot.repo / "NOTES").write_text("after the token expired\n")
    pull.head_sha = commit(bot.repo, "third push")
    assert await bot.send("pull_request", "synchronize", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success"
    assert fake.calls(status=401), "the expired token was refused once"
    assert len(bot.report_comments(14)) == 1


async def test_a_runner_killed_mid_run_concludes_its_check_run(bot):
    source = sorted(bot.dataset.glob("*.npz"))[0]
    images = np.load(source)["images"].copy()
    images[0, 0, 0] = 1002.0  # the tiny deblender hangs on this blend: the run stays busy
    write_blend_with(bot.dataset / "hangs.npz", source, images=images)
    pull = bot.fake.add_pull(REPO, 15, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    runner = None
    for _ in range(600):
        runner = next(
            (int(p.name) for p in Path("/proc").glob("[0-9]*") if _is_runner(p, bot)),
            None,
        )
        if runner:
            break
        await asyncio.sleep(0.1)
    assert runner, "the runner started"
    await asyncio.sleep(2)
    os.kill(runner, signal.SIGKILL)
    (run,) = await bot.completed(pull.head_sha, timeout=30)
    assert run.conclusion == "failure"
    assert not bot.report_comments(15)


async def until(predicate, timeout: float = 30, step: float = 0.1) -> None:
    """Wait until ``predicate()`` holds (failing after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {timeout} s: {predicate.__doc__ or predicate}")
        await asyncio.sleep(step)


def _is_runner(proc: Path, bot: Bot) -> bool:
    """Whether ``proc`` is a runner this test's bot started (its data folder is unique)."""
    try:
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return TINY_RUNNER.name.encode() in cmdline and str(bot.settings.data_dir).encode() in cmdline


async def test_a_merged_pr_lands_in_the_trends_under_its_branch(bot):
    main_before = git(bot.repo, "rev-parse", "main")
    pull = bot.fake.add_pull(REPO, 12, head_sha=head(bot), head_ref="feature", base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await bot.completed(pull.head_sha)
    (report,) = bot.report_comments(12)
    trends = f"{bot.url}/{REPO}/trends?pr=12"
    assert f"[Trends]({trends})" in report.body

    # The PR is merged: the push of the merge commit runs as the default branch's history.
    git(bot.repo, "checkout", "--quiet", "main")
    git(bot.repo, "merge", "--quiet", "--no-ff", "-m", "Merge pull request #12", "feature")
    merged = git(bot.repo, "rev-parse", "main")
    pull.state, pull.merged, pull.merge_commit_sha = "closed", True, merged
    pushed = {"before": main_before, "ref": "refs/heads/main", "repo": REPO}
    pushed["installation_id"] = bot.installation
    assert await bot.send("push", head_sha=merged, **pushed) == 202
    (baseline,) = await bot.completed(merged)
    assert baseline.conclusion == "success", baseline.output
    # Both commits are main's own: a trusted run of it, whose work later runs reuse.
    service = bot.server.app[SERVICE]
    job = await service.jobs.latest(REPO)
    assert (job.kind, job.base, job.base_sha) == ("baseline", "refs/heads/main", main_before)
    result, _ = await asyncio.to_thread(service.load, job)
    assert result.provenance.trusted_ref == "main"

    async with bot.session.get(f"{bot.url}/{REPO}/trends.json?pr=12") as response:
        data = await response.json()
    assert [(p["label"], p["sha"]) for p in data["merges"]] == [("feature", merged)]
    assert data["current"]["label"] == "#12 feature"
    assert data["boxes"]["chi2_dof"][0]["all"]["n"] == 2  # two blends deblended
    async with bot.session.get(f"{bot.url}/{REPO}/branch/feature") as response:
        assert response.status == 200 and merged[:10] in await response.text()


async def test_gcs_failing_mid_run_fails_the_check_run_and_a_rerun_then_succeeds(
    gcs_bot, gcs_outage_emulator
):
    bot, gcs = gcs_bot, gcs_outage_emulator
    pull = bot.fake.add_pull(REPO, 16, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (first,) = await bot.completed(pull.head_sha)
    assert first.conclusion == "success", first.output
    (report,) = bot.report_comments(16)
    images = IMAGE.findall(report.body)
    assert len(images) == 2 and all(url.startswith(f"{bot.url}/artifacts/") for url in images)
    await bot.assert_images_resolve(images)

    # A push; GCS goes down as soon as its run reports progress, and stays down.
    (bot.repo / "NOTES").write_text("pushed while GCS goes down\n")
    pull.head_sha = commit(bot.repo, "second push")
    assert await bot.send("pull_request", "synchronize", pull=pull) == 202
    await bot.started(pull.head_sha)
    gcs.stop()
    (failed,) = await bot.completed(pull.head_sha, timeout=120)
    assert failed.conclusion == "failure"
    assert failed.output["title"] == "the artifact store failed"
    summary = failed.output["summary"]
    assert "could not be stored, so no report was posted" in summary
    assert "gs://scarlet-artifacts/regression/" in summary, "names the store"
    assert "/rerun-regression" in summary
    (kept,) = bot.report_comments(16)
    assert kept.id == report.id and kept.body == report.body, "the last good report stays"
    async with bot.session.get(images[0]) as response:
        assert response.status == 503, "an image is unavailable, not broken"

    # GCS is back on the same address: the old images resolve, and a maintainer's rerun
    # succeeds in a new check run and edits the one comment.
    assert gcs.start()
    await bot.assert_images_resolve(images)
    assert await bot.comment(pull, COMMAND, "maintainer") == 202
    runs = await bot.completed(pull.head_sha, count=2)
    (rerun,) = [run for run in runs if run.id != failed.id]
    assert rerun.conclusion == "success", rerun.output
    (final,) = bot.report_comments(16)
    assert final.id == report.id and pull.head_sha[:10] in final.body
    await bot.assert_images_resolve(IMAGE.findall(final.body))


async def test_a_direct_push_runs_even_when_its_pr_lookup_fails(bot):
    before = git(bot.repo, "rev-parse", "main")
    git(bot.repo, "checkout", "--quiet", "main")
    (bot.repo / "NOTES").write_text("pushed straight to main\n")
    pushed = commit(bot.repo, "a direct push")
    bot.fake.fail_next("GET", f"/repos/{REPO}/commits/*/pulls", 404)
    merge = {"repository": {"clone_url": str(bot.repo), "pushed_at": 1_790_000_000}}
    overrides = {"before": before, "ref": "refs/heads/main", "repo": REPO, "merge": merge}
    assert await bot.send("push", head_sha=pushed, installation_id=bot.installation, **overrides)
    # The lookup failed: the run still happens, labelled by the branch and the push's time.
    (run,) = await bot.completed(pushed)
    assert run.conclusion == "success", run.output
    async with bot.session.get(f"{bot.url}/{REPO}/trends.json") as response:
        (point,) = (await response.json())["merges"]
    assert (point["label"], point["when"]) == ("main", "2026-09-21T14:13:20+00:00")


async def test_a_bot_restarted_mid_run_runs_the_job_again_to_one_comment(bot):
    pull = bot.fake.add_pull(REPO, 17, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await bot.started(pull.head_sha)
    await bot.restart()  # the running job goes back to the durable queue
    # Killed: gone once the kernel has delivered the signal.
    await until(lambda: not any(_is_runner(p, bot) for p in Path("/proc").glob("[0-9]*")), 10)
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success", run.output
    assert len(bot.report_comments(17)) == 1
    assert len(bot.fake.calls("POST", f"/repos/{REPO}/check-runs")) == 1


async def test_a_500_on_reading_the_comments_is_retried_to_one_comment(bot):
    bot.fake.fail_next("GET", "/repos/*/issues/*/comments", 500)
    pull = bot.fake.add_pull(REPO, 18, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success" and "could not be written" not in run.output["summary"]
    assert len(bot.report_comments(18)) == 1
    assert bot.fake.calls("GET", "/repos/*/issues/*/comments", status=500)


async def test_a_comment_that_cannot_be_written_still_concludes_the_check_run(bot):
    # Creating the comment fails twice with a 500 (the bot looks, then tries once more).
    bot.fake.fail_next("POST", "/repos/*/issues/*/comments", 500, times=2)
    pull = bot.fake.add_pull(REPO, 19, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success", "the verdict, whatever happened to the comment"
    assert run.output["summary"].startswith("**The PR's report comment could not be written**")
    assert "/rerun-regression" in run.output["summary"]
    assert not bot.report_comments(19)


async def test_the_re_run_of_an_older_commit_reruns_that_commit_only(bot):
    pull = bot.fake.add_pull(REPO, 20, head_sha=head(bot), base_ref="main")
    old = pull.head_sha
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (old_run,) = await bot.completed(old)
    assert old_run.external_id, "the check run names its job"
    (bot.repo / "NOTES").write_text("a newer head\n")
    pull.head_sha = commit(bot.repo, "newer head")
    assert await bot.send("pull_request", "synchronize", pull=pull) == 202
    (new_run,) = await bot.completed(pull.head_sha)
    (report,) = bot.report_comments(20)
    assert pull.head_sha[:10] in report.body

    # The older commit's re-run button: its check suite lists the PR, whose head moved on.
    assert await bot.send(
        "check_run",
        "rerequested",
        repo=REPO,
        installation_id=bot.installation,
        head_sha=old,
        check_name=CHECK_NAME,
        pull_requests=[pull],
        merge={"check_run": {"external_id": old_run.external_id}},
    )
    runs = await bot.completed(old, count=2)
    (rerun,) = [run for run in runs if run.id != old_run.id]
    assert rerun.conclusion == "success"
    assert "no longer the pull request's head" in rerun.output["summary"]
    assert rerun.external_id not in (old_run.external_id, new_run.external_id)
    assert (new_run.status, new_run.conclusion) == ("completed", "success"), "left alone"
    (kept,) = bot.report_comments(20)
    assert kept.body == report.body, "the head's report stays"


async def test_only_the_bot_users_own_comment_is_the_report(bot):
    pull = bot.fake.add_pull(REPO, 21, head_sha=head(bot), base_ref="main")
    fake = f"{MARKER}\n## ✅ scarlet regression: pass (trust me)"
    by_person = bot.fake.add_comment(REPO, 21, fake, user="eve")
    through_app = bot.fake.add_comment(REPO, 21, fake, user="mallory", via_app=True)
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success"
    assert "could not be written" not in run.output["summary"]
    mine = [c for c in bot.report_comments(21) if c.user == bot.fake.bot_login]
    assert len(mine) == 1 and "scarlet regression: pass" in mine[0].body
    assert by_person.body == fake and through_app.body == fake, "theirs untouched"


async def test_a_delivery_whose_work_failed_can_be_redelivered(bot):
    # GitHub refuses the installation token: the work fails; GitHub's "Redeliver" then
    # sends the same delivery again, which must run.
    bot.fake.fail_next("POST", "/app/installations/*/access_tokens", 500)
    pull = bot.fake.add_pull(REPO, 22, head_sha=head(bot), base_ref="main")
    merge = {"repository": {"clone_url": str(bot.repo)}}
    headers, body = bot.fake.webhook("pull_request", "opened", pull=pull, merge=merge)
    assert await bot.deliver(headers, body) == 202
    for _ in range(100):
        if bot.fake.calls("POST", "/app/installations/*/access_tokens", status=500):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert not bot.fake.check_runs(REPO, pull.head_sha)
    assert await bot.deliver(headers, body) == 202, "redelivered, not a duplicate"
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success"
    assert await bot.deliver(headers, body) == 200, "now it is a duplicate"


@pytest.mark.parametrize("then", ["closed", "synchronize"])
async def test_a_forks_check_run_waiting_for_a_maintainer_ends_with_its_pr_or_sha(bot, then):
    pull = bot.fake.add_pull(REPO, 23, head_sha=head(bot), base_ref="main", head_repo="eve/scarlet")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await bot.queued(pull.head_sha)
    waiting = pull.head_sha
    if then == "synchronize":
        (bot.repo / "NOTES").write_text("the fork pushes again\n")
        pull.head_sha = commit(bot.repo, "fork push")
    else:
        pull.state = "closed"
    assert await bot.send("pull_request", then, pull=pull) == 202
    (run,) = await bot.completed(waiting, timeout=30)
    assert run.conclusion == "cancelled"
    expected = "The PR was closed." if then == "closed" else "Superseded by a newer push."
    assert run.output["summary"] == expected
    if then == "synchronize":  # the new head waits in a check run of its own
        await asyncio.sleep(0.5)
        (new,) = bot.fake.check_runs(REPO, pull.head_sha)
        assert new.status == "queued"


async def test_the_check_run_is_started_once_and_its_duration_runs_on(bot):
    pull = bot.fake.add_pull(REPO, 24, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (run,) = await bot.completed(pull.head_sha)
    progress = [
        call.json
        for call in bot.fake.calls("PATCH", f"/repos/{REPO}/check-runs/{run.id}")
        if call.json.get("status") == "in_progress"
    ]
    assert len(progress) > 2, "the runner reported progress several times"
    assert ["started_at" in update for update in progress] == [True] + [False] * (len(progress) - 1)


async def test_the_re_run_of_a_forks_check_run_is_a_run_of_its_pr(bot):
    pull = bot.fake.add_pull(REPO, 25, head_sha=head(bot), base_ref="main", head_repo="eve/scarlet")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await bot.queued(pull.head_sha)
    assert await bot.comment(pull, COMMAND, "maintainer") == 202
    (first,) = await bot.completed(pull.head_sha)
    (report,) = bot.report_comments(25)
    # Its check suite lists no PR (a fork), and GET /commits/{sha}/pulls neither.
    assert await bot.send(
        "check_run",
        "rerequested",
        repo=REPO,
        installation_id=bot.installation,
        head_sha=pull.head_sha,
        check_name=CHECK_NAME,
        pull_requests=[],
        merge={"check_run": {"external_id": first.external_id}},
    )
    runs = await bot.completed(pull.head_sha, count=2)
    (rerun,) = [run for run in runs if run.id != first.id]
    assert rerun.conclusion == "success"
    assert rerun.details_url == f"{bot.url}/{REPO}/pr/25", "the PR's run, not a baseline"
    (edited,) = bot.report_comments(25)
    assert edited.id == report.id


async def test_logs_are_json_lines_about_their_delivery(bot, capsys):
    bot.fake.fail_next("POST", "/app/installations/*/access_tokens", 500)
    pull = bot.fake.add_pull(REPO, 26, head_sha=head(bot), base_ref="main")
    merge = {"repository": {"clone_url": str(bot.repo)}}
    headers, body = bot.fake.webhook("pull_request", "opened", pull=pull, merge=merge)
    assert await bot.deliver(headers, body) == 202
    out = ""
    for _ in range(100):
        out += capsys.readouterr().out
        if "processing pull_request delivery" in out:
            break
        await asyncio.sleep(0.1)
    lines = [json.loads(line) for line in out.splitlines() if line]
    assert all({"severity", "message", "time"} <= set(line) for line in lines)

    # A failed delivery says which delivery, repository and PR, with its traceback.
    (failed,) = [line for line in lines if line["message"].startswith("processing")]
    assert failed["severity"] == "ERROR" and "Traceback" in failed["message"]
    assert (failed["delivery"], failed["repository"], failed["pr"]) == (
        headers["X-GitHub-Delivery"],
        REPO,
        26,
    )


async def test_a_maintainer_approves_a_forks_run_with_the_check_runs_button(bot):
    pull = bot.fake.add_pull(REPO, 27, head_sha=head(bot), base_ref="main", head_repo="eve/scarlet")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (waiting,) = await bot.queued(pull.head_sha)
    assert [action["identifier"] for action in waiting.actions] == ["approve"]

    async def press(user: str) -> int:
        return await bot.send(
            "check_run",
            "requested_action",
            repo=REPO,
            installation_id=bot.installation,
            head_sha=pull.head_sha,
            check_name=CHECK_NAME,
            check_run_id=waiting.id,
            sender=user,
            merge={
                "check_run": {"external_id": waiting.external_id},
                "requested_action": {"identifier": "approve"},
            },
        )

    assert await press("reader") == 202
    for _ in range(100):
        if bot.fake.comments(REPO, 27):
            break
        await asyncio.sleep(0.1)
    (refusal,) = bot.fake.comments(REPO, 27)
    assert refusal.body.startswith("Sorry @reader")
    await asyncio.sleep(0.5)
    assert waiting.status == "queued", "a reader's press runs nothing"

    assert await press("maintainer") == 202
    (done,) = await bot.completed(pull.head_sha)
    assert done.id == waiting.id and done.conclusion == "success"
    assert done.actions == [], "the button is gone once approved"
    assert len(bot.report_comments(27)) == 1


async def test_a_new_base_branch_runs_the_pr_again_against_it(bot):
    git(bot.repo, "branch", "develop", "main")
    pull = bot.fake.add_pull(REPO, 28, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (first,) = await bot.completed(pull.head_sha)
    pull.base_ref = "develop"
    changes = {"base": {"ref": {"from": "main"}, "sha": {"from": "0" * 40}}}
    assert await bot.send("pull_request", "edited", pull=pull, merge={"changes": changes}) == 202
    runs = await bot.completed(pull.head_sha, count=2)
    (second,) = [run for run in runs if run.id != first.id]
    assert second.conclusion == "success", second.output
    job = await bot.server.app[SERVICE].jobs.latest(REPO, 28)
    assert (job.base, job.base_sha) == ("refs/heads/develop", pull.base_sha)
    assert job.check_run_id == second.id
    # An edit of the title alone (the example's change) runs nothing.
    assert await bot.send("pull_request", "edited", pull=pull) == 202
    await asyncio.sleep(1.0)
    assert len(bot.fake.check_runs(REPO, pull.head_sha)) == 2


@pytest.mark.parametrize("event", ["installation.deleted", "installation_repositories.removed"])
async def test_an_uninstalled_repository_stops_its_runs(bot, event):
    source = sorted(bot.dataset.glob("*.npz"))[0]
    images = np.load(source)["images"].copy()
    images[0, 0, 0] = 1002.0  # the tiny deblender hangs on this blend: the run stays busy
    write_blend_with(bot.dataset / "hangs.npz", source, images=images)
    pull = bot.fake.add_pull(REPO, 29, head_sha=head(bot), base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    await bot.started(pull.head_sha)
    calls = len(bot.fake.calls())
    name, action = event.split(".")
    removed = {"id": 1, "node_id": "R_1", "name": "scarlet", "full_name": REPO, "private": False}
    merge = {"repositories_removed": [removed]} if name == "installation_repositories" else {}
    headers, body = bot.fake.webhook(name, action, installation_id=bot.installation, merge=merge)
    assert await bot.deliver(headers, body) == 202
    service = bot.server.app[SERVICE]
    for _ in range(100):
        job = await service.jobs.latest(REPO, 29)
        if job.finished:
            break
        await asyncio.sleep(0.1)
    assert (job.state, job.conclusion) == ("cancelled", "cancelled")
    for _ in range(100):
        if not any(_is_runner(p, bot) for p in Path("/proc").glob("[0-9]*")):
            break
        await asyncio.sleep(0.1)
    assert not any(_is_runner(p, bot) for p in Path("/proc").glob("[0-9]*")), "runner stopped"
    assert len(bot.fake.calls()) == calls, "nothing written to an installation that is gone"
