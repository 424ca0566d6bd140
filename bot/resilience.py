"""A gidgethub client that rides out GitHub's transient failures.

GitHub answers 500/502/503/504 when it is unwell, 403 or 429 with ``retry-after`` for a
secondary rate limit, and 401 once an installation token has expired. The client waits
(``retry-after``, else exponential backoff) and tries again, and on a 401 fetches a new
installation token first. A POST is retried only when GitHub cannot have acted on it
(503, 429, a secondary rate limit, 401): after a 500, 502 or 504 it may have, so the
caller decides (``bot.github`` looks before it creates again). Every other method the bot
uses (GET, PATCH of a whole state, PUT, DELETE) is idempotent and retried on those too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from gidgethub.aiohttp import GitHubAPI

RETRIES = 5
BACKOFF = 1.0  # seconds, doubled at each attempt
MAX_WAIT = 60.0
NOT_ACTED_ON = {429, 503}
MAYBE_ACTED_ON = {500, 502, 504}


class ResilientGitHubAPI(GitHubAPI):
    """``GitHubAPI`` with retries, backoff and installation token renewal."""

    def __init__(
        self,
        *args,
        renew_token: Callable[[], Awaitable[str]] | None = None,
        backoff: float = BACKOFF,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.renew_token = renew_token
        self.backoff = backoff

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = dict(headers)
        renewed = False
        for attempt in range(RETRIES + 1):
            status, response_headers, data = await super()._request(method, url, headers, body)
            retry_after = response_headers.get("retry-after")
            if status == 401 and self.renew_token is not None and not renewed:
                token = await self.renew_token()
                self.oauth_token = token
                headers["authorization"] = f"token {token}"
                renewed = True
                continue
            secondary_limit = status == 403 and retry_after is not None
            transient = status in NOT_ACTED_ON or secondary_limit
            if method != "POST":
                transient = transient or status in MAYBE_ACTED_ON
            if not transient or attempt == RETRIES:
                return status, response_headers, data
            wait = float(retry_after) if retry_after else self.backoff * 2**attempt
            await asyncio.sleep(min(wait, MAX_WAIT))
        return status, response_headers, data
