"""Scheduled drift runs: ``/schedule/drift`` starts one per installed repository and
day; a failing one opens (or updates) one issue, a clean one closes it
(``bot.drift_issue``).

In production App Engine's cron service calls ``GET /schedule/drift`` (``cron.yaml``)
with the header ``X-Appengine-Cron: true``, which App Engine removes from every request
that does not come from it: no token to share or rotate. The header is trusted only on
App Engine (``GAE_APPLICATION`` set). Elsewhere (``curl`` locally) ``POST
/schedule/drift`` takes a shared secret in the ``X-Scheduler-Token`` header, compared in
constant time with ``SCARLET_BOT_SCHEDULER_SECRET``; without that setting it refuses
every call.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web
from gidgethub import GitHubException
from gidgethub.abc import GitHubAPI

from bot.github import client as github
from bot.github.auth import InstallationClients
from bot.state.jobs import Job
from runner.store import StoreError

if TYPE_CHECKING:
    from bot.service import RegressionService

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Scheduler-Token"
CRON_HEADER = "X-Appengine-Cron"


def today() -> str:
    """The UTC day a scheduled run counts for, e.g. ``2026-11-30``."""
    return datetime.now(UTC).date().isoformat()


def authorised(secret: str, request: web.Request) -> bool:
    """Whether the request carries the scheduler secret (never, when none is set)."""
    given = request.headers.get(TOKEN_HEADER, "")
    return bool(secret) and hmac.compare_digest(given.encode(), secret.encode())


def from_cron(on_app_engine: bool, request: web.Request) -> bool:
    """Whether App Engine's cron service sent the request (only App Engine can say so)."""
    return on_app_engine and request.headers.get(CRON_HEADER) == "true"


async def schedule(clients: InstallationClients, service: RegressionService, day: str) -> list[Job]:
    """Submit a drift job at the default branch's head of every repository of every
    installation, unless one was scheduled for that repository on ``day``. A repository
    that cannot be started (an empty one, GitHub failing) is logged and left for a later
    call; the others go on."""
    submitted = []
    for installation in await github.installation_ids(clients.app_client()):
        gh = await clients.client(installation)
        for repo in await github.installation_repositories(gh):
            name = repo["full_name"]
            if repo.get("archived") or not await service.jobs.first_of_day(name, "drift", day):
                continue
            try:
                submitted.append(await _submit(gh, service, installation, repo))
            except (GitHubException, StoreError, OSError) as error:
                await service.jobs.forget_day(name, "drift", day)
                log.error("no drift run of %s today: %s", name, error)
    return submitted


async def _submit(gh: GitHubAPI, service: RegressionService, installation: int, repo: dict) -> Job:
    branch = repo["default_branch"]
    job = Job(
        repository=repo["full_name"],
        installation_id=installation,
        head_sha=await github.branch_head(gh, repo["full_name"], branch),
        base=branch,
        clone_url=repo["clone_url"],
        kind="drift",
    )
    job = await service.dispatcher.submit(job)
    log.info("drift run of %s at %s (%s) submitted", job.repository, job.head_sha, branch)
    return job
