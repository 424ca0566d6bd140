"""Pull requests: a run per pushed head; closing cancels it.

GitHub does not order deliveries and redelivers on request, so the PR, not the payload,
says what its head is: each delivery reads the PR once (after the webhook was answered)
and one whose head SHA is no longer the PR's, or whose PR is closed (or reopened, for a
``closed`` delivery), queues nothing and cancels nothing.
"""

from __future__ import annotations

import asyncio
import logging

from gidgethub import routing
from gidgethub.sansio import Event

from bot.github import client as github
from bot.service import RegressionService, RunRequest

router = routing.Router()
log = logging.getLogger(__name__)
BASE_CHANGED = "The PR's base branch changed: it runs against the new one."
LAG_READS = 3  # reads of a PR that GitHub answers older than the delivery (replica lag)
LAG_WAIT = 1.0


def run_request(data: dict, approved: bool = False) -> RunRequest:
    """The run for a pull request payload's head against its base branch."""
    pull, repository = data["pull_request"], data["repository"]
    head_repo = (pull["head"].get("repo") or {}).get("full_name")
    return RunRequest(
        repository=repository["full_name"],
        installation_id=data["installation"]["id"],
        head_sha=pull["head"]["sha"],
        base=f"refs/heads/{pull['base']['ref']}",  # a tag named like it is not the base
        base_sha=pull["base"]["sha"],
        clone_url=repository["clone_url"],
        pr=pull["number"],
        fork=head_repo != repository["full_name"],
        approved=approved,
        branch=pull["head"]["ref"],
        default_branch=repository.get("default_branch"),
    )


async def current(gh, data: dict) -> dict:
    """The PR as GitHub has it now (read again, briefly, while GitHub answers a version
    older than the delivery's)."""
    delivered = data["pull_request"]
    repository = data["repository"]["full_name"]
    for attempt in range(LAG_READS):
        pull = await github.pull_request(gh, repository, delivered["number"])
        if str(pull.get("updated_at") or "") >= str(delivered.get("updated_at") or ""):
            return pull
        if attempt + 1 < LAG_READS:
            await asyncio.sleep(LAG_WAIT)
    return delivered  # GitHub lags still: the delivery is the newest word


def stale(event: Event, pull: dict, state: str = "open") -> bool:
    """Whether the delivery is no longer about the PR as it is (logged): its head SHA
    is not the PR's head, or the PR is not in ``state``."""
    delivered = event.data["pull_request"]
    if pull["head"]["sha"] == delivered["head"]["sha"] and pull["state"] == state:
        return False
    log.info(
        "stale %s.%s delivery of #%s at %s: the PR is %s at %s; nothing done",
        event.event,
        event.data.get("action"),
        delivered["number"],
        delivered["head"]["sha"][:10],
        pull["state"],
        pull["head"]["sha"][:10],
    )
    return True


@router.register("pull_request", action="opened")
@router.register("pull_request", action="synchronize")
@router.register("pull_request", action="reopened")
@router.register("pull_request", action="ready_for_review")
async def pull_request_pushed(event: Event, gh, service: RegressionService) -> None:
    """Queue a run for the PR's head, if the delivery is of it (drafts wait unless the
    bot runs them)."""
    data = event.data
    repository, number = data["repository"]["full_name"], data["pull_request"]["number"]
    async with service.requesting(repository, number):
        pull = await current(gh, data)
        if stale(event, pull):
            return
        if pull.get("draft") and not service.settings.run_drafts:
            return
        await service.request_run(gh, run_request({**data, "pull_request": pull}))


@router.register("pull_request", action="edited")
async def base_changed(event: Event, gh, service: RegressionService) -> None:
    """A new base branch: the PR's runs against the old one are cancelled, and its head
    runs against the new one."""
    data = event.data
    if "base" not in (data.get("changes") or {}) or data["pull_request"]["state"] != "open":
        return
    repository, number = data["repository"]["full_name"], data["pull_request"]["number"]
    async with service.requesting(repository, number):
        pull = await current(gh, data)
        if stale(event, pull) or pull["base"]["ref"] != data["pull_request"]["base"]["ref"]:
            return
        if pull.get("draft") and not service.settings.run_drafts:
            return
        await service.cancel_pr(gh, repository, number, reason=BASE_CHANGED)
        await service.request_run(gh, run_request({**data, "pull_request": pull}))


@router.register("pull_request", action="closed")
async def pull_request_closed(event: Event, gh, service: RegressionService) -> None:
    """Cancel the PR's held, queued or running jobs (unless it was reopened since)."""
    data = event.data
    repository, number = data["repository"]["full_name"], data["pull_request"]["number"]
    async with service.requesting(repository, number):
        pull = await current(gh, data)
        if pull["state"] == "open" and stale(event, pull, state="closed"):
            return  # reopened since
        await service.cancel_pr(gh, repository, number)
