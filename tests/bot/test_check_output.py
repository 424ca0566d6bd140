"""A check run's output within GitHub's limits, which are bytes of UTF-8, not characters."""

from __future__ import annotations

import aiohttp

from bot.github import client as github
from bot.github.client import CHECK_BYTES, clip
from bot.github.resilience import ResilientGitHubAPI
from bot.settings import CHECK_NAME
from runner.publish.report import CheckRunOutput

REPO = "octo/scarlet"


def test_clip_cuts_bytes_on_a_character_boundary():
    assert clip("abc", 2) == "ab"
    assert clip("ΔΔΔ", 5) == "ΔΔ"  # 2 bytes each: a third would pass the limit
    assert clip("✓✓", 4) == "✓"  # 3 bytes each
    assert clip("plain", 100) == "plain"


async def test_an_output_near_the_limit_in_multibyte_text_is_accepted_within_bytes(fake_github):
    installation = fake_github.add_installation("octo", [REPO])
    token = fake_github.issue_token(installation.id)
    summary = "Δmag −0.01 σ " * 5000  # 65,000 characters, over 80,000 bytes
    text = "✓ " * 32_000
    assert len(summary) <= CHECK_BYTES < len(summary.encode())
    async with aiohttp.ClientSession() as session:
        gh = ResilientGitHubAPI(session, "test", oauth_token=token, base_url=fake_github.url)
        queued = CheckRunOutput("queued", "Queued.", "")
        check_run = await github.create_check_run(
            gh, REPO, "a" * 40, CHECK_NAME, "https://x", queued, "job-1"
        )
        output = CheckRunOutput("fail: 3 metrics regressed", summary, text)
        await github.complete_check_run(gh, REPO, check_run, "failure", output)
    (run,) = fake_github.check_runs(REPO)
    assert (run.status, run.conclusion) == ("completed", "failure")
    assert CHECK_BYTES - 3 <= len(run.output["summary"].encode()) <= CHECK_BYTES
    assert summary.startswith(run.output["summary"])
    assert len(run.output["text"].encode()) <= CHECK_BYTES and text.startswith(run.output["text"])
