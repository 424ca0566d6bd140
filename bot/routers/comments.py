"""``/rerun-regression`` in a PR comment, by someone with write access."""

from __future__ import annotations

from gidgethub import routing
from gidgethub.sansio import Event

from bot import github
from bot.routers.pull_requests import run_request
from bot.service import RegressionService

router = routing.Router()

COMMAND = "/rerun-regression"
REFUSAL = (
    "Sorry @{user}, only people with write access to this repository can start "
    "`/rerun-regression`. A maintainer can run it for you."
)


def asks_for_rerun(body: str | None) -> bool:
    """Whether a line of the comment is exactly the command."""
    return any(line.strip() == COMMAND for line in (body or "").splitlines())


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
