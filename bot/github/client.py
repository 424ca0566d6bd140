"""The bot's calls to GitHub's REST API, each a small function of a gidgethub client."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from gidgethub import GitHubBroken, GitHubException
from gidgethub.abc import GitHubAPI

from bot.settings import CHECK_NAME
from runner.publish.report import MARKER, CheckRunOutput

log = logging.getLogger(__name__)

WRITERS = ("admin", "write")
CHECK_BYTES = 65_535  # GitHub: "summary exceeds a maximum bytesize of 65535"


def now() -> str:
    """The current time as GitHub writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clip(text: str, limit: int = CHECK_BYTES) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


def _output(output: CheckRunOutput) -> dict[str, str]:
    """The output as GitHub takes it: summary and text within its limit in bytes (the
    report measures characters; multi-byte text may exceed it)."""
    return {"title": output.title, "summary": clip(output.summary), "text": clip(output.text)}


APPROVE = "approve"
# A button of a fork's waiting check run (GitHub: label ≤ 20, description ≤ 40 characters).
APPROVE_ACTION = {
    "label": "Approve and run",
    "description": "Run this fork's code (maintainers only)",
    "identifier": APPROVE,
}


async def create_check_run(
    gh: GitHubAPI,
    repository: str,
    head_sha: str,
    details_url: str,
    output: CheckRunOutput,
    external_id: str,
    approvable: bool = False,
) -> int:
    """Create the queued check run on ``head_sha`` for the job ``external_id`` (with the
    "Approve and run" button when ``approvable``); return its id. After a 5xx GitHub may
    have created it: look for it before creating it again."""
    data = {
        "name": CHECK_NAME,
        "head_sha": head_sha,
        "status": "queued",
        "details_url": details_url,
        "external_id": external_id,
        "output": _output(output),
        "actions": [APPROVE_ACTION] if approvable else [],
    }
    try:
        created = await gh.post(f"/repos/{repository}/check-runs", data=data)
    except GitHubBroken:
        existing = await waiting_check_run(gh, repository, head_sha)
        if existing is not None:
            return existing
        created = await gh.post(f"/repos/{repository}/check-runs", data=data)
    return int(created["id"])


async def adopt_check_run(
    gh: GitHubAPI, repository: str, check_run_id: int, job_id: str, approvable: bool = False
) -> None:
    """Point a check run made for an earlier job (a fork's, waiting) at the job ``job_id``,
    with the "Approve and run" button only while it waits (``approvable``)."""
    data = {"external_id": job_id, "actions": [APPROVE_ACTION] if approvable else []}
    await gh.patch(f"/repos/{repository}/check-runs/{check_run_id}", data=data)


async def check_run_job(gh: GitHubAPI, repository: str, head_sha: str) -> str | None:
    """The job id (``external_id``) of the newest check run of ours on ``head_sha``."""
    url = f"/repos/{repository}/commits/{head_sha}/check-runs?check_name={CHECK_NAME}"
    async for run in gh.getiter(url, iterable_key="check_runs"):
        if run.get("external_id"):
            return str(run["external_id"])
    return None


async def waiting_check_run(gh: GitHubAPI, repository: str, head_sha: str) -> int | None:
    """A queued check run of ours on ``head_sha`` (e.g. a fork's, waiting for approval)."""
    url = f"/repos/{repository}/commits/{head_sha}/check-runs?check_name={CHECK_NAME}"
    async for run in gh.getiter(url, iterable_key="check_runs"):
        if run.get("status") == "queued":
            return int(run["id"])
    return None


async def start_check_run(
    gh: GitHubAPI, repository: str, check_run_id: int, output: CheckRunOutput, first: bool
) -> None:
    """Mark the check run in progress with ``output`` (phase and blends done); its
    ``started_at`` only with the ``first`` progress, so that its duration runs on."""
    data = {"status": "in_progress", "output": _output(output)}
    if first:
        data["started_at"] = now()
    await gh.patch(f"/repos/{repository}/check-runs/{check_run_id}", data=data)


async def complete_check_run(
    gh: GitHubAPI, repository: str, check_run_id: int, conclusion: str, output: CheckRunOutput
) -> None:
    """Conclude the check run (success, failure, neutral, cancelled or timed_out)."""
    await gh.patch(
        f"/repos/{repository}/check-runs/{check_run_id}",
        data={
            "status": "completed",
            "conclusion": conclusion,
            "completed_at": now(),
            "output": _output(output),
        },
    )


def by_bot(item: dict[str, Any], bot_login: str) -> bool:
    """Whether a comment or issue was written by the App's own bot user (``<slug>[bot]``,
    of type ``Bot``): not by a person, even one acting through the App."""
    user = item.get("user") or {}
    return user.get("login") == bot_login and user.get("type") == "Bot"


async def find_comment(
    gh: GitHubAPI, repository: str, number: int, bot_login: str
) -> dict[str, Any] | None:
    """The bot's report comment on a PR: by the bot user, behind the hidden marker (all
    pages). Anyone may copy the marker; only the bot's own comment counts."""
    url = f"/repos/{repository}/issues/{number}/comments?per_page=100"
    async for comment in gh.getiter(url):
        if by_bot(comment, bot_login) and (comment.get("body") or "").startswith(MARKER):
            return comment
    return None


async def upsert_comment(
    gh: GitHubAPI, repository: str, number: int, body: str, bot_login: str
) -> int:
    """Edit the report comment in place, or create it the first time; return its id.
    After a 5xx on creating it, GitHub may have: look again before posting."""
    existing = await find_comment(gh, repository, number, bot_login)
    if existing is None:
        try:
            return await _post_comment(gh, repository, number, body)
        except GitHubBroken:
            existing = await find_comment(gh, repository, number, bot_login)
            if existing is None:
                return await _post_comment(gh, repository, number, body)
    await gh.patch(f"/repos/{repository}/issues/comments/{existing['id']}", data={"body": body})
    return int(existing["id"])


async def _post_comment(gh: GitHubAPI, repository: str, number: int, body: str) -> int:
    data = await gh.post(f"/repos/{repository}/issues/{number}/comments", data={"body": body})
    return int(data["id"])


async def reply(gh: GitHubAPI, repository: str, number: int, body: str) -> None:
    """Post a short comment (not the report) on an issue or PR."""
    await gh.post(f"/repos/{repository}/issues/{number}/comments", data={"body": body})


async def react(gh: GitHubAPI, repository: str, comment_id: int, content: str) -> None:
    """React to an issue comment (e.g. ``eyes`` on receipt, ``rocket`` once queued)."""
    await gh.post(
        f"/repos/{repository}/issues/comments/{comment_id}/reactions", data={"content": content}
    )


async def can_write(gh: GitHubAPI, repository: str, user: str) -> bool:
    """Whether ``user`` has write access or more (maintain counts as write)."""
    data = await gh.getitem(f"/repos/{repository}/collaborators/{user}/permission")
    return data.get("permission") in WRITERS


async def pull_request(gh: GitHubAPI, repository: str, number: int) -> dict[str, Any]:
    """The pull request ``number``."""
    return await gh.getitem(f"/repos/{repository}/pulls/{number}")


async def merged_pull_request(gh: GitHubAPI, repository: str, sha: str) -> dict | None:
    """The pull request that landed as commit ``sha`` on its base branch, if any."""
    pulls = await gh.getitem(f"/repos/{repository}/commits/{sha}/pulls")
    for pull in pulls:
        if pull.get("merged_at") and pull.get("merge_commit_sha") == sha:
            return pull
    return None


async def landing(gh: GitHubAPI, repository: dict, sha: str) -> tuple[str, str | None]:
    """What labels commit ``sha`` of the default branch in the trends: the head branch of
    the PR that landed as it and when, else the default branch (time unknown). A failed
    lookup only costs the label, never the run."""
    try:
        merged = await merged_pull_request(gh, repository["full_name"], sha)
    except GitHubException as error:
        log.warning("no PR lookup for %s@%s: %s", repository["full_name"], sha, error)
        merged = None
    if merged is None:
        return repository["default_branch"], None
    return merged["head"]["ref"], merged["merged_at"]


async def pull_request_for_sha(gh: GitHubAPI, repository: str, sha: str) -> dict | None:
    """An open pull request whose head is ``sha``, if any (fork check runs carry none)."""
    pulls = await gh.getitem(f"/repos/{repository}/commits/{sha}/pulls")
    for pull in pulls:
        if pull.get("state") == "open" and pull["head"]["sha"] == sha:
            return pull
    return None


async def installation_ids(gh: GitHubAPI) -> list[int]:
    """The app's installations (``gh`` authenticated as the app)."""
    return [int(installation["id"]) async for installation in gh.getiter("/app/installations")]


async def installation_repositories(gh: GitHubAPI) -> list[dict[str, Any]]:
    """The repositories of the installation ``gh`` acts for (all pages)."""
    url = "/installation/repositories?per_page=100"
    return [repo async for repo in gh.getiter(url, iterable_key="repositories")]


async def branch_head(gh: GitHubAPI, repository: str, branch: str) -> str:
    """The SHA at the head of ``branch``."""
    data = await gh.getitem(f"/repos/{repository}/branches/{branch}")
    return str(data["commit"]["sha"])


async def find_issue(
    gh: GitHubAPI, repository: str, marker: str, bot_login: str
) -> dict[str, Any] | None:
    """The open issue (not a pull request) the App's bot user opened whose body starts
    with ``marker``, if any (one a person, or another app, wrote with it is not ours)."""
    url = f"/repos/{repository}/issues?state=open&per_page=100"
    async for issue in gh.getiter(url):
        ours = by_bot(issue, bot_login) and "pull_request" not in issue
        if ours and (issue.get("body") or "").startswith(marker):
            return issue
    return None


async def open_issue(gh: GitHubAPI, repository: str, title: str, body: str) -> int:
    """Open an issue; return its number."""
    data = await gh.post(f"/repos/{repository}/issues", data={"title": title, "body": body})
    return int(data["number"])


async def edit_issue(gh: GitHubAPI, repository: str, number: int, **fields: str) -> None:
    """Change an issue's title, body or state (``state="closed"``, ``state_reason``)."""
    await gh.patch(f"/repos/{repository}/issues/{number}", data=fields)
