"""Pushes to the default branch: a baseline run, recorded for the trends."""

from __future__ import annotations

from datetime import UTC, datetime

from gidgethub import routing
from gidgethub.sansio import Event

from bot.github import client as github
from bot.service import RegressionService, RunRequest

router = routing.Router()
NO_COMMIT = "0" * 40


@router.register("push")
async def default_branch_pushed(event: Event, gh, service: RegressionService) -> None:
    """Run the new head of the default branch against the one before it, labelled for the
    trends by the branch it merged and when (the default branch itself, and the time of
    the push, for a direct push). Both are the protected branch's commits: the runner, once
    it has checked that, stores what they compiled and deblended for later runs."""
    data = event.data
    repository = data["repository"]
    default = repository["default_branch"]
    if data.get("deleted") or data["ref"] != f"refs/heads/{default}":
        return
    before = data["before"] if data["before"] != NO_COMMIT else data["after"]
    branch, merged_at = await github.landing(gh, repository, data["after"])
    if merged_at is None and isinstance(repository.get("pushed_at"), int):
        merged_at = datetime.fromtimestamp(repository["pushed_at"], UTC).isoformat()
    await service.request_run(
        gh,
        RunRequest(
            repository=repository["full_name"],
            installation_id=data["installation"]["id"],
            head_sha=data["after"],
            base=f"refs/heads/{default}",  # both commits on it: a trusted run of it
            base_sha=before,
            clone_url=repository["clone_url"],
            kind="baseline",
            approved=True,
            branch=branch,
            merged_at=merged_at,
        ),
    )
