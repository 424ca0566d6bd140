"""The check run's (and check suite's) re-run button."""

from __future__ import annotations

from gidgethub import routing
from gidgethub.sansio import Event

from bot import github
from bot.service import RegressionService, RunRequest
from bot.settings import CHECK_NAME

router = routing.Router()


async def rerun(event: Event, gh, service: RegressionService, head_sha: str, pulls: list) -> None:
    """Run again at ``head_sha``: for its PR when there is one (fork check runs list
    none: look it up by SHA), else as a run of the commit against the default branch."""
    data = event.data
    repository = data["repository"]["full_name"]
    pull = None
    if pulls:
        pull = await github.pull_request(gh, repository, pulls[0]["number"])
    else:
        pull = await github.pull_request_for_sha(gh, repository, head_sha)
    branch = pull["head"]["ref"] if pull else None
    merged_at = None
    if pull is None:  # a commit of the default branch: labelled as its push was
        branch, merged_at = await github.landing(gh, data["repository"], head_sha)
    request = RunRequest(
        repository=repository,
        installation_id=data["installation"]["id"],
        head_sha=head_sha,
        base=pull["base"]["ref"] if pull else data["repository"]["default_branch"],
        clone_url=data["repository"]["clone_url"],
        pr=pull["number"] if pull else None,
        kind="pr" if pull else "baseline",
        approved=True,
        branch=branch,
        merged_at=merged_at,
    )
    await service.request_run(gh, request)


@router.register("check_run", action="rerequested")
async def check_run_rerequested(event: Event, gh, service: RegressionService) -> None:
    """Re-run from the check run's button."""
    check_run = event.data["check_run"]
    if check_run["name"] == CHECK_NAME:
        await rerun(event, gh, service, check_run["head_sha"], check_run["pull_requests"])


@router.register("check_suite", action="rerequested")
async def check_suite_rerequested(event: Event, gh, service: RegressionService) -> None:
    """Re-run from the check suite's button."""
    suite = event.data["check_suite"]
    await rerun(event, gh, service, suite["head_sha"], suite["pull_requests"])
