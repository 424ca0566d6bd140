"""The check run's (and check suite's) re-run button, and its "Approve and run" button
of a fork's run waiting for a maintainer."""

from __future__ import annotations

import re

from gidgethub import routing
from gidgethub.sansio import Event

from bot.github import client as github
from bot.service import RegressionService, RunRequest
from bot.settings import CHECK_NAME
from bot.state.jobs import Job

router = routing.Router()
APPROVAL_REFUSED = (
    "Sorry @{user}, only people with write access to this repository can approve running "
    "a fork's code. A maintainer can approve it for you."
)
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def job_of(service: RegressionService, external_id: str | None) -> Job | None:
    """The job a check run's ``external_id`` names, if it is one of ours."""
    if not external_id or not JOB_ID.fullmatch(external_id):
        return None
    return await service.jobs.get(external_id)


def again(job: Job, repository: str) -> RunRequest:
    """The same run once more: its SHA, PR, base and labels. It supersedes nothing, so a
    re-run of an older commit leaves the PR's newer head and its comment alone."""
    return RunRequest(
        repository=repository,
        installation_id=job.installation_id,
        head_sha=job.head_sha,
        base=job.base,
        clone_url=job.clone_url,
        pr=job.pr,
        kind=job.kind,
        approved=True,
        branch=job.branch,
        merged_at=job.merged_at,
        supersede=False,
    )


async def rerun(
    event: Event, gh, service: RegressionService, head_sha: str, pulls: list, job: Job | None
) -> None:
    """Run again at ``head_sha``: the check run's own job when its ``external_id`` names
    one; else for the PR it lists (fork check runs list none: looked up by SHA), else as a
    run of the commit against the default branch. Only a re-run of the PR's head
    supersedes its other runs."""
    data = event.data
    repository = data["repository"]["full_name"]
    if job is not None and job.repository == repository and job.head_sha == head_sha:
        await service.request_run(gh, again(job, repository))
        return
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
        supersede=pull is not None and pull["head"]["sha"] == head_sha,
    )
    await service.request_run(gh, request)


@router.register("check_run", action="rerequested")
async def check_run_rerequested(event: Event, gh, service: RegressionService) -> None:
    """Re-run from the check run's button."""
    check_run = event.data["check_run"]
    if check_run["name"] == CHECK_NAME:
        job = await job_of(service, check_run.get("external_id"))
        await rerun(event, gh, service, check_run["head_sha"], check_run["pull_requests"], job)


@router.register("check_run", action="requested_action")
async def approved(event: Event, gh, service: RegressionService) -> None:
    """ "Approve and run" on a fork's waiting check run: its job runs, if the one who
    pressed it has write access (anyone else is told so on the PR)."""
    data = event.data
    check_run = data["check_run"]
    if (data.get("requested_action") or {}).get("identifier") != github.APPROVE:
        return
    job = await job_of(service, check_run.get("external_id"))
    repository, user = data["repository"]["full_name"], data["sender"]["login"]
    if job is None or job.repository != repository or job.head_sha != check_run["head_sha"]:
        return
    if not await github.can_write(gh, repository, user):
        if job.pr is not None:
            await github.reply(gh, repository, job.pr, APPROVAL_REFUSED.format(user=user))
        return
    await service.request_run(gh, again(job, repository))


@router.register("check_suite", action="rerequested")
async def check_suite_rerequested(event: Event, gh, service: RegressionService) -> None:
    """Re-run from the check suite's button (its job found through our check run on it)."""
    suite = event.data["check_suite"]
    repository = event.data["repository"]["full_name"]
    job_id = await github.check_run_job(gh, repository, suite["head_sha"])
    job = await job_of(service, job_id)
    await rerun(event, gh, service, suite["head_sha"], suite["pull_requests"], job)
