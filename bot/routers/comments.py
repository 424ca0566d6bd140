"""``/rerun-regression`` in a PR comment, by someone with write access."""

from __future__ import annotations

import re

from gidgethub import routing
from gidgethub.sansio import Event

from bot.github import client as github
from bot.routers.pull_requests import run_request
from bot.service import RegressionService

router = routing.Router()

COMMAND = "/rerun-regression"
REFUSAL = (
    "Sorry @{user}, only people with write access to this repository can start "
    "`/rerun-regression`. A maintainer can run it for you."
)


FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
HTML_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.DOTALL)


def asks_for_rerun(body: str | None) -> bool:
    """Whether a line of the comment's own text is the command (any case): not inside a
    fenced or indented code block, a quote (``> /rerun-regression``) or an HTML comment."""
    fence = None
    for line in HTML_COMMENT.sub("", body or "").splitlines():
        opening = FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            continue
        if opening:
            fence = opening.group(1)
        elif not line.startswith(("    ", "\t")) and line.strip().lower() == COMMAND:
            return True
    return False


@router.register("issue_comment", action="created")
async def rerun_command(event: Event, gh, service: RegressionService) -> None:
    """React 👀, check permission, pin the PR's head SHA now, queue the run, react 🚀."""
    data = event.data
    if "pull_request" not in data["issue"] or not asks_for_rerun(data["comment"]["body"]):
        return
    repository = data["repository"]["full_name"]
    comment_id, user = data["comment"]["id"], data["comment"]["user"]["login"]
    number = data["issue"]["number"]
    await github.react(gh, repository, comment_id, "eyes")
    if not await github.can_write(gh, repository, user):
        await github.reply(gh, repository, number, REFUSAL.format(user=user))
        return
    pull = await github.pull_request(gh, repository, number)
    payload = {**data, "pull_request": pull}
    await service.request_run(gh, run_request(payload, approved=True))
    await github.react(gh, repository, comment_id, "rocket")
