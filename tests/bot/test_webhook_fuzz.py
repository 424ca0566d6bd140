"""1,000 fuzzed webhook deliveries: never a 5xx, and nothing happens without a valid
signature (no job, no call to GitHub)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bot.app
from bot.app import create_app
from bot.settings import Settings

SECRET = "fuzz-secret"
EVENTS = ["pull_request", "issue_comment", "check_run", "check_suite", "push", "ping", ""]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=400),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["opened", "created", "rerequested", "closed"])},
        optional={
            "repository": JSON,
            "installation": st.fixed_dictionaries({"id": st.integers()}),
            "pull_request": JSON,
            "issue": JSON,
            "comment": JSON,
        },
    ).map(lambda value: json.dumps(value).encode()),
)


@pytest.fixture(scope="module")
def client_and_loop(tmp_path_factory):
    """The bot's app on a test server (GitHub unreachable); events reaching processing
    are recorded instead of processed."""
    dispatched: list = []

    async def record(app, event):
        dispatched.append(event)

    folder = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        app_id="1",
        private_key="-",
        webhook_secret=SECRET,
        data_dir=folder,
        datasets=(folder,),
        api_url="http://127.0.0.1:9",
    )
    loop = asyncio.new_event_loop()
    patch = pytest.MonkeyPatch()
    patch.setattr(bot.app, "process", record)
    client = TestClient(TestServer(create_app(settings)), loop=loop)
    loop.run_until_complete(client.start_server())
    yield client, loop, dispatched
    loop.run_until_complete(client.close())
    patch.undo()
    loop.close()


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=BODIES,
    event=st.sampled_from(EVENTS),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
    ),
    signature=st.sampled_from(["valid", "forged", "missing", "garbage"]),
    delivery=st.text(max_size=40),
)
def test_fuzzed_deliveries(client_and_loop, body, event, content_type, signature, delivery):
    client, loop, dispatched = client_and_loop
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
    if content_type:
        headers["Content-Type"] = content_type
    if signature == "valid":
        headers["X-Hub-Signature-256"] = sign(body)
    elif signature == "forged":
        headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    elif signature == "garbage":
        headers["X-Hub-Signature-256"] = delivery
    headers = {k: v for k, v in headers.items() if v.isprintable() and "\n" not in v}
    before = len(dispatched)

    async def post():
        async with client.post("/webhook", data=body, headers=headers) as response:
            return response.status

    status = loop.run_until_complete(post())
    assert status < 500
    if signature != "valid":
        assert status in (401, 415, 400), status
        assert len(dispatched) == before
