"""One gidgethub router per feature; ``router`` combines them."""

from gidgethub import routing

from bot.routers import checks, comments, installations, pull_requests, pushes

router = routing.Router(
    pull_requests.router, comments.router, checks.router, pushes.router, installations.router
)
