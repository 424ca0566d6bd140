"""How long the bot waits before asking GitHub again, as GitHub documents its limits."""

from __future__ import annotations

import time

import aiohttp

from bot.github.resilience import MAX_WAIT, SECONDARY_WAIT, ResilientGitHubAPI, retry_wait

LIMITED = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1000"}


def test_a_spent_primary_limit_waits_until_its_reset():
    for status in (403, 429):
        assert retry_wait("GET", status, LIMITED, b"", 0, now=990.0) == 11.0
        assert retry_wait("POST", status, LIMITED, b"", 0, now=990.0) == 11.0
    assert retry_wait("GET", 403, LIMITED, b"", 0, now=1010.0) == 1.0, "reset already"
    far = {**LIMITED, "X-RateLimit-Reset": "99999"}
    assert retry_wait("GET", 403, far, b"", 0, now=0.0) == MAX_WAIT, "at most an hour"


def test_a_secondary_limit_waits_retry_after_or_at_least_a_minute():
    assert retry_wait("POST", 403, {"Retry-After": "7"}, b"", 0) == 7.0
    secondary = b'{"message": "You have exceeded a secondary rate limit."}'
    assert retry_wait("POST", 403, {}, secondary, 0, backoff=0.01) == SECONDARY_WAIT
    assert retry_wait("GET", 429, {"X-RateLimit-Remaining": "17"}, b"", 0) == SECONDARY_WAIT
    assert retry_wait("GET", 403, {}, b'{"message": "Resource not accessible"}', 0) is None


def test_server_errors_back_off_and_a_post_only_where_github_did_not_act():
    assert retry_wait("GET", 500, {}, b"", 2, backoff=1.0) == 4.0
    assert retry_wait("PATCH", 502, {}, b"", 0, backoff=0.5) == 0.5
    assert retry_wait("POST", 503, {}, b"", 1, backoff=1.0) == 2.0
    assert retry_wait("POST", 500, {}, b"", 0) is None
    assert retry_wait("POST", 502, {}, b"", 0) is None
    assert retry_wait("GET", 404, {}, b"", 0) is None
    assert retry_wait("GET", 422, {}, b"", 0) is None


async def test_the_client_waits_for_the_reset_and_then_succeeds(fake_github):
    installation = fake_github.add_installation("octo", ["octo/scarlet"])
    token = fake_github.issue_token(installation.id)
    reset = str(int(time.time()) + 1)
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    fake_github.fail_next("GET", "/installation/repositories", 403, headers)
    async with aiohttp.ClientSession() as session:
        gh = ResilientGitHubAPI(
            session, "test", oauth_token=token, base_url=fake_github.url, backoff=0.01
        )
        started = time.monotonic()
        data = await gh.getitem("/installation/repositories")
    assert data["total_count"] == 1
    assert time.monotonic() - started >= 0.5, "it waited for the reset"
    assert len(fake_github.calls("GET", "/installation/repositories")) == 2
