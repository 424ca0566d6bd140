"""The App uninstalled or suspended, or repositories taken out of it: their jobs stop."""

from __future__ import annotations

from gidgethub import routing
from gidgethub.sansio import Event

from bot.service import RegressionService

router = routing.Router()


@router.register("installation", action="deleted")
@router.register("installation", action="suspend")
async def installation_gone(event: Event, gh, service: RegressionService) -> None:
    """Cancel every job of the installation (nothing can be written to GitHub for it)."""
    await service.stop_installation(event.data["installation"]["id"])


@router.register("installation_repositories", action="removed")
async def repositories_removed(event: Event, gh, service: RegressionService) -> None:
    """Cancel the jobs of the repositories taken out of the installation."""
    names = {repo["full_name"] for repo in event.data["repositories_removed"]}
    await service.stop_installation(event.data["installation"]["id"], names)
