"""Attacks played as pull requests through the running bot (the fake GitHub, the real
runner with the tiny deblender): a tag named like the base branch, and a PR whose version
string and error messages are Markdown meant for the reader."""

from __future__ import annotations

import cmarkgfm
import pytest_asyncio
from cmarkgfm.cmark import Options
from test_bot import REPO, free_port, head, running_bot
from test_untrusted_text import HOSTILE, assert_inert

from bot.settings import CHECK_NAME
from runner.commands.release_repo import commit
from runner.deblend.revisions import git
from runner.result import RunResult
from runner.store import run_prefix


@pytest_asyncio.fixture
async def bot(fake_github, tmp_path, synthetic_set, monkeypatch):
    """The bot with its local store (as test_bot's)."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    async with running_bot(fake_github, tmp_path, synthetic_set, free_port()) as running:
        yield running


def stored_result(bot, pr: int, sha: str) -> RunResult:
    key = run_prefix(REPO, pr, sha) + "result.json"
    return RunResult.from_json((bot.settings.data_dir / "store" / key).read_text())


async def test_a_tag_named_like_the_base_branch_cannot_move_the_base(bot):
    main = git(bot.repo, "rev-parse", "refs/heads/main")
    # Anyone who may push a tag: `main` at a commit whose models are three times as bright.
    git(bot.repo, "checkout", "--quiet", "-b", "elsewhere", main)
    (bot.repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\nGAIN = 3\n")
    git(bot.repo, "tag", "main", commit(bot.repo, "not the base"))
    git(bot.repo, "checkout", "--quiet", "feature")

    pull = bot.fake.add_pull(REPO, 41, head_sha=head(bot), base_ref="main")
    assert pull.base_sha == main
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (check_run,) = await bot.completed(pull.head_sha)
    assert check_run.conclusion == "success", check_run.output  # 0.1 % brighter than main
    provenance = stored_result(bot, 41, pull.head_sha).provenance
    assert (provenance.base.rev, provenance.base.sha) == ("refs/heads/main", main)


async def test_a_prs_version_and_errors_reach_its_report_inert(bot):
    # Its version string is Markdown, and every deblend raises a message of its choosing.
    git(bot.repo, "checkout", "--quiet", "feature")
    (bot.repo / "tinydeblender" / "__init__.py").write_text(
        f"__version__ = {HOSTILE!r}\n\n\n"
        "class _Gain:\n"
        "    __array_ufunc__ = None\n\n"
        "    def __rmul__(self, other):\n"
        f"        raise ValueError({HOSTILE!r})\n\n\n"
        "GAIN = _Gain()\n"
    )
    sha = commit(bot.repo, "a hostile PR")
    pull = bot.fake.add_pull(REPO, 42, head_sha=sha, base_ref="main")
    assert await bot.send("pull_request", "opened", pull=pull) == 202
    (check_run,) = await bot.completed(sha)
    assert check_run.name == CHECK_NAME and check_run.conclusion == "failure"
    result = stored_result(bot, 42, sha)
    assert result.provenance.head.deblender_version == HOSTILE
    assert all("safe to merge" in b.head.error for b in result.blends)

    def rendered(text: str) -> str:
        return cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE)

    (report,) = bot.report_comments(42)
    assert_inert(rendered(report.body))
    assert_inert(rendered(check_run.output["summary"]))
    assert_inert(rendered(check_run.output["text"]))
    async with bot.session.get(check_run.details_url) as response:
        assert response.status == 200
        assert_inert(await response.text())
