"""Pull requests: a run per pushed head; closing cancels it."""

from __future__ import annotations

from gidgethub import routing
from gidgethub.sansio import Event

from bot.service import RegressionService, RunRequest

router = routing.Router()
BASE_CHANGED = "The PR's base branch changed: it runs against the new one."


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
    )


@router.register("pull_request", action="opened")
@router.register("pull_request", action="synchronize")
@router.register("pull_request", action="reopened")
@router.register("pull_request", action="ready_for_review")
async def pull_request_pushed(event: Event, gh, service: RegressionService) -> None:
    """Queue a run for the PR's head (drafts wait unless the bot runs them)."""
    if event.data["pull_request"].get("draft") and not service.settings.run_drafts:
        return
    await service.request_run(gh, run_request(event.data))


@router.register("pull_request", action="edited")
async def base_changed(event: Event, gh, service: RegressionService) -> None:
    """A new base branch: the PR's runs against the old one are cancelled, and its head
    runs against the new one."""
    data = event.data
    if "base" not in (data.get("changes") or {}) or data["pull_request"]["state"] != "open":
        return
    if data["pull_request"].get("draft") and not service.settings.run_drafts:
        return
    repository, number = data["repository"]["full_name"], data["pull_request"]["number"]
    await service.cancel_pr(gh, repository, number, reason=BASE_CHANGED)
    await service.request_run(gh, run_request(data))


@router.register("pull_request", action="closed")
async def pull_request_closed(event: Event, gh, service: RegressionService) -> None:
    """Cancel the PR's queued or running job."""
    data = event.data
    await service.cancel_pr(gh, data["repository"]["full_name"], data["pull_request"]["number"])
