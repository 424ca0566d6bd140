"""Pushes to the default branch: a baseline run, recorded for the trends."""

from __future__ import annotations

from gidgethub import routing
from gidgethub.sansio import Event

from bot import github
from bot.service import RegressionService, RunRequest

router = routing.Router()
NO_COMMIT = "0" * 40


@router.register("push")
async def default_branch_pushed(event: Event, gh, service: RegressionService) -> None:
    """Run the new head of the default branch against the one before it, labelled for the
    trends by the branch it merged (the default branch itself for a direct push)."""
    data = event.data
    repository = data["repository"]
    default = repository["default_branch"]
    if data.get("deleted") or data["ref"] != f"refs/heads/{default}":
        return
    before = data["before"] if data["before"] != NO_COMMIT else data["after"]
    merged = await github.merged_pull_request(gh, repository["full_name"], data["after"])
    landed = (data.get("head_commit") or {}).get("timestamp")
    await service.request_run(
        gh,
        RunRequest(
            repository=repository["full_name"],
            installation_id=data["installation"]["id"],
            head_sha=data["after"],
            base=before,
            clone_url=repository["clone_url"],
            kind="baseline",
            approved=True,
            branch=merged["head"]["ref"] if merged else default,
            merged_at=merged["merged_at"] if merged else landed,
        ),
    )
