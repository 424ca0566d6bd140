"""The drift issue: a failing drift run opens (or updates) one issue, the App's bot
user's, marked by ``DRIFT_MARKER``; a clean run comments on it and closes it. The text
comes from ``runner.publish.report``; ``bot.drift`` schedules the runs."""

from __future__ import annotations

from gidgethub import GitHubBroken
from gidgethub.abc import GitHubAPI

from bot.github import client as github
from runner.publish.report import DRIFT_MARKER, Links, drift_cleared, drift_failed, drift_issue
from runner.result import RunResult


async def report(
    gh: GitHubAPI, repository: str, result: RunResult, links: Links, bot_login: str
) -> None:
    """Open or update the drift issue (the App's bot user's) for a failing run; comment on
    and close it once a run is clean. A clean run with no open issue says nothing."""
    existing = await github.find_issue(gh, repository, DRIFT_MARKER, bot_login)
    if drift_failed(result):
        title, body = drift_issue(result, links)
        if existing is None:
            try:
                await github.open_issue(gh, repository, title, body)
                return
            except GitHubBroken:  # GitHub may have opened it after all: look again
                existing = await github.find_issue(gh, repository, DRIFT_MARKER, bot_login)
                if existing is None:
                    await github.open_issue(gh, repository, title, body)
                    return
        await github.edit_issue(gh, repository, existing["number"], title=title, body=body)
    elif existing is not None:
        await github.reply(gh, repository, existing["number"], drift_cleared(result, links))
        await github.edit_issue(
            gh, repository, existing["number"], state="closed", state_reason="completed"
        )
