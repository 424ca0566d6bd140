"""Tests of the fake GitHub itself, through gidgethub's aiohttp client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
from gidgethub import BadRequest, GitHubBroken, ValidationFailure, sansio
from gidgethub.aiohttp import GitHubAPI
from gidgethub.apps import get_installation_access_token, get_jwt

from fake_github import (
    SPEC_SERVER,
    FakeGitHub,
    example_payload,
    fake_github,  # noqa: F401  (the fixture)
    openapi_validator,
    validate_webhook,
)

REPO = "pmelchior/scarlet2"


@pytest.fixture
def github(fake_github: FakeGitHub) -> FakeGitHub:  # noqa: F811
    """The fake with one installation on ``REPO``, a maintainer and an open pull request 7."""
    inst = fake_github.add_installation("pmelchior", [REPO], id=11)
    fake_github.add_repo(REPO, installation_id=inst.id, collaborators={"maint": "maintain"})
    fake_github.add_pull(REPO, 7, head_sha="a" * 40, head_ref="fix", base_ref="main")
    return fake_github


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def api(session: aiohttp.ClientSession, fake: FakeGitHub, token: str | None) -> GitHubAPI:
    return GitHubAPI(session, "test", base_url=fake.url, oauth_token=token)


@pytest.mark.asyncio
async def test_valid_call_is_recorded_and_answers_like_github(github, session) -> None:
    token = github.issue_token(11)
    gh = api(session, github, token)
    run = await gh.post(
        f"/repos/{REPO}/check-runs",
        data={"name": "regression", "head_sha": "a" * 40, "status": "in_progress"},
    )
    assert run["status"] == "in_progress" and run["app"]["id"] == github.app_id
    assert [p["number"] for p in run["pull_requests"]] == [7]
    done = await gh.patch(
        f"/repos/{REPO}/check-runs/{run['id']}",
        data={"conclusion": "success", "output": {"title": "ok", "summary": "fine"}},
    )
    assert done["status"] == "completed" and done["completed_at"]
    comment = await gh.post(f"/repos/{REPO}/issues/7/comments", data={"body": "hello"})
    assert comment["user"]["login"] == "scarlet-regression[bot]"
    assert comment["html_url"].endswith(f"/pull/7#issuecomment-{comment['id']}")
    perm = await gh.getitem(f"/repos/{REPO}/collaborators/maint/permission")
    assert (perm["permission"], perm["role_name"]) == ("write", "maintain")

    [created] = github.calls("POST", "*/check-runs")
    assert created.token == token and created.json["name"] == "regression"
    assert created.status == 201
    [stored] = github.check_runs(REPO)
    assert stored.conclusion == "success" and stored.output["summary"] == "fine"
    assert [c.body for c in github.comments(REPO, 7)] == ["hello"]
    assert [c.operation for c in github.calls()] == [
        "POST /repos/{owner}/{repo}/check-runs",
        "PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}",
        "POST /repos/{owner}/{repo}/issues/{issue_number}/comments",
        "GET /repos/{owner}/{repo}/collaborators/{username}/permission",
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"name": "r", "head_sha": "a" * 40, "status": "finished"},
        {"name": "r", "head_sha": "a" * 40, "output": {"title": "t", "summary": "x" * 65536}},
        {"name": "r"},
        {"name": "r", "head_sha": "a" * 40, "status": "completed"},
    ],
    ids=["bad-enum", "summary-too-long", "missing-head-sha", "completed-without-conclusion"],
)
@pytest.mark.asyncio
async def test_invalid_body_is_a_violation(github, session, data) -> None:
    gh = api(session, github, github.issue_token(11))
    with pytest.raises(BadRequest) as raised:
        await gh.post(f"/repos/{REPO}/check-runs", data=data)
    assert raised.value.status_code == 422
    [violation] = github.take_violations()
    assert violation.startswith(f"POST /repos/{REPO}/check-runs")
    assert github.check_runs(REPO) == []


@pytest.mark.asyncio
async def test_unknown_path_bad_parameter_and_overlong_comment_are_violations(
    github, session
) -> None:
    gh = api(session, github, github.issue_token(11))
    with pytest.raises(BadRequest) as raised:
        await gh.getitem(f"/repos/{REPO}/statuses/abc")
    assert raised.value.status_code == 404
    with pytest.raises(BadRequest):
        await gh.delete(f"/repos/{REPO}/issues/comments/1")
    with pytest.raises(BadRequest):
        await gh.getitem(f"/repos/{REPO}/issues/seven/comments")
    with pytest.raises(BadRequest):
        await gh.post(f"/repos/{REPO}/issues/7/comments", data={"body": "x" * 65537})
    with pytest.raises(BadRequest):
        await gh.post(f"/repos/{REPO}/issues/comments/1/reactions", data={"content": "wow"})
    violations = github.take_violations()
    assert [v.split(":")[1].split("(")[0].strip() for v in violations] == [
        "unknown path",
        "method not allowed on this path",
        "invalid request",
        "body is longer than 65536 characters",
        "invalid request",
    ]


@pytest.mark.asyncio
async def test_comments_paginate_with_link_header(github, session) -> None:
    for i in range(7):
        github.add_comment(REPO, 7, f"comment {i}", user="someone")
    gh = api(session, github, github.issue_token(11))
    bodies = [c["body"] async for c in gh.getiter(f"/repos/{REPO}/issues/7/comments?per_page=3")]
    assert bodies == [f"comment {i}" for i in range(7)]
    pages = github.calls("GET", "*/comments")
    assert [c.query.get("page") for c in pages] == [None, "2", "3"]
    assert all(c.query["per_page"] == "3" for c in pages)
    async with session.get(
        f"{github.url}/repos/{REPO}/issues/7/comments?per_page=3&page=2",
        headers={"Authorization": f"token {pages[0].token}"},
    ) as response:
        link = response.headers["Link"]
    assert f'<{github.url}/repos/{REPO}/issues/7/comments?per_page=3&page=3>; rel="next"' in link
    assert 'rel="prev"' in link and 'rel="last"' in link


@pytest.mark.asyncio
async def test_check_runs_list_needs_iterable_key(github, session) -> None:
    gh = api(session, github, github.issue_token(11))
    for name in ("a", "b"):
        await gh.post(f"/repos/{REPO}/check-runs", data={"name": name, "head_sha": "a" * 40})
    url = f"/repos/{REPO}/commits/{'a' * 40}/check-runs"
    names = [r["name"] async for r in gh.getiter(url, iterable_key="check_runs")]
    assert sorted(names) == ["a", "b"]


@pytest.mark.asyncio
async def test_authentication(github, session) -> None:
    with pytest.raises(BadRequest) as raised:
        await api(session, github, None).getitem(f"/repos/{REPO}/pulls/7")
    assert raised.value.status_code == 401
    with pytest.raises(BadRequest) as raised:
        await api(session, github, "ghs_unknown").getitem(f"/repos/{REPO}/pulls/7")
    assert raised.value.status_code == 401
    token = github.issue_token(11)
    github.expire_token(token)
    with pytest.raises(BadRequest) as raised:
        await api(session, github, token).getitem(f"/repos/{REPO}/pulls/7")
    assert raised.value.status_code == 401
    github.add_repo("someone/else")
    with pytest.raises(BadRequest) as raised:
        await api(session, github, github.issue_token(11)).getitem("/repos/someone/else/pulls/7")
    assert raised.value.status_code == 404
    assert [c.status for c in github.calls()] == [401, 401, 401, 404]
    assert github.violations == []


@pytest.mark.asyncio
async def test_app_jwt_and_installation_token(github, session) -> None:
    gh = api(session, github, None)
    app_jwt = get_jwt(app_id=str(github.app_id), private_key=github.private_key_pem)
    installs = await gh.getitem("/app/installations", jwt=app_jwt)
    assert [i["id"] for i in installs] == [11]
    repo_install = await gh.getitem(f"/repos/{REPO}/installation", jwt=app_jwt)
    assert repo_install["id"] == 11
    token = await get_installation_access_token(
        gh, installation_id="11", app_id=str(github.app_id), private_key=github.private_key_pem
    )
    assert token["token"].startswith("ghs_") and token["expires_at"].endswith("Z")
    pull = await api(session, github, token["token"]).getitem(f"/repos/{REPO}/pulls/7")
    assert (pull["number"], pull["head"]["sha"], pull["base"]["ref"]) == (7, "a" * 40, "main")

    wrong_iss = get_jwt(app_id="1", private_key=github.private_key_pem)
    for bad in (wrong_iss, token["token"], "not.a.jwt"):
        with pytest.raises(BadRequest) as raised:
            await gh.getitem("/app/installations", jwt=bad)
        assert raised.value.status_code == 401
    with pytest.raises(BadRequest) as raised:  # an installation token on an app endpoint
        await api(session, github, token["token"]).getitem("/app/installations")
    assert raised.value.status_code == 401


@pytest.mark.asyncio
async def test_fault_injection(github, session) -> None:
    gh = api(session, github, github.issue_token(11))
    github.fail_next("POST", "*/check-runs", 502, times=2)
    github.fail_next("*", f"/repos/{REPO}/pulls/*", 403, {"retry-after": "7"})
    for _ in range(2):
        with pytest.raises(GitHubBroken):
            await gh.post(f"/repos/{REPO}/check-runs", data={"name": "r", "head_sha": "a" * 40})
    await gh.post(f"/repos/{REPO}/check-runs", data={"name": "r", "head_sha": "a" * 40})
    with pytest.raises(BadRequest) as raised:
        await gh.getitem(f"/repos/{REPO}/pulls/7")
    assert raised.value.status_code == 403 and raised.value.headers["retry-after"] == "7"
    assert (await gh.getitem(f"/repos/{REPO}/pulls/7"))["number"] == 7
    assert [c.status for c in github.calls()] == [502, 502, 201, 403, 200]
    assert len(github.check_runs(REPO)) == 1


@pytest.mark.parametrize(
    ("event", "action"),
    [
        ("pull_request", "opened"),
        ("pull_request", "synchronize"),
        ("pull_request", "reopened"),
        ("pull_request", "closed"),
        ("pull_request", "ready_for_review"),
        ("issue_comment", "created"),
        ("issue_comment", "edited"),
        ("check_run", "rerequested"),
        ("check_suite", "rerequested"),
        ("push", None),
        ("installation", "created"),
    ],
)
@pytest.mark.asyncio
async def test_webhook_examples_validate_and_verify(github, event, action) -> None:
    headers, body = github.webhook(event, action)
    parsed = sansio.Event.from_http(headers, body, secret=github.webhook_secret)
    assert parsed.event == event and parsed.data.get("action") == action
    validate_webhook(event, parsed.data)
    if event != "installation":
        assert "id" in parsed.data["installation"]
    with pytest.raises(ValidationFailure):
        sansio.Event.from_http(headers, body, secret="another secret")


@pytest.mark.asyncio
async def test_webhook_overrides(github) -> None:
    fork = github.add_pull(REPO, 9, head_repo="stranger/scarlet2", head_ref="main", user="stranger")
    headers, body = github.webhook("pull_request", "synchronize", pull=fork, delivery_id="d-1")
    data = json.loads(body)
    assert headers["X-GitHub-Delivery"] == "d-1"
    assert data["repository"]["full_name"] == REPO and data["number"] == 9
    assert data["installation"]["id"] == 11 and data["sender"]["login"] == "stranger"
    assert data["pull_request"]["head"]["repo"]["full_name"] == "stranger/scarlet2"
    assert data["pull_request"]["head"]["repo"]["fork"] is True
    assert data["pull_request"]["head"]["sha"] == fork.head_sha
    assert data["pull_request"]["html_url"].endswith(f"{REPO}/pull/9")

    _, body = github.webhook(
        "issue_comment",
        "created",
        repo=REPO,
        number=7,
        body="/regression rerun",
        sender="maint",
        author_association="MEMBER",
        installation_id=11,
    )
    data = json.loads(body)
    assert data["comment"]["body"] == "/regression rerun"
    assert data["comment"]["user"]["login"] == "maint" and data["sender"]["login"] == "maint"
    assert data["issue"]["number"] == 7 and data["issue"]["pull_request"]["url"].endswith(
        f"{REPO}/pulls/7"
    )

    pull = github.pulls[(REPO, 7)]
    _, body = github.webhook("check_run", "rerequested", pull=pull, check_name="regression")
    run = json.loads(body)["check_run"]
    assert run["head_sha"] == "a" * 40 and run["name"] == "regression"
    assert [p["number"] for p in run["pull_requests"]] == [7]

    with pytest.raises(jsonschema.ValidationError):
        github.webhook("pull_request", "opened", merge={"pull_request": {"state": "weird"}})
    with pytest.raises(TypeError):
        github.webhook("push", colour="blue")


@pytest.mark.asyncio
async def test_responses_follow_the_schemas(github, session) -> None:
    """The fake's answers validate against the pinned response schemas."""
    from openapi_core.testing import MockRequest, MockResponse

    tracking = github.add_issue(REPO, "tracking", labels=["regression"])
    gh = api(session, github, github.issue_token(11))
    run = await gh.post(f"/repos/{REPO}/check-runs", data={"name": "r", "head_sha": "a" * 40})
    comment = await gh.post(f"/repos/{REPO}/issues/7/comments", data={"body": "hi"})
    await gh.post(
        f"/repos/{REPO}/issues/comments/{comment['id']}/reactions", data={"content": "eyes"}
    )
    await gh.post(f"/repos/{REPO}/issues", data={"title": "t", "labels": ["a"]})
    requests = [
        ("PATCH", f"/repos/{REPO}/check-runs/{run['id']}", {"conclusion": "neutral"}),
        ("GET", f"/repos/{REPO}/commits/{'a' * 40}/check-runs", None),
        ("GET", f"/repos/{REPO}/issues/7/comments", None),
        ("PATCH", f"/repos/{REPO}/issues/comments/{comment['id']}", {"body": "edited"}),
        ("POST", f"/repos/{REPO}/issues/comments/{comment['id']}/reactions", {"content": "eyes"}),
        ("GET", f"/repos/{REPO}/collaborators/nobody/permission", None),
        ("GET", f"/repos/{REPO}/pulls/7", None),
        ("GET", f"/repos/{REPO}/pulls", None),
        ("GET", f"/repos/{REPO}/commits/{'a' * 40}/pulls", None),
        ("GET", f"/repos/{REPO}/issues", None),
        ("PATCH", f"/repos/{REPO}/issues/{tracking.number}", {"state": "closed"}),
        ("PATCH", f"/repos/{REPO}/issues/7", {"title": "renamed"}),
    ]
    statuses, failures = [], []
    for method, path, data in requests:
        body = json.dumps(data).encode() if data is not None else None
        async with session.request(
            method,
            github.url + path,
            data=body,
            headers={
                "Authorization": f"token {github.issue_token(11)}",
                "Content-Type": "application/json",
            },
        ) as response:
            answer = await response.read()
            status = response.status
        statuses.append(status)
        request = MockRequest(SPEC_SERVER, method, path, data=body)
        result = openapi_validator().unmarshal_response(
            request, MockResponse(answer, status_code=status)
        )
        if result.errors:
            cause = result.errors[0].__cause__
            details = [str(e)[:300] for e in getattr(cause, "schema_errors", [])]
            failures.append(f"{method} {path}: {result.errors[0]!r} {details}")
    assert failures == []
    assert statuses == [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]


def test_validation_speed() -> None:
    """Per-request validation stays well under 10 ms (measured: ~2-3 ms)."""
    fake = FakeGitHub().start()
    try:
        fake.add_installation("o", ["o/r"], id=5)
        fake.add_pull("o/r", 1)
        token = fake.issue_token(5)
        import urllib.request

        body = json.dumps(
            {"name": "r", "head_sha": "b" * 40, "output": {"title": "t", "summary": "s" * 60000}}
        ).encode()
        start = time.perf_counter()
        for _ in range(50):
            request = urllib.request.Request(
                f"{fake.url}/repos/o/r/check-runs",
                data=body,
                method="POST",
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request) as response:
                assert response.status == 201
        per_request = (time.perf_counter() - start) / 50
    finally:
        fake.stop()
    assert per_request < 0.05, per_request
    assert fake.violations == []


def test_fixture_fails_a_test_with_violations(tmp_path) -> None:
    """A bad request makes the ``fake_github`` fixture fail the test at teardown."""
    (tmp_path / "test_bad.py").write_text(
        "import urllib.error, urllib.request\n"
        "from fake_github import fake_github\n"
        "def test_bad(fake_github):\n"
        "    try:\n"
        "        urllib.request.urlopen(fake_github.url + '/nope')\n"
        "    except urllib.error.HTTPError as error:\n"
        "        assert error.code == 404\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "support")},
        cwd=tmp_path,
    )
    assert "1 passed, 1 error" in result.stdout, result.stdout
    assert "GET /nope: unknown path" in result.stdout


def test_example_payloads_are_pinned() -> None:
    assert example_payload("push")["ref"] == "refs/heads/master"
    assert example_payload("issue_comment", "created")["issue"]["pull_request"]
