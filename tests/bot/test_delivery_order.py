"""The bot under GitHub's real delivery order, end to end (GitHub's example webhooks in,
the fake GitHub validating every request on the other side, the real runner with the
tiny test deblender): deliveries late, redelivered or after the PR closed; a fork's code
before any approval; two PRs of one head SHA; buttons and commands on a closed PR; a
repository whose every write is refused; a delivery cut short by SIGTERM; a burst of
pushes."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

from test_bot import REPO, Bot, _is_runner, free_port, head, running_bot, until

from bot.routers.comments import COMMAND
from bot.service import SERVICE
from runner.commands.release_repo import commit
from runner.deblend.revisions import git

ARCHIVED = {
    "message": "Repository was archived so is read-only.",
    "documentation_url": "https://docs.github.com/rest",
}


def runners(bot: Bot) -> int:
    """How many runner processes this test's bot has started that still run."""
    return sum(_is_runner(proc, bot) for proc in Path("/proc").glob("[0-9]*"))


def push(bot: Bot, text: str) -> str:
    """A new commit on the PR branch; its SHA."""
    (bot.repo / "NOTES").write_text(text + "\n")
    return commit(bot.repo, text)


async def press_approve(bot: Bot, pull, check_run, user: str) -> int:
    """Deliver a press of "Approve and run" on ``check_run`` by ``user``."""
    return await bot.send(
        "check_run",
        "requested_action",
        repo=REPO,
        installation_id=bot.installation,
        head_sha=pull.head_sha,
        check_name=check_run.name,
        check_run_id=check_run.id,
        sender=user,
        merge={
            "check_run": {"external_id": check_run.external_id},
            "requested_action": {"identifier": "approve"},
        },
    )


async def test_an_older_push_delivered_late_or_redelivered_leaves_the_head_alone(bot):
    old = head(bot)
    pull = bot.fake.add_pull(REPO, 40, head_sha=old, base_ref="main")
    merge = {"repository": {"clone_url": str(bot.repo)}}
    # The older push's first delivery fails (GitHub refuses the token): it is released,
    # and GitHub's "Redeliver" sends it again later.
    bot.fake.fail_next("POST", "/app/installations/*/access_tokens", 500)
    failed = bot.fake.webhook("pull_request", "synchronize", pull=pull, merge=merge)
    assert await bot.deliver(*failed) == 202
    await until(lambda: bot.fake.calls("POST", "/app/installations/*/access_tokens", status=500))
    await asyncio.sleep(0.5)

    pull.head_sha = new = push(bot, "the newer push")
    assert await bot.send("pull_request", "synchronize", pull=pull) == 202
    # The older push again, after the newer one: late, then redelivered.
    assert await bot.send("pull_request", "synchronize", pull=pull, head_sha=old) == 202
    assert await bot.deliver(*failed) == 202, "redelivered (its first try failed)"

    (run,) = await bot.completed(new)
    assert run.conclusion == "success", run.output
    await asyncio.sleep(1.0)
    assert bot.fake.check_runs(REPO, old) == [], "nothing queued for a SHA that is not the head"
    (report,) = bot.report_comments(40)
    assert new[:10] in report.body


async def test_a_synchronize_delivered_after_the_pr_closed_runs_nothing(bot):
    pull = bot.fake.add_pull(REPO, 41, head_sha=head(bot), base_ref="main", state="closed")
    assert await bot.send("pull_request", "synchronize", pull=pull) == 202
    for _ in range(50):
        if bot.fake.calls("GET", f"/repos/{REPO}/pulls/41"):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert bot.fake.check_runs(REPO) == []
    assert runners(bot) == 0


async def test_no_reconciler_pass_starts_a_forks_code_while_its_check_run_is_made(
    fake_github, tmp_path, synthetic_set, monkeypatch
):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    async with running_bot(
        fake_github, tmp_path, synthetic_set, free_port(), reconcile_interval=0.2
    ) as bot:
        # GitHub holds the check run's creation for two seconds (a secondary rate limit),
        # while the reconciler passes ten times.
        fake_github.fail_next("POST", "/repos/*/check-runs", 403, {"retry-after": "2"})
        pull = fake_github.add_pull(
            REPO, 42, head_sha=head(bot), base_ref="main", head_repo="eve/scarlet"
        )
        assert await bot.send("pull_request", "opened", pull=pull) == 202
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert runners(bot) == 0, "a fork's code started before any approval"
            await asyncio.sleep(0.05)
        (waiting,) = fake_github.check_runs(REPO, pull.head_sha)
        assert waiting.status == "queued"
        assert [action["identifier"] for action in waiting.actions] == ["approve"]
        job = await bot.server.app[SERVICE].jobs.latest(REPO, 42)
        assert (job.state, job.attempts, job.check_run_id) == ("held", 0, waiting.id)


async def test_two_prs_of_one_head_sha_each_get_their_own_check_run_and_report(bot):
    # main's models became 10 % brighter than develop's; the PR's head, from main, changes
    # no model: it passes against main and fails against develop.
    git(bot.repo, "branch", "develop", "main")
    git(bot.repo, "checkout", "--quiet", "main")
    (bot.repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\nGAIN = 1.1\n")
    commit(bot.repo, "main: models 10 % brighter")
    git(bot.repo, "checkout", "--quiet", "-b", "shared", "main")
    sha = push(bot, "notes only")
    # As GitHub does, each PR's event names its base branch's newest commit.
    tips = {ref: git(bot.repo, "rev-parse", ref) for ref in ("main", "develop")}
    to_main, to_develop = (
        bot.fake.add_pull(
            REPO, number, head_sha=sha, head_ref="shared", base_ref=ref, base_sha=tips[ref]
        )
        for number, ref in ((43, "main"), (44, "develop"))
    )
    assert await bot.send("pull_request", "opened", pull=to_main) == 202
    assert await bot.send("pull_request", "opened", pull=to_develop) == 202

    runs = await bot.completed(sha, count=2, timeout=300)
    by_name = {run.name: run for run in runs}
    assert set(by_name) == {"scarlet regression", "scarlet regression (develop)"}
    service = bot.server.app[SERVICE]
    for pull, run in ((to_main, by_name["scarlet regression"]),
                      (to_develop, by_name["scarlet regression (develop)"])):  # fmt: skip
        job = await service.jobs.latest(REPO, pull.number)
        assert (job.check_run_id, job.base) == (run.id, f"refs/heads/{pull.base_ref}")
        (report,) = bot.report_comments(pull.number)
        verdict = report.body.split("scarlet regression: ", 1)[1].split()[0]
        expected = {"pass": "success", "fail": "failure", "neutral": "neutral"}[verdict]
        assert run.conclusion == expected, (pull.number, verdict, run.conclusion)
        assert run.output["title"].startswith(verdict)
    assert (
        by_name["scarlet regression"].conclusion
        != by_name["scarlet regression (develop)"].conclusion
    ), "one head, two bases, two verdicts"


async def test_the_approve_button_after_the_pr_closed_runs_nothing(bot):
    pull = bot.fake.add_pull(REPO, 45, head_sha=head(bot), base_ref="main", head_repo="eve/scarlet")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (waiting,) = await bot.queued(pull.head_sha)
    assert waiting.actions, "the button while it waits"
    pull.state = "closed"
    assert await bot.send("pull_request", "closed", pull=pull) == 202
    (closed,) = await bot.completed(pull.head_sha, timeout=30)
    assert (closed.conclusion, closed.actions) == ("cancelled", []), "no button once concluded"

    assert await press_approve(bot, pull, waiting, "maintainer") == 202
    await asyncio.sleep(2.0)
    assert runners(bot) == 0
    (run,) = bot.fake.check_runs(REPO, pull.head_sha)
    assert (run.id, run.status, run.conclusion) == (closed.id, "completed", "cancelled")
    job = await bot.server.app[SERVICE].jobs.latest(REPO, 45)
    assert (job.state, job.attempts) == ("cancelled", 0)


async def test_rerun_regression_on_a_closed_pr_runs_nothing(bot):
    pull = bot.fake.add_pull(REPO, 46, head_sha=head(bot), base_ref="main", state="closed")
    assert await bot.comment(pull, COMMAND, "maintainer") == 202
    await until(lambda: any(r.content == "confused" for c in bot.fake.comments(REPO, 46)
                            for r in c.reactions), timeout=10)  # fmt: skip
    await asyncio.sleep(0.5)
    assert bot.fake.check_runs(REPO) == []
    assert runners(bot) == 0


async def test_a_refusal_is_commented_once_per_pr_then_only_reacted_to(bot):
    pull = bot.fake.add_pull(REPO, 47, head_sha=head(bot), base_ref="main")
    for _ in range(3):
        assert await bot.comment(pull, COMMAND, "reader") == 202
    commands = [c for c in bot.fake.comments(REPO, 47) if c.body == COMMAND]

    def reacted() -> bool:
        """Every command got its eyes, and the last two their confused face."""
        contents = [[r.content for r in c.reactions] for c in commands]
        return all("eyes" in c for c in contents) and sum("confused" in c for c in contents) == 2

    await until(reacted, timeout=15)
    refusals = [c for c in bot.fake.comments(REPO, 47) if c.body.startswith("Sorry @reader")]
    assert len(refusals) == 1
    assert bot.fake.check_runs(REPO) == []


async def test_a_delivery_cut_short_by_sigterm_is_released_for_its_redelivery(bot):
    # GitHub holds the check run's creation (a secondary rate limit of 30 s): the bot is
    # stopped (a deploy: SIGTERM) meanwhile.
    bot.fake.fail_next("POST", "/repos/*/check-runs", 403, {"retry-after": "30"})
    pull = bot.fake.add_pull(REPO, 48, head_sha=head(bot), base_ref="main")
    merge = {"repository": {"clone_url": str(bot.repo)}}
    delivery = bot.fake.webhook("pull_request", "opened", pull=pull, merge=merge)
    assert await bot.deliver(*delivery) == 202
    await until(lambda: bot.fake.calls("POST", "/repos/*/check-runs", status=403))
    await bot.restart()
    assert await bot.deliver(*delivery) == 202, "redelivered, not taken as a duplicate"
    (run,) = await bot.completed(pull.head_sha)
    assert run.conclusion == "success", run.output
    assert len(bot.report_comments(48)) == 1
    assert await bot.deliver(*delivery) == 200, "now it is done"


async def test_a_repository_refusing_every_report_is_tried_a_bounded_number_of_times(
    fake_github, tmp_path, synthetic_set, monkeypatch, capsys
):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    settings = {"lease": 1.0, "reconcile_interval": 0.3, "report_backoff": 0.2}
    async with running_bot(
        fake_github, tmp_path, synthetic_set, free_port(), report_attempts=3, **settings
    ) as bot:
        # The repository is archived while its run goes on: every report write is a 403.
        for method, path, when in (
            ("PATCH", "/repos/*/check-runs/*", {"status": "completed"}),
            ("POST", "/repos/*/issues/*/comments", None),
        ):
            fake_github.fail_next(method, path, 403, body=ARCHIVED, times=10**6, when=when)
        pull = fake_github.add_pull(REPO, 49, head_sha=head(bot), base_ref="main")
        assert await bot.send("pull_request", "opened", pull=pull) == 202
        service = bot.server.app[SERVICE]
        job = None
        for _ in range(1200):
            job = await service.jobs.latest(REPO, 49)
            if job is not None and job.notified:
                break
            await asyncio.sleep(0.1)
        assert job.notified and job.conclusion == "success", job
        assert job.report_attempts == 3
        assert "Repository was archived" in job.report_error
        refused = len(fake_github.calls(status=403))
        assert refused == 3 * 2, "three tries of the comment and of the conclusion"
        await asyncio.sleep(3.0)
        assert len(fake_github.calls(status=403)) == refused, "then never again"

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    errors = [line["message"] for line in lines if line["severity"] == "ERROR"]
    assert len(errors) == 1 and "failed to report" in errors[0], errors


async def test_a_burst_of_pushes_runs_at_most_the_cap_and_reports_the_newest(
    fake_github, tmp_path, synthetic_set, monkeypatch
):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    async with running_bot(
        fake_github, tmp_path, synthetic_set, free_port(), concurrency=4, runs_per_repository=2
    ) as bot:
        pull = fake_github.add_pull(REPO, 50, head_sha=head(bot), base_ref="main")
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, runners(bot))
                await asyncio.sleep(0.05)

        # Twenty pushes within seconds: their deliveries arrive together, in no order.
        shas = [push(bot, f"push {n}") for n in range(20)]
        merge = {"repository": {"clone_url": str(bot.repo)}}
        deliveries = [
            fake_github.webhook("pull_request", "synchronize", pull=pull, head_sha=sha, merge=merge)
            for sha in shas
        ]
        pull.head_sha = newest = shas[-1]
        watching = asyncio.create_task(watch())
        try:
            random.Random(25).shuffle(deliveries)
            statuses = await asyncio.gather(*(bot.deliver(*d) for d in deliveries))
            assert statuses == [202] * 20
            (run,) = await bot.completed(newest, timeout=300)
            await asyncio.sleep(2.0)
        finally:
            watching.cancel()
        assert run.conclusion == "success", run.output
        runs = fake_github.check_runs(REPO)
        assert all(r.status == "completed" for r in runs), "none left queued or in progress"
        assert [r.head_sha for r in runs if r.conclusion != "cancelled"] == [newest]
        (report,) = bot.report_comments(50)
        assert newest[:10] in report.body
        assert most <= 2, f"{most} runs at once"
