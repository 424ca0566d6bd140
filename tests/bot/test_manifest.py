"""The GitHub App manifest flow (``bot.manifest``), short of GitHub's own pages.

GitHub's side of the code exchange is a small local stub that validates each request,
and its own answer, against the pinned description (``tests/support/github/openapi.json``, which
holds ``POST /app-manifests/{code}/conversions``) with the fake GitHub's validator.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from gidgethub import BadRequest
from openapi_core.testing import MockRequest, MockResponse

from bot import manifest as m
from fake_github import SPEC_SERVER, app_keys, openapi_validator

PEM = app_keys()[0]


def conversion(code: str) -> dict[str, Any]:
    """What GitHub answers for a manifest code: the app plus its credentials."""
    owner = {
        "login": "pmelchior",
        "id": 1,
        "node_id": "U_1",
        "avatar_url": "https://avatars.githubusercontent.com/u/1",
        "gravatar_id": "",
        "url": "https://api.github.com/users/pmelchior",
        "html_url": "https://github.com/pmelchior",
        "followers_url": "https://api.github.com/users/pmelchior/followers",
        "following_url": "https://api.github.com/users/pmelchior/following{/other_user}",
        "gists_url": "https://api.github.com/users/pmelchior/gists{/gist_id}",
        "starred_url": "https://api.github.com/users/pmelchior/starred{/owner}{/repo}",
        "subscriptions_url": "https://api.github.com/users/pmelchior/subscriptions",
        "organizations_url": "https://api.github.com/users/pmelchior/orgs",
        "repos_url": "https://api.github.com/users/pmelchior/repos",
        "events_url": "https://api.github.com/users/pmelchior/events{/privacy}",
        "received_events_url": "https://api.github.com/users/pmelchior/received_events",
        "type": "User",
        "site_admin": False,
    }
    return {
        "id": 4242,
        "slug": "scarlet-regression",
        "node_id": "A_4242",
        "client_id": "Iv1.0123456789abcdef",
        "owner": owner,
        "name": "scarlet-regression",
        "description": "Scientific regression reports",
        "external_url": "https://bot.example.org",
        "html_url": "https://github.com/apps/scarlet-regression",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "permissions": dict(m.PERMISSIONS),
        "events": list(m.EVENTS),
        "client_secret": "client-secret-" + code,
        "webhook_secret": "hook-secret-" + code,
        "pem": PEM,
    }


class GitHubStub:
    """``POST /app-manifests/{code}/conversions``, spec-checked both ways; codes are
    single-use as on GitHub (404 the second time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.violations: list[str] = []
        self.used: set[str] = set()
        self.url = ""

    async def convert(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((request.method, request.raw_path, dict(request.headers)))
        mock = MockRequest(
            SPEC_SERVER,
            request.method,
            request.path,
            path_pattern="/app-manifests/{code}/conversions",
            view_args=dict(request.match_info),
            headers=dict(request.headers),
            data=body or None,
            content_type="application/json",
        )
        try:
            openapi_validator().validate_request(mock)
        except Exception as error:
            self.violations.append(f"request: {error}")
            return web.json_response({"message": "Invalid request"}, status=422)
        code = request.match_info["code"]
        if code in self.used:
            return web.json_response({"message": "Not Found"}, status=404)
        self.used.add(code)
        answer = json.dumps(conversion(code)).encode()
        result = openapi_validator().unmarshal_response(
            MockRequest(SPEC_SERVER, "POST", request.path), MockResponse(answer, status_code=201)
        )
        if result.errors:
            self.violations.append(f"response: {result.errors[0]!r}")
        return web.Response(body=answer, status=201, content_type="application/json")


@pytest_asyncio.fixture
async def github() -> AsyncIterator[GitHubStub]:
    stub = GitHubStub()
    app = web.Application()
    app.router.add_post("/app-manifests/{code}/conversions", stub.convert)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield stub
    await runner.cleanup()
    assert not stub.violations


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_manifest_is_the_deployed_one() -> None:
    """``deploy/github-app-manifest.json`` is what ``manifest()`` renders, with exactly
    the permissions and events the bot needs."""
    deployed = json.loads(
        (Path(__file__).parents[2] / "deploy/github-app-manifest.json").read_text()
    )
    rendered = m.manifest("https://BOT_PUBLIC_URL", redirect_url="http://127.0.0.1:8765/redirect")
    assert deployed == rendered
    # issues: write for the PR comment and the drift issue it opens, updates and closes;
    # contents: read for the default branch's head a drift run deblends.
    assert deployed["default_permissions"]["issues"] == "write"
    assert deployed["default_permissions"]["contents"] == "read"
    assert rendered["hook_attributes"]["url"] == "https://BOT_PUBLIC_URL/webhook"
    assert rendered["public"] is False
    assert m.manifest("https://x.org/", redirect_url="r")["url"] == "https://x.org"


def test_the_form_posts_the_manifest_to_github() -> None:
    app_manifest = m.manifest("https://bot.example.org", redirect_url="http://127.0.0.1:1/r")
    assert m.creation_url("s t") == "https://github.com/settings/apps/new?state=s%20t"
    action = m.creation_url("abc", org="astro-org")
    assert action == "https://github.com/organizations/astro-org/settings/apps/new?state=abc"
    page = m.form_page(app_manifest, action)
    value = re.search(r'name=manifest value="([^"]*)"', page)
    assert value and json.loads(html.unescape(value.group(1))) == app_manifest
    assert 'method=post action="https://github.com/organizations/astro-org' in page


async def test_convert_exchanges_the_code(github: GitHubStub) -> None:
    async with aiohttp.ClientSession() as session:
        app = await m.convert(session, "code/../1", api_url=github.url)
        with pytest.raises(BadRequest) as error:
            await m.convert(session, "code/../1", api_url=github.url)
    assert error.value.status_code == 404
    assert app["id"] == 4242 and app["pem"] == PEM
    method, path, headers = github.calls[0]
    assert (method, path) == ("POST", "/app-manifests/code%2F..%2F1/conversions")
    assert "Authorization" not in headers


def test_store_credentials_writes_private_files(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    lines = m.store_credentials(conversion("c1"), out)
    assert mode(out) == 0o700
    for name in (m.PEM_FILE, m.WEBHOOK_SECRET_FILE, m.ENV_FILE, m.APP_FILE):
        assert mode(out / name) == 0o600, name
    assert (out / m.PEM_FILE).read_text() == PEM
    assert (out / m.WEBHOOK_SECRET_FILE).read_text() == "hook-secret-c1"
    assert lines[0] == "GITHUB_APP_ID=4242"
    assert lines[1] == f"GITHUB_APP_PRIVATE_KEY_FILE={(out / m.PEM_FILE).resolve()}"
    printed = "\n".join(lines)
    assert "hook-secret-c1" not in printed and "PRIVATE KEY" not in printed
    env = dict(line.split("=", 1) for line in (out / m.ENV_FILE).read_text().splitlines())
    assert env["GITHUB_WEBHOOK_SECRET"] == "hook-secret-c1"
    assert "client-secret" not in (out / m.APP_FILE).read_text()
    with pytest.raises(FileExistsError):
        m.store_credentials(conversion("c2"), out)
    assert (out / m.WEBHOOK_SECRET_FILE).read_text() == "hook-secret-c1"


def test_store_in_secret_manager_adds_versions() -> None:
    added: list[tuple[str, bytes]] = []

    class Client:
        def add_secret_version(self, request: dict[str, Any]) -> Any:
            added.append((request["parent"], request["payload"]["data"]))
            return SimpleNamespace(name=f"{request['parent']}/versions/{len(added)}")

    lines = m.store_in_secret_manager(
        conversion("c"),
        private_key_secret="projects/p/secrets/key",
        webhook_secret_secret="projects/p/secrets/hook",
        client=Client(),
    )
    assert added == [
        ("projects/p/secrets/key", PEM.encode()),
        ("projects/p/secrets/hook", b"hook-secret-c"),
    ]
    assert lines == [
        "GITHUB_APP_PRIVATE_KEY_SECRET=projects/p/secrets/key/versions/latest",
        "GITHUB_WEBHOOK_SECRET_SECRET=projects/p/secrets/hook/versions/latest",
    ]


async def test_register_flow_end_to_end(github: GitHubStub, tmp_path: Path) -> None:
    """The local page posts the manifest; GitHub's redirect (simulated) is checked
    against the state, exchanged once and stored."""
    port, out = free_port(), tmp_path / "creds"
    task = asyncio.create_task(
        m.register(
            public_url="https://bot.example.org",
            out=out,
            port=port,
            github_url="https://github.example",
            api_url=github.url,
            open_browser=False,
        )
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(base + "/") as response:
                    page = await response.text()
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        action = html.unescape(re.search(r'action="([^"]+)"', page).group(1))  # type: ignore[union-attr]
        assert action.startswith("https://github.example/settings/apps/new?state=")
        value = re.search(r'value="([^"]*)"', page).group(1)  # type: ignore[union-attr]
        assert json.loads(html.unescape(value))["redirect_url"] == base + "/redirect"
        state = parse_qs(urlparse(action).query)["state"][0]
        async with session.get(base + "/redirect", params={"code": "c", "state": "x"}) as r:
            assert r.status == 400
        assert not github.calls
        async with session.get(base + "/redirect", params={"code": "c", "state": state}) as r:
            assert r.status == 200 and "4242" in await r.text()
    lines = await asyncio.wait_for(task, 10)
    assert lines[0] == "GITHUB_APP_ID=4242"
    assert (
        lines[-1]
        == "# install it: https://github.example/apps/scarlet-regression/installations/new"
    )
    assert (out / m.PEM_FILE).read_text() == PEM and mode(out / m.PEM_FILE) == 0o600
    assert len(github.calls) == 1


async def test_register_refuses_a_folder_with_credentials(tmp_path: Path) -> None:
    (tmp_path / m.PEM_FILE).write_text("old key")
    with pytest.raises(FileExistsError):
        await m.register(public_url="https://b", out=tmp_path, port=free_port(), open_browser=False)
