"""A gidgethub client that rides out GitHub's transient failures.

GitHub answers 500/502/503/504 when it is unwell, 403 or 429 when a rate limit is hit,
and 401 once an installation token has expired. The client waits as ``retry_wait`` says
and tries again, and on a 401 fetches a new installation token first. A POST is retried
only when GitHub cannot have acted on it (503, a rate limit, 401): after a 500, 502 or
504 it may have, so the caller decides (``bot.github.client`` looks before it creates again).
Every other method the bot uses (GET, PATCH of a whole state, PUT, DELETE) is idempotent
and retried on those too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from gidgethub.aiohttp import GitHubAPI

RETRIES = 5
BACKOFF = 1.0  # seconds, doubled at each attempt
MAX_WAIT = 3600.0  # a primary rate limit resets within the hour
SECONDARY_WAIT = 60.0  # GitHub: without retry-after, wait at least a minute
NOT_ACTED_ON = {503}
MAYBE_ACTED_ON = {500, 502, 504}


def retry_wait(
    method: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    attempt: int,
    backoff: float = BACKOFF,
    now: float | None = None,
) -> float | None:
    """Seconds to wait before sending the request again, or None: the answer stands.

    As GitHub documents its limits: a 403 or 429 with ``x-ratelimit-remaining: 0`` waits
    until ``x-ratelimit-reset``; one with ``retry-after`` waits that long; a secondary
    limit without it (a 429, or a 403 saying so) at least a minute. A 5xx backs off
    exponentially (``backoff`` · 2^attempt), for a POST only after a 503.
    """
    h = {key.lower(): value for key, value in headers.items()}
    if status in (403, 429):
        if h.get("x-ratelimit-remaining") == "0" and h.get("x-ratelimit-reset"):
            now = time.time() if now is None else now
            return min(max(float(h["x-ratelimit-reset"]) - now, 0.0) + 1.0, MAX_WAIT)
        if h.get("retry-after"):
            return min(float(h["retry-after"]), MAX_WAIT)
        if status == 429 or b"secondary rate limit" in body.lower():
            return max(SECONDARY_WAIT, backoff * 2**attempt)
        return None
    if status in NOT_ACTED_ON or (method != "POST" and status in MAYBE_ACTED_ON):
        return backoff * 2**attempt
    return None


class ResilientGitHubAPI(GitHubAPI):
    """``GitHubAPI`` with retries, rate-limit waits and installation token renewal."""

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
            if status == 401 and self.renew_token is not None and not renewed:
                token = await self.renew_token()
                self.oauth_token = token
                headers["authorization"] = f"token {token}"
                renewed = True
                continue
            wait = retry_wait(method, status, response_headers, data, attempt, self.backoff)
            if wait is None or attempt == RETRIES:
                return status, response_headers, data
            await asyncio.sleep(wait)
        return status, response_headers, data
