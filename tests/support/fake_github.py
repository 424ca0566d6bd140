"""A fake GitHub for the bot's tests: the REST operations the bot uses, checked against the spec.

``FakeGitHub`` is an aiohttp application served on ``127.0.0.1`` (a free port) from a
background thread, so sync and async tests (any event loop) can use it. Every request is
validated with ``openapi-core`` against ``tests/support/github/openapi.json`` (the trimmed, pinned
GitHub description; see ``tests/support/github/PINNED.md``): an unknown path or method answers 404,
an invalid parameter or body 422, and each is recorded in ``violations``. The ``fake_github``
fixture fails the test at teardown when a violation was recorded (``take_violations()``
clears them for tests that provoke them on purpose).

Behind the validation sits a small in-memory GitHub: installations and their tokens (one
hour), repositories with collaborators, pull requests, issues, issue comments, reactions
and check runs. Auth: ``/app/...`` and ``GET /repos/{owner}/{repo}/installation`` need an
RS256 app JWT signed with ``private_key_pem`` (401 otherwise); all other operations need an
unexpired installation token whose installation covers the repository (401 without or
with a bad token, 404 for a repository the token cannot see). Lists paginate with
``per_page`` (default 30, capped at 100) and ``page`` and a ``Link`` header on ``url``.

``GET /repos/{owner}/{repo}/commits/{sha}/pulls`` leaves out fork PRs by their head, as
GitHub is reported to. Other GitHub rules the spec does not state are enforced as
violations (422): issue and
comment bodies ≤ 65,536 characters; a check run's output summary and text ≤ 65,535
bytes (GitHub: "exceeds a maximum bytesize"); ``status: completed`` on create needs a
``conclusion``; apps may not set ``conclusion: stale``.

``webhook()`` builds a signed delivery from the pinned example payloads.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jsonschema
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict, MultiDict

PINNED = Path(__file__).parent / "github"
HTML = "https://github.com"
SPEC_SERVER = "https://api.github.com"  # the description's server: requests are matched on it
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
# role -> the legacy ``permission`` field of GET .../collaborators/{username}/permission
_LEGACY = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read"}
_LEGACY |= {"read": "read", "none": "none"}
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
MAX_BODY = 65536
CHECK_BYTES = 65535  # a check run's output summary and text, in bytes of UTF-8
JWT_OPERATIONS = {
    ("POST", "/app/installations/{installation_id}/access_tokens"),
    ("GET", "/app/installations"),
    ("GET", "/repos/{owner}/{repo}/installation"),
}


# --- the pinned files --------------------------------------------------------------------


@cache
def openapi_spec() -> dict[str, Any]:
    """The trimmed OpenAPI description (parsed once per process)."""
    return json.loads((PINNED / "openapi.json").read_text())


@cache
def openapi_validator() -> Any:
    """An ``openapi_core.OpenAPI`` of the trimmed description, built once.

    The description itself is checked by ``regenerate.py`` (2 s), not on every load.
    """
    from openapi_core import Config, OpenAPI

    return OpenAPI.from_dict(openapi_spec(), config=Config(spec_validator_cls=None))


@cache
def webhook_schema() -> dict[str, Any]:
    """The pinned draft-07 webhook schema (``definitions`` keyed ``event$action``)."""
    return json.loads((PINNED / "webhook-schemas.json").read_text())


@cache
def webhook_validator(event: str, action: str | None) -> jsonschema.Draft7Validator:
    """A validator of one event/action's payload."""
    name = f"{event}${action or 'event'}"
    definitions = webhook_schema()["definitions"]
    if name not in definitions:
        raise KeyError(f"no webhook schema definition {name!r}")
    return jsonschema.Draft7Validator({"definitions": definitions, "$ref": f"#/definitions/{name}"})


def example_payload(event: str, action: str | None = None) -> dict[str, Any]:
    """A fresh copy of the pinned example delivery of ``event``/``action``."""
    name = f"{event}.{action}.json" if action else f"{event}.json"
    return json.loads((PINNED / "webhooks" / name).read_text())


def validate_webhook(event: str, payload: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``payload`` is valid for its event/action."""
    error = jsonschema.exceptions.best_match(
        webhook_validator(event, payload.get("action")).iter_errors(payload)
    )
    if error is not None:
        raise error


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- state -------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Installation:
    """An installation of the app on one account, covering ``repos`` (full names)."""

    id: int
    account: str
    repos: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=_now)


@dataclass
class Repo:
    """A repository; ``collaborators`` maps login to a role in ``PERMISSIONS``."""

    full_name: str
    id: int
    installation_id: int | None = None
    collaborators: dict[str, str] = field(default_factory=dict)
    private: bool = False
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)
    clone_url: str | None = None


@dataclass
class PullRequest:
    """A pull request; ``head_repo`` is the head's repository (a fork when it differs)."""

    repo: str
    number: int
    id: int
    head_sha: str
    head_ref: str
    base_ref: str
    head_repo: str
    user: str
    title: str = "A pull request"
    body: str | None = None
    state: str = "open"
    draft: bool = False
    merged: bool = False
    base_sha: str = "0" * 40
    merge_commit_sha: str | None = None
    created_at: datetime = field(default_factory=_now)

    @property
    def fork(self) -> bool:
        """Whether the head lives in another repository."""
        return self.head_repo != self.repo


@dataclass
class Issue:
    """An issue (pull requests share their numbers but are kept as ``PullRequest``)."""

    repo: str
    number: int
    id: int
    title: str
    user: str
    user_type: str = "User"
    body: str | None = None
    state: str = "open"
    state_reason: str | None = None
    labels: list[str] = field(default_factory=list)
    assignees: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    closed_at: datetime | None = None


@dataclass
class Reaction:
    """A reaction on an issue comment."""

    id: int
    content: str
    user: str
    user_type: str = "User"
    created_at: datetime = field(default_factory=_now)


@dataclass
class Comment:
    """An issue or pull request comment; ``user_type`` is ``Bot`` for the app's comments."""

    id: int
    repo: str
    number: int
    body: str
    user: str
    user_type: str = "User"
    author_association: str = "NONE"
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    reactions: list[Reaction] = field(default_factory=list)
    via_app: bool = False


@dataclass
class CheckRun:
    """A check run created by the app (``output`` as sent: title, summary, text, ...)."""

    id: int
    repo: str
    name: str
    head_sha: str
    status: str = "queued"
    conclusion: str | None = None
    details_url: str | None = None
    external_id: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    check_suite_id: int = 0


@dataclass
class Token:
    """An installation access token; ``repos`` restricts it (``None``: the installation's)."""

    token: str
    installation_id: int
    expires_at: datetime
    repos: list[str] | None = None


@dataclass
class Call:
    """One request as received: ``token`` is the installation token, ``"jwt"`` or ``None``."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    token: str | None
    status: int = 0
    operation: str | None = None


@dataclass
class _Fault:
    method: str
    path_glob: str
    status: int
    headers: dict[str, str]
    body: Any
    times: int
    when: dict[str, Any] | None = None


class _Reply(Exception):
    """Raised by handlers to answer with a GitHub error."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# --- the server loop ---------------------------------------------------------------------


class _LoopThread:
    """One event loop in a daemon thread, shared by every fake of the process."""

    _instance: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="fake-github", daemon=True).start()

    @classmethod
    def get(cls) -> _LoopThread:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@cache
def app_keys() -> tuple[str, str]:
    """A 2048-bit RSA key pair for the test app, as (private PEM, public PEM); one per run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


# --- the fake ----------------------------------------------------------------------------


class FakeGitHub:
    """An in-memory GitHub serving the bot's REST operations; see the module docstring.

    ``app_id``/``app_slug``/``private_key_pem``: the app the bot authenticates as (its
    comments are by ``f"{app_slug}[bot]"``); ``public_key_pem`` verifies its JWTs.
    ``webhook_secret`` signs ``webhook()`` deliveries. ``validate=False`` skips the spec
    validation (0.01–0.1 s a request), for benchmarks timing the bot, never for tests.
    """

    def __init__(
        self,
        *,
        app_id: int = 4242,
        app_slug: str = "scarlet-regression",
        public_key_pem: str | None = None,
        private_key_pem: str | None = None,
        webhook_secret: str = "test-webhook-secret",
        validate: bool = True,
    ) -> None:
        if public_key_pem is None:
            private_key_pem, public_key_pem = app_keys()
        self.app_id = app_id
        self.app_slug = app_slug
        self.bot_login = f"{app_slug}[bot]"
        self.public_key_pem = public_key_pem
        self.private_key_pem = private_key_pem
        self.webhook_secret = webhook_secret
        self.validate = validate
        self.url = ""
        self.installations: dict[int, Installation] = {}
        self.repos: dict[str, Repo] = {}
        self.pulls: dict[tuple[str, int], PullRequest] = {}
        self.issues_by_number: dict[tuple[str, int], Issue] = {}
        self.comment_store: dict[int, Comment] = {}
        self.check_run_store: dict[int, CheckRun] = {}
        self.tokens: dict[str, Token] = {}
        self.call_log: list[Call] = []
        self.violations: list[str] = []
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1_000_001)
        self._lock = threading.RLock()
        self._runner: web.AppRunner | None = None
        self._routes = self._compile_routes()

    # -- lifecycle

    def start(self) -> FakeGitHub:
        """Serve on 127.0.0.1 at a free port; sets ``url`` (no trailing slash)."""

        async def serve() -> tuple[web.AppRunner, int]:
            app = web.Application(client_max_size=32 * 1024**2)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        openapi_validator()
        self._runner, port = _LoopThread.get().run(serve())
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving (the state stays readable)."""
        if self._runner is not None:
            _LoopThread.get().run(self._runner.cleanup())
            self._runner = None

    def take_violations(self) -> list[str]:
        """The violations recorded so far, clearing them."""
        with self._lock:
            taken, self.violations = self.violations, []
        return taken

    # -- setting up state

    def _next_id(self) -> int:
        return next(self._ids)

    def add_installation(
        self, account: str = "pmelchior", repos: list[str] | None = None, id: int | None = None
    ) -> Installation:
        """An installation on ``account`` covering ``repos`` (created when unknown)."""
        with self._lock:
            inst = Installation(id=id or self._next_id(), account=account)
            self.installations[inst.id] = inst
            for name in repos or []:
                self.add_repo(name, installation_id=inst.id)
        return inst

    def add_repo(
        self,
        full_name: str,
        *,
        installation_id: int | None = None,
        collaborators: Mapping[str, str] | None = None,
        private: bool = False,
        default_branch: str = "main",
        branches: Mapping[str, str] | None = None,
        clone_url: str | None = None,
    ) -> Repo:
        """A repository (or the existing one, updated), optionally in an installation;
        ``branches`` maps branch names to head SHAs, ``clone_url`` replaces GitHub's."""
        with self._lock:
            repo = self.repos.get(full_name) or Repo(full_name, self._next_id())
            self.repos[full_name] = repo
            repo.private, repo.default_branch = private, default_branch
            repo.branches.update(branches or {})
            repo.clone_url = clone_url or repo.clone_url
            for login, role in (collaborators or {}).items():
                if role not in PERMISSIONS:
                    raise ValueError(f"unknown role {role!r}")
                repo.collaborators[login] = role
            if installation_id is not None:
                repo.installation_id = installation_id
                inst = self.installations[installation_id]
                if full_name not in inst.repos:
                    inst.repos.append(full_name)
        return repo

    def _next_number(self, repo: str) -> int:
        numbers = [n for (r, n) in itertools.chain(self.pulls, self.issues_by_number) if r == repo]
        return max(numbers, default=0) + 1

    def add_pull(
        self,
        repo: str,
        number: int | None = None,
        *,
        head_sha: str | None = None,
        head_ref: str = "feature",
        base_ref: str = "main",
        head_repo: str | None = None,
        user: str = "contributor",
        title: str = "A pull request",
        state: str = "open",
        draft: bool = False,
        merged: bool = False,
        merge_commit_sha: str | None = None,
    ) -> PullRequest:
        """A pull request; ``head_repo`` names a fork, ``head_sha`` defaults to a random SHA;
        a merged one may name the commit it landed as (``merge_commit_sha``)."""
        with self._lock:
            if repo not in self.repos:
                raise KeyError(f"add_repo({repo!r}) first")
            pull = PullRequest(
                repo=repo,
                number=number or self._next_number(repo),
                id=self._next_id(),
                head_sha=head_sha or secrets.token_hex(20),
                head_ref=head_ref,
                base_ref=base_ref,
                head_repo=head_repo or repo,
                user=user,
                title=title,
                state=state,
                draft=draft,
                merged=merged,
                merge_commit_sha=merge_commit_sha,
            )
            self.pulls[(repo, pull.number)] = pull
        return pull

    def add_issue(self, repo: str, title: str, *, user: str = "someone", **fields: Any) -> Issue:
        """An issue opened by ``user`` (extra ``Issue`` fields as keywords)."""
        with self._lock:
            issue = Issue(repo, self._next_number(repo), self._next_id(), title, user, **fields)
            self.issues_by_number[(repo, issue.number)] = issue
        return issue

    def add_comment(
        self,
        repo: str,
        number: int,
        body: str,
        *,
        user: str = "someone",
        bot: bool = False,
        via_app: bool = False,
    ) -> Comment:
        """A comment on issue or pull request ``number``; ``bot=True``: by the app;
        ``via_app=True``: by ``user``, a person acting through the app (GitHub then sets
        ``performed_via_github_app`` on a person's comment)."""
        with self._lock:
            comment = Comment(
                self._next_id(),
                repo,
                number,
                body,
                self.bot_login if bot else user,
                "Bot" if bot else "User",
                via_app=bot or via_app,
            )
            self.comment_store[comment.id] = comment
        return comment

    def issue_token(
        self,
        installation_id: int,
        *,
        expires_in: float = 3600,
        repos: list[str] | None = None,
    ) -> str:
        """A new installation token (as the bot would get from ``access_tokens``)."""
        with self._lock:
            token = "ghs_" + secrets.token_urlsafe(27)[:36]
            expires = _now() + timedelta(seconds=expires_in)
            self.tokens[token] = Token(token, installation_id, expires, repos)
        return token

    def expire_token(self, token: str) -> None:
        """Make ``token`` expired: later calls with it get 401."""
        with self._lock:
            self.tokens[token].expires_at = _now() - timedelta(seconds=1)

    def app_jwt(self, *, lifetime: int = 600) -> str:
        """A valid app JWT (as ``gidgethub.apps.get_jwt`` makes)."""
        now = int(time.time())
        payload = {"iat": now - 60, "exp": now + lifetime - 60, "iss": str(self.app_id)}
        return jwt.encode(payload, self.private_key_pem, algorithm="RS256")

    def fail_next(
        self,
        method: str,
        path_glob: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        *,
        body: Any = None,
        times: int = 1,
        when: Mapping[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` valid requests matching with ``status`` instead.

        ``method`` may be ``"*"``; ``path_glob`` is an ``fnmatch`` pattern on the path
        (``/repos/*/check-runs*``); ``when``, if given, the fields the request's JSON body
        must have (``{"status": "completed"}``). ``body`` defaults to GitHub's
        ``{"message": ...}``. Faults are consumed in the order programmed; the request is
        recorded.
        """
        with self._lock:
            self._faults.append(
                _Fault(
                    method.upper(),
                    path_glob,
                    status,
                    dict(headers or {}),
                    body,
                    times,
                    dict(when) if when is not None else None,
                )
            )

    # -- reading state

    def calls(
        self, method: str | None = None, path_glob: str | None = None, status: int | None = None
    ) -> list[Call]:
        """The calls received, in order, filtered by method, path glob and answered status."""
        with self._lock:
            return [
                c
                for c in self.call_log
                if (method is None or c.method == method.upper())
                and (path_glob is None or fnmatch.fnmatchcase(c.path, path_glob))
                and (status is None or c.status == status)
            ]

    def comments(self, repo: str, number: int) -> list[Comment]:
        """The comments on issue or pull request ``number`` of ``repo``, oldest first."""
        with self._lock:
            return [c for c in self.comment_store.values() if (c.repo, c.number) == (repo, number)]

    def check_runs(self, repo: str, head_sha: str | None = None) -> list[CheckRun]:
        """The check runs of ``repo`` (on ``head_sha`` when given), oldest first."""
        with self._lock:
            return [
                r
                for r in self.check_run_store.values()
                if r.repo == repo and head_sha in (None, r.head_sha)
            ]

    def issues(self, repo: str) -> list[Issue]:
        """The issues (not pull requests) of ``repo``, by number."""
        with self._lock:
            return sorted(
                (i for i in self.issues_by_number.values() if i.repo == repo),
                key=lambda i: i.number,
            )

    # -- webhooks

    def webhook_payload(self, event: str, action: str | None = None, **overrides: Any) -> dict:
        """The example payload of ``event``/``action`` with ``overrides`` applied, validated.

        Overrides (each optional):
        ``pull`` (a ``PullRequest`` of this fake: sets repo, number, head/base ref and SHA,
        head repo, draft, author and the installation of its repository); ``repo``
        (``"owner/name"``); ``installation_id``; ``number``; ``head_sha`` (PR head,
        ``check_run``/``check_suite`` head, push ``after``); ``head_ref``; ``base_ref``;
        ``head_repo`` (a fork's ``"owner/name"``); ``draft``; ``merged``; ``title``;
        ``body`` (the comment body, or the PR body); ``sender`` (login of the sender,
        also the comment's or PR's author); ``author_association`` (of the comment);
        ``check_name``; ``check_run_id``; ``app_id`` (of the check run/suite);
        ``pull_requests`` (``PullRequest``\\ s for a check run's/suite's ``pull_requests``);
        ``ref`` and ``before`` (push; ``before`` also synchronize); ``merge`` (a dict
        deep-merged into the payload last).
        """
        payload = example_payload(event, action)
        _apply_overrides(self, event, payload, dict(overrides))
        validate_webhook(event, payload)
        return payload

    def webhook(
        self,
        event: str,
        action: str | None = None,
        *,
        delivery_id: str | None = None,
        secret: str | None = None,
        **overrides: Any,
    ) -> tuple[CIMultiDict[str], bytes]:
        """A signed delivery ``(headers, body)`` of ``webhook_payload(event, action, ...)``.

        ``headers`` is case-insensitive (gidgethub's ``Event.from_http`` reads lower case).
        """
        body = json.dumps(self.webhook_payload(event, action, **overrides)).encode()
        headers = CIMultiDict(
            {
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/fake",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
                "X-GitHub-Hook-ID": "1",
                "X-GitHub-Hook-Installation-Target-Type": "integration",
                "X-GitHub-Hook-Installation-Target-ID": str(self.app_id),
                "X-Hub-Signature-256": sign(
                    body, self.webhook_secret if secret is None else secret
                ),
            }
        )
        return headers, body

    # -- request handling

    def _compile_routes(self) -> list[tuple[re.Pattern[str], str, set[str]]]:
        routes = []
        for template, item in openapi_spec()["paths"].items():
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            methods = {m.upper() for m in item if m != "parameters"}
            routes.append((re.compile(pattern + "$"), template, methods))
        # Literal segments first: /issues/comments/{id} before /issues/{number}/...
        routes.sort(key=lambda r: r[1].count("{"))
        return routes

    def _violation(self, call: Call, message: str) -> None:
        self.violations.append(f"{call.method} {call.path}: {message}")

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        query = MultiDict(request.query)
        call = Call(request.method, request.path, dict(query), None, None)
        with self._lock:
            self.call_log.append(call)
            try:
                status, data, headers = self._dispatch(request, call, raw, query)
            except _Reply as reply:
                status, headers = reply.status, reply.headers
                data = {"message": reply.message, "documentation_url": "https://docs.github.com"}
            call.status = status
        headers = {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": str(int(time.time()) + 3600),
            "X-RateLimit-Used": "1",
            "X-GitHub-Request-Id": uuid.uuid4().hex[:16].upper(),
            **headers,
        }
        if data is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(data, status=status, headers=headers)

    def _dispatch(
        self, request: web.Request, call: Call, raw: bytes, query: MultiDict[str]
    ) -> tuple[int, Any, dict[str, str]]:
        from openapi_core.testing import MockRequest
        from werkzeug.datastructures import ImmutableMultiDict

        template, params = self._route(call)
        call.operation = f"{call.method} {template}"
        if raw:
            try:
                call.json = json.loads(raw)
            except ValueError:
                self._violation(call, "body is not JSON")
                raise _Reply(400, "Problems parsing JSON") from None
        mock = MockRequest(
            SPEC_SERVER,
            call.method,
            call.path,
            path_pattern=template,
            view_args=params,
            headers=dict(request.headers),
            data=raw or None,
            content_type="application/json",  # GitHub reads any body as JSON
        )
        mock.parameters.query = ImmutableMultiDict(list(query.items()))
        try:
            if self.validate:
                openapi_validator().validate_request(mock)
        except Exception as error:  # openapi-core raises a tree of validation errors
            detail = str(error.__cause__ or error) or type(error).__name__
            self._violation(call, f"invalid request ({type(error).__name__}): {detail[:500]}")
            raise _Reply(422, f"Invalid request. {detail[:200]}") from None
        self._check_rules(call, template)
        for fault in self._faults:
            sent = call.json if isinstance(call.json, dict) else {}
            if (
                fault.method in ("*", call.method)
                and fnmatch.fnmatchcase(call.path, fault.path_glob)
                and all(sent.get(k) == v for k, v in (fault.when or {}).items())
            ):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                body = fault.body
                if body is None:
                    body = {"message": f"Injected {fault.status}", "documentation_url": HTML}
                return fault.status, body, fault.headers
        self._authenticate(request, call, template, params)
        handler = getattr(self, "_op_" + re.sub(r"\W+", "_", call.operation).strip("_").lower())
        return handler(call, params, query, call.json or {})

    def _route(self, call: Call) -> tuple[str, dict[str, str]]:
        path_matched = False
        for pattern, template, methods in self._routes:
            match = pattern.match(call.path)
            if match:
                path_matched = True
                if call.method in methods:
                    return template, match.groupdict()
        reason = "method not allowed on this path" if path_matched else "unknown path"
        self._violation(call, f"{reason} (not in tests/support/github/openapi.json)")
        raise _Reply(404, "Not Found")

    def _check_rules(self, call: Call, template: str) -> None:
        body = call.json if isinstance(call.json, dict) else {}
        problems = []
        if len(body.get("body") or "") > MAX_BODY:
            problems.append(f"body is longer than {MAX_BODY} characters")
        creating = template.endswith("/check-runs") and call.method == "POST"
        if creating and body.get("status") == "completed" and "conclusion" not in body:
            problems.append("status completed needs a conclusion")
        if "check-runs" in template and body.get("conclusion") == "stale":
            problems.append("apps cannot set conclusion stale")
        output = body.get("output") if "check-runs" in template else None
        for part in ("summary", "text"):
            if isinstance(output, dict) and len((output.get(part) or "").encode()) > CHECK_BYTES:
                problems.append(f"{part} exceeds a maximum bytesize of {CHECK_BYTES}")
        if problems:
            self._violation(call, "; ".join(problems))
            raise _Reply(422, "Validation Failed: " + "; ".join(problems))

    def _authenticate(
        self, request: web.Request, call: Call, template: str, params: dict[str, str]
    ) -> None:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if (call.method, template) in JWT_OPERATIONS:
            call.token = "jwt"
            if scheme.lower() != "bearer":
                raise _Reply(401, "A JSON web token could not be decoded")
            try:
                claims = jwt.decode(
                    credential,
                    self.public_key_pem,
                    algorithms=["RS256"],
                    options={"require": ["iat", "exp", "iss"]},
                    leeway=30,
                )
            except jwt.PyJWTError as error:
                raise _Reply(401, f"A JSON web token could not be decoded ({error})") from None
            if str(claims["iss"]) != str(self.app_id):
                raise _Reply(401, "'Issuer' claim ('iss') must be the app's id")
            if claims["exp"] - time.time() > 630:
                raise _Reply(401, "'Expiration time' claim ('exp') is too far in the future")
            return
        if scheme.lower() not in ("token", "bearer") or not credential:
            raise _Reply(401, "Requires authentication")
        call.token = credential
        token = self.tokens.get(credential)
        if token is None or token.expires_at <= datetime.now(UTC):
            raise _Reply(401, "Bad credentials")
        if "owner" not in params:  # /installation/...: the token's own installation
            return
        full_name = f"{params.get('owner')}/{params.get('repo')}"
        repo = self.repos.get(full_name)
        allowed = token.repos if token.repos is not None else None
        if (
            repo is None
            or repo.installation_id != token.installation_id
            or (allowed is not None and full_name not in allowed)
        ):
            raise _Reply(404, "Not Found")

    # -- JSON shapes

    def _api(self, path: str) -> str:
        return f"{self.url}{path}"

    def _user(self, login: str, kind: str = "User") -> dict[str, Any]:
        api = self._api(f"/users/{login}")
        return {
            "login": login,
            "id": int(hashlib.sha256(login.encode()).hexdigest()[:7], 16),
            "node_id": "U_" + login,
            "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{HTML}/{login}",
            "followers_url": api + "/followers",
            "following_url": api + "/following{/other_user}",
            "gists_url": api + "/gists{/gist_id}",
            "starred_url": api + "/starred{/owner}{/repo}",
            "subscriptions_url": api + "/subscriptions",
            "organizations_url": api + "/orgs",
            "repos_url": api + "/repos",
            "events_url": api + "/events{/privacy}",
            "received_events_url": api + "/received_events",
            "type": kind,
            "site_admin": False,
        }

    def _app(self) -> dict[str, Any]:
        return {
            "id": self.app_id,
            "slug": self.app_slug,
            "node_id": "A_" + self.app_slug,
            "owner": self._user("pmelchior"),
            "name": self.app_slug,
            "description": "Scientific regression reports",
            "external_url": "https://example.org",
            "html_url": f"{HTML}/apps/{self.app_slug}",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "permissions": {"checks": "write", "issues": "write", "pull_requests": "read"},
            "events": ["check_run", "check_suite", "issue_comment", "pull_request", "push"],
        }

    def _repo_json(self, full_name: str) -> dict[str, Any]:
        template = example_payload("pull_request", "opened")["repository"]
        text = json.dumps(template).replace("Codertocat/Hello-World", full_name)
        data = json.loads(text.replace("https://api.github.com", self.url))
        owner, name = full_name.split("/")
        repo = self.repos.get(full_name)
        data |= {"id": repo.id if repo else 1, "name": name, "full_name": full_name}
        data |= {"owner": self._user(owner), "private": bool(repo and repo.private)}
        data["default_branch"] = repo.default_branch if repo else "main"
        data["fork"] = repo is None
        if repo and repo.clone_url:
            data["clone_url"] = repo.clone_url
        return data

    def _installation_json(self, inst: Installation) -> dict[str, Any]:
        return {
            "id": inst.id,
            "account": self._user(inst.account, "Organization"),
            "app_id": self.app_id,
            "app_slug": self.app_slug,
            "target_id": 1,
            "target_type": "Organization",
            "repository_selection": "selected",
            "access_tokens_url": self._api(f"/app/installations/{inst.id}/access_tokens"),
            "repositories_url": self._api("/installation/repositories"),
            "html_url": f"{HTML}/settings/installations/{inst.id}",
            "permissions": {"checks": "write", "issues": "write", "metadata": "read"},
            "events": ["check_run", "issue_comment", "pull_request", "push"],
            "created_at": _iso(inst.created_at),
            "updated_at": _iso(inst.created_at),
            "single_file_name": None,
            "suspended_by": None,
            "suspended_at": None,
        }

    def _reactions_json(self, comment: Comment) -> dict[str, Any]:
        counts = {content: 0 for content in REACTIONS}
        for reaction in comment.reactions:
            counts[reaction.content] += 1
        url = self._api(f"/repos/{comment.repo}/issues/comments/{comment.id}/reactions")
        return {"url": url, "total_count": len(comment.reactions), **counts}

    def _is_pull(self, repo: str, number: int) -> bool:
        return (repo, number) in self.pulls

    def _comment_json(self, comment: Comment) -> dict[str, Any]:
        kind = "pull" if self._is_pull(comment.repo, comment.number) else "issues"
        return {
            "id": comment.id,
            "node_id": f"IC_{comment.id}",
            "url": self._api(f"/repos/{comment.repo}/issues/comments/{comment.id}"),
            "html_url": f"{HTML}/{comment.repo}/{kind}/{comment.number}#issuecomment-{comment.id}",
            "issue_url": self._api(f"/repos/{comment.repo}/issues/{comment.number}"),
            "body": comment.body,
            "user": self._user(comment.user, comment.user_type),
            "created_at": _iso(comment.created_at),
            "updated_at": _iso(comment.updated_at),
            "author_association": comment.author_association,
            "reactions": self._reactions_json(comment),
            "performed_via_github_app": self._app() if comment.via_app else None,
        }

    def _check_run_json(self, run: CheckRun) -> dict[str, Any]:
        api = self._api(f"/repos/{run.repo}/check-runs/{run.id}")
        output = {
            "title": run.output.get("title"),
            "summary": run.output.get("summary"),
            "text": run.output.get("text"),
            "annotations_count": len(run.output.get("annotations") or []),
            "annotations_url": api + "/annotations",
        }
        pulls = [
            self._check_pull_json(p)
            for p in self.pulls.values()
            if p.repo == run.repo and p.head_sha == run.head_sha and not p.fork
        ]
        return {
            "id": run.id,
            "node_id": f"CR_{run.id}",
            "head_sha": run.head_sha,
            "external_id": run.external_id,
            "url": api,
            "html_url": f"{HTML}/{run.repo}/runs/{run.id}",
            "details_url": run.details_url,
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": _iso(run.started_at),
            "completed_at": _iso(run.completed_at),
            "output": output,
            "name": run.name,
            "check_suite": {"id": run.check_suite_id},
            "app": self._app(),
            "pull_requests": pulls,
        }

    def _check_pull_json(self, pull: PullRequest) -> dict[str, Any]:
        def side(ref: str, sha: str, full_name: str) -> dict[str, Any]:
            repo = self.repos.get(full_name)
            info = {"id": repo.id if repo else 1, "url": self._api(f"/repos/{full_name}")}
            return {"ref": ref, "sha": sha, "repo": info | {"name": full_name.split("/")[1]}}

        return {
            "id": pull.id,
            "number": pull.number,
            "url": self._api(f"/repos/{pull.repo}/pulls/{pull.number}"),
            "head": side(pull.head_ref, pull.head_sha, pull.head_repo),
            "base": side(pull.base_ref, pull.base_sha, pull.repo),
        }

    def _pull_json(self, pull: PullRequest) -> dict[str, Any]:
        data = copy.deepcopy(example_payload("pull_request", "opened")["pull_request"])
        text = json.dumps(data).replace("Codertocat/Hello-World", pull.repo)
        text = text.replace("https://api.github.com", self.url)
        text = re.sub(r"/(pulls|pull|issues)/2\b", rf"/\1/{pull.number}", text)
        data = json.loads(text)
        closed = pull.state == "closed"
        data |= {
            "id": pull.id,
            "node_id": f"PR_{pull.id}",
            "number": pull.number,
            "state": pull.state,
            "title": pull.title,
            "body": pull.body,
            "user": self._user(pull.user),
            "draft": pull.draft,
            "merged": pull.merged,
            "created_at": _iso(pull.created_at),
            "updated_at": _iso(pull.created_at),
            "closed_at": _iso(pull.created_at) if closed else None,
            "merged_at": _iso(pull.created_at) if pull.merged else None,
            "merge_commit_sha": pull.merge_commit_sha,
            "auto_merge": None,
            "active_lock_reason": None,
            "merged_by": None,
            "mergeable": None,
            "mergeable_state": "unknown",
            "rebaseable": None,
        }
        head_owner = pull.head_repo.split("/")[0]
        data["head"] = {
            "label": f"{head_owner}:{pull.head_ref}",
            "ref": pull.head_ref,
            "sha": pull.head_sha,
            "user": self._user(head_owner),
            "repo": self._repo_json(pull.head_repo),
        }
        base_owner = pull.repo.split("/")[0]
        data["base"] = {
            "label": f"{base_owner}:{pull.base_ref}",
            "ref": pull.base_ref,
            "sha": pull.base_sha,
            "user": self._user(base_owner),
            "repo": self._repo_json(pull.repo),
        }
        return data

    def _issue_json(self, issue: Issue | PullRequest) -> dict[str, Any]:
        api = self._api(f"/repos/{issue.repo}/issues/{issue.number}")
        is_pull = isinstance(issue, PullRequest)
        comments = len(self.comments(issue.repo, issue.number))
        data: dict[str, Any] = {
            "id": issue.id,
            "node_id": f"I_{issue.id}",
            "url": api,
            "repository_url": self._api(f"/repos/{issue.repo}"),
            "labels_url": api + "/labels{/name}",
            "comments_url": api + "/comments",
            "events_url": api + "/events",
            "html_url": f"{HTML}/{issue.repo}/{'pull' if is_pull else 'issues'}/{issue.number}",
            "number": issue.number,
            "state": issue.state,
            "title": issue.title,
            "body": issue.body,
            "user": self._user(issue.user),
            "labels": [],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": comments,
            "created_at": _iso(issue.created_at),
            "updated_at": _iso(issue.created_at),
            "closed_at": None,
            "author_association": "NONE",
        }
        if is_pull:
            html = data["html_url"]
            data["pull_request"] = {
                "url": self._api(f"/repos/{issue.repo}/pulls/{issue.number}"),
                "html_url": html,
                "diff_url": html + ".diff",
                "patch_url": html + ".patch",
                "merged_at": None,
            }
            data["draft"] = issue.draft
            return data
        data["user"] = self._user(issue.user, issue.user_type)
        data["labels"] = [
            {
                "id": int(hashlib.sha256(name.encode()).hexdigest()[:7], 16),
                "node_id": f"LA_{name}",
                "url": self._api(f"/repos/{issue.repo}/labels/{name}"),
                "name": name,
                "description": None,
                "color": "ededed",
                "default": False,
            }
            for name in issue.labels
        ]
        data["assignees"] = [self._user(login) for login in issue.assignees]
        data["assignee"] = data["assignees"][0] if data["assignees"] else None
        data["updated_at"] = _iso(issue.updated_at)
        data["closed_at"] = _iso(issue.closed_at)
        if issue.state_reason is not None:  # null fails openapi-core's nullable enum check
            data["state_reason"] = issue.state_reason
        return data

    def _page(
        self, call: Call, query: MultiDict[str], items: list[Any]
    ) -> tuple[list[Any], dict[str, str]]:
        per_page = max(1, min(int(query.get("per_page", 30)), 100))
        page = max(1, int(query.get("page", 1)))
        last = max(1, -(-len(items) // per_page))
        links = []

        def link(number: int, rel: str) -> str:
            args = {k: v for k, v in query.items() if k != "page"} | {"page": str(number)}
            return f'<{self.url}{call.path}?{urlencode(args)}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        headers = {"Link": ", ".join(links)} if links else {}
        return items[(page - 1) * per_page : page * per_page], headers

    # -- operations (named after method and template)

    def _op_post_app_installations_installation_id_access_tokens(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        inst = self.installations.get(int(params["installation_id"]))
        if inst is None:
            raise _Reply(404, "Not Found")
        repos = None
        if "repositories" in body or "repository_ids" in body:
            names = set(body.get("repositories") or [])
            ids = set(body.get("repository_ids") or [])
            repos = [r for r in inst.repos if r.split("/")[1] in names or self.repos[r].id in ids]
        token = self.issue_token(inst.id, repos=repos)
        data = {
            "token": token,
            "expires_at": _iso(self.tokens[token].expires_at),
            "permissions": {"checks": "write", "issues": "write", "metadata": "read"},
            "repository_selection": "selected",
        }
        if repos is not None:
            data["repositories"] = [self._repo_json(r) for r in repos]
        return 201, data, {}

    def _op_get_app_installations(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        items, headers = self._page(call, query, list(self.installations.values()))
        return 200, [self._installation_json(i) for i in items], headers

    def _op_get_installation_repositories(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        token = self.tokens[call.token or ""]
        names = self.installations[token.installation_id].repos
        names = [n for n in names if token.repos is None or n in token.repos]
        items, headers = self._page(call, query, names)
        data = {"total_count": len(names), "repositories": [self._repo_json(n) for n in items]}
        return 200, data, headers

    def _op_get_repos_owner_repo_branches_branch(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self.repos[self._repo_of(params)]
        sha = repo.branches.get(params["branch"])
        if sha is None:
            raise _Reply(404, "Branch not found")
        api = self._api(f"/repos/{repo.full_name}")
        commit = {"sha": sha, "url": f"{api}/commits/{sha}", "node_id": f"C_{sha[:12]}"}
        data = {
            "name": params["branch"],
            "commit": commit,
            "_links": {
                "self": f"{api}/branches/{params['branch']}",
                "html": f"{HTML}/{repo.full_name}/tree/{params['branch']}",
            },
            "protected": False,
            "protection": {"enabled": False},
            "protection_url": f"{api}/branches/{params['branch']}/protection",
        }
        return 200, data, {}

    def _op_get_repos_owner_repo_installation(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self.repos.get(f"{params['owner']}/{params['repo']}")
        if repo is None or repo.installation_id is None:
            raise _Reply(404, "Not Found")
        return 200, self._installation_json(self.installations[repo.installation_id]), {}

    def _repo_of(self, params: dict[str, str]) -> str:
        return f"{params['owner']}/{params['repo']}"

    def _op_post_repos_owner_repo_check_runs(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self._repo_of(params)
        suite = int(hashlib.sha256(f"{repo}@{body['head_sha']}".encode()).hexdigest()[:8], 16)
        run = CheckRun(self._next_id(), repo, body["name"], body["head_sha"], check_suite_id=suite)
        self.check_run_store[run.id] = run
        self._update_run(run, body, created=True)
        return 201, self._check_run_json(run), {}

    def _update_run(self, run: CheckRun, body: dict[str, Any], created: bool = False) -> None:
        for key in ("name", "details_url", "external_id"):
            if key in body:
                setattr(run, key, body[key])
        if "output" in body:
            run.output = {**run.output, **body["output"]}
        if "actions" in body:
            run.actions = body["actions"]
        if "status" in body:
            run.status = body["status"]
        if "conclusion" in body:
            run.conclusion, run.status = body["conclusion"], "completed"
        for key in ("started_at", "completed_at"):
            if key in body:
                setattr(run, key, datetime.fromisoformat(body[key].replace("Z", "+00:00")))
        if run.status != "queued" and run.started_at is None:
            run.started_at = _now()
        if created and run.started_at is None:
            run.started_at = _now()
        if run.status == "completed" and run.completed_at is None:
            run.completed_at = _now()

    def _op_patch_repos_owner_repo_check_runs_check_run_id(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        run = self.check_run_store.get(int(params["check_run_id"]))
        if run is None or run.repo != self._repo_of(params):
            raise _Reply(404, "Not Found")
        self._update_run(run, body)
        return 200, self._check_run_json(run), {}

    def _op_get_repos_owner_repo_commits_ref_check_runs(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo, ref = self._repo_of(params), params["ref"]
        shas = {ref} | {
            p.head_sha
            for p in self.pulls.values()
            if p.repo == repo
            and ref in (p.head_ref, f"heads/{p.head_ref}", f"refs/heads/{p.head_ref}")
        }
        runs = [
            r
            for r in self.check_runs(repo)
            if r.head_sha in shas
            and query.get("check_name", r.name) == r.name
            and query.get("status", r.status) == r.status
            and int(query.get("app_id", self.app_id)) == self.app_id
        ]
        if query.get("filter", "latest") == "latest":
            latest: dict[str, CheckRun] = {}
            for run in runs:
                latest[run.name] = run
            runs = list(latest.values())
        runs.reverse()  # newest first, as GitHub lists them
        items, headers = self._page(call, query, runs)
        data = {"total_count": len(runs), "check_runs": [self._check_run_json(r) for r in items]}
        return 200, data, headers

    def _target(self, params: dict[str, str]) -> Issue | PullRequest:
        key = (self._repo_of(params), int(params["issue_number"]))
        target = self.pulls.get(key) or self.issues_by_number.get(key)
        if target is None:
            raise _Reply(404, "Not Found")
        return target

    def _op_get_repos_owner_repo_issues_issue_number_comments(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        target = self._target(params)
        comments = self.comments(target.repo, target.number)
        if "since" in query:
            since = datetime.fromisoformat(query["since"].replace("Z", "+00:00"))
            comments = [c for c in comments if c.updated_at >= since]
        items, headers = self._page(call, query, comments)
        return 200, [self._comment_json(c) for c in items], headers

    def _op_post_repos_owner_repo_issues_issue_number_comments(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        target = self._target(params)
        comment = self.add_comment(target.repo, target.number, body["body"], bot=True)
        return 201, self._comment_json(comment), {}

    def _comment_of(self, params: dict[str, str]) -> Comment:
        comment = self.comment_store.get(int(params["comment_id"]))
        if comment is None or comment.repo != self._repo_of(params):
            raise _Reply(404, "Not Found")
        return comment

    def _op_patch_repos_owner_repo_issues_comments_comment_id(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        comment = self._comment_of(params)
        if comment.user != self.bot_login:
            raise _Reply(403, "Resource not accessible by integration")
        comment.body, comment.updated_at = body["body"], _now()
        return 200, self._comment_json(comment), {}

    def _op_post_repos_owner_repo_issues_comments_comment_id_reactions(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        comment = self._comment_of(params)
        status = 200
        mine = [
            r for r in comment.reactions if (r.user, r.content) == (self.bot_login, body["content"])
        ]
        if mine:
            reaction = mine[0]
        else:
            status = 201
            reaction = Reaction(self._next_id(), body["content"], self.bot_login, "Bot")
            comment.reactions.append(reaction)
        data = {
            "id": reaction.id,
            "node_id": f"REA_{reaction.id}",
            "user": self._user(reaction.user, reaction.user_type),
            "content": reaction.content,
            "created_at": _iso(reaction.created_at),
        }
        return status, data, {}

    def _op_get_repos_owner_repo_collaborators_username_permission(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self.repos[self._repo_of(params)]
        login = params["username"]
        role = repo.collaborators.get(login, "none" if repo.private else "read")
        user = self._user(login) | {"role_name": role}
        return 200, {"permission": _LEGACY[role], "role_name": role, "user": user}, {}

    def _op_get_repos_owner_repo_pulls_pull_number(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        pull = self.pulls.get((self._repo_of(params), int(params["pull_number"])))
        if pull is None:
            raise _Reply(404, "Not Found")
        return 200, self._pull_json(pull), {}

    def _op_get_repos_owner_repo_pulls(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo, state = self._repo_of(params), query.get("state", "open")
        pulls = [
            p
            for p in self.pulls.values()
            if p.repo == repo
            and state in ("all", p.state)
            and query.get("base", p.base_ref) == p.base_ref
            and query.get("head", f"{p.head_repo.split('/')[0]}:{p.head_ref}")
            == f"{p.head_repo.split('/')[0]}:{p.head_ref}"
        ]
        pulls.sort(key=lambda p: p.number, reverse=query.get("direction", "desc") == "desc")
        items, headers = self._page(call, query, pulls)
        return 200, [self._pull_json(p) for p in items], headers

    def _op_get_repos_owner_repo_commits_commit_sha_pulls(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo, sha = self._repo_of(params), params["commit_sha"]
        # As reported of GitHub: a fork's PR is not listed by its head commit.
        pulls = [
            p
            for p in self.pulls.values()
            if p.repo == repo and (sha == p.merge_commit_sha or (sha == p.head_sha and not p.fork))
        ]
        items, headers = self._page(call, query, pulls)
        return 200, [self._pull_json(p) for p in items], headers

    @staticmethod
    def _label_names(labels: list[Any]) -> list[str]:
        return [label if isinstance(label, str) else label.get("name", "") for label in labels]

    def _op_post_repos_owner_repo_issues(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        issue = self.add_issue(
            self._repo_of(params),
            str(body["title"]),
            user=self.bot_login,
            user_type="Bot",
            body=body.get("body"),
            labels=self._label_names(body.get("labels") or []),
            assignees=list(body.get("assignees") or []),
        )
        return 201, self._issue_json(issue), {}

    def _op_patch_repos_owner_repo_issues_issue_number(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        target = self._target(params)
        if isinstance(target, PullRequest):
            if "title" in body:
                target.title = str(body["title"])
            if "state" in body:
                target.state = body["state"]
            return 200, self._issue_json(target), {}
        for key in ("title", "body", "state", "state_reason"):
            if key in body:
                setattr(target, key, body[key])
        if "labels" in body:
            target.labels = self._label_names(body["labels"])
        if "assignees" in body:
            target.assignees = list(body["assignees"])
        target.updated_at = _now()
        target.closed_at = target.updated_at if target.state == "closed" else None
        return 200, self._issue_json(target), {}

    def _op_get_repos_owner_repo_issues(
        self, call: Call, params: dict[str, str], query: MultiDict[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        repo, state = self._repo_of(params), query.get("state", "open")
        wanted = {label for label in query.get("labels", "").split(",") if label}
        items: list[Issue | PullRequest] = [
            *self.issues(repo),
            *(p for p in self.pulls.values() if p.repo == repo),
        ]
        items = [
            i
            for i in items
            if state in ("all", i.state)
            and query.get("creator", i.user) == i.user
            and wanted <= set(getattr(i, "labels", []))
        ]
        items.sort(key=lambda i: i.number, reverse=query.get("direction", "desc") == "desc")
        page, headers = self._page(call, query, items)
        return 200, [self._issue_json(i) for i in page], headers


# --- webhook overrides -------------------------------------------------------------------


def _deep_merge(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _replace_strings(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return node.replace(old, new)
    if isinstance(node, list):
        return [_replace_strings(item, old, new) for item in node]
    if isinstance(node, dict):
        return {key: _replace_strings(value, old, new) for key, value in node.items()}
    return node


def _set_repo(repo: dict[str, Any], full_name: str) -> dict[str, Any]:
    repo = _replace_strings(repo, repo["full_name"], full_name)
    owner, name = full_name.split("/")
    repo["name"], repo["full_name"] = name, full_name
    repo["owner"]["login"] = owner
    return repo


def _set_user(user: dict[str, Any], login: str) -> dict[str, Any]:
    user = _replace_strings(user, f"/{user['login']}", f"/{login}")
    user["login"] = login
    return user


def _apply_overrides(
    fake: FakeGitHub, event: str, payload: dict[str, Any], overrides: dict[str, Any]
) -> None:
    pull: PullRequest | None = overrides.pop("pull", None)
    if pull is not None:
        repo = fake.repos.get(pull.repo)
        defaults = {
            "repo": pull.repo,
            "number": pull.number,
            "head_sha": pull.head_sha,
            "head_ref": pull.head_ref,
            "base_ref": pull.base_ref,
            "draft": pull.draft,
            "pull_requests": [] if pull.fork else [pull],
        }
        if pull.fork:
            defaults["head_repo"] = pull.head_repo
        if event == "pull_request":
            defaults["sender"] = pull.user
        if repo is not None and repo.installation_id is not None:
            defaults["installation_id"] = repo.installation_id
        overrides = defaults | overrides
    merge = overrides.pop("merge", None)
    pr = payload.get("pull_request")
    issue = payload.get("issue")
    comment = payload.get("comment")
    run = payload.get("check_run") or payload.get("check_suite")

    def take(name: str) -> Any:
        return overrides.pop(name, None)

    if (full_name := take("repo")) is not None:
        old = payload["repository"]["full_name"]
        for key in ("pull_request", "issue", "comment", "check_run", "check_suite"):
            if key in payload:
                payload[key] = _replace_strings(payload[key], old, full_name)
        payload["repository"] = _set_repo(payload["repository"], full_name)
        if full_name in fake.repos:
            payload["repository"]["default_branch"] = fake.repos[full_name].default_branch
        pr, issue, comment = (
            payload.get("pull_request"),
            payload.get("issue"),
            payload.get("comment"),
        )
        run = payload.get("check_run") or payload.get("check_suite")
        if pr is not None:
            pr["base"]["repo"] = _set_repo(pr["base"]["repo"], full_name)
            if pr["head"]["repo"] and not pr["head"]["repo"].get("fork"):
                pr["head"]["repo"] = _set_repo(pr["head"]["repo"], full_name)
    if (installation_id := take("installation_id")) is not None:
        payload["installation"]["id"] = installation_id
    if (number := take("number")) is not None:
        for node in (pr, issue):
            if node is not None:
                old = node["number"]
                updated = _replace_strings_re(node, rf"/(pulls|pull|issues)/{old}\b", number)
                node.clear()
                node.update(updated)
                node["number"] = number
        if "number" in payload:
            payload["number"] = number
    if (head_sha := take("head_sha")) is not None:
        if pr is not None:
            pr["head"]["sha"] = head_sha
        if run is not None:
            run["head_sha"] = head_sha
            if "check_suite" in run:
                run["check_suite"]["head_sha"] = head_sha
        if event == "push":
            payload["after"] = head_sha
            if payload.get("head_commit"):
                payload["head_commit"]["id"] = head_sha
        if event == "pull_request" and "after" in payload:
            payload["after"] = head_sha
    if (head_ref := take("head_ref")) is not None and pr is not None:
        pr["head"]["ref"] = head_ref
        pr["head"]["label"] = f"{pr['head']['label'].split(':')[0]}:{head_ref}"
    if (base_ref := take("base_ref")) is not None and pr is not None:
        pr["base"]["ref"] = base_ref
        pr["base"]["label"] = f"{pr['base']['label'].split(':')[0]}:{base_ref}"
    if (head_repo := take("head_repo")) is not None and pr is not None:
        pr["head"]["repo"] = _set_repo(pr["head"]["repo"], head_repo)
        pr["head"]["repo"]["fork"] = True
        owner = head_repo.split("/")[0]
        pr["head"]["label"] = f"{owner}:{pr['head']['ref']}"
        pr["head"]["user"] = _set_user(pr["head"]["user"], owner)
    if (draft := take("draft")) is not None and pr is not None:
        pr["draft"] = draft
    if (merged := take("merged")) is not None and pr is not None:
        pr["merged"] = merged
        pr["merged_at"] = pr["closed_at"] or _iso(_now()) if merged else None
    if (title := take("title")) is not None:
        (pr or issue or {})["title"] = title
    if (body := take("body")) is not None:
        if comment is not None:
            comment["body"] = body
        elif pr is not None:
            pr["body"] = body
    if (sender := take("sender")) is not None:
        payload["sender"] = _set_user(payload["sender"], sender)
        if comment is not None:
            comment["user"] = _set_user(comment["user"], sender)
        elif pr is not None:
            pr["user"] = _set_user(pr["user"], sender)
    if (association := take("author_association")) is not None and comment is not None:
        comment["author_association"] = association
    if (check_name := take("check_name")) is not None and "check_run" in payload:
        payload["check_run"]["name"] = check_name
    if (check_run_id := take("check_run_id")) is not None and "check_run" in payload:
        payload["check_run"]["id"] = check_run_id
    if (app_id := take("app_id")) is not None and run is not None:
        run["app"]["id"] = app_id
    if (pulls := take("pull_requests")) is not None and run is not None:
        run["pull_requests"] = [fake._check_pull_json(p) for p in pulls]
        for item in run["pull_requests"]:
            item["url"] = item["url"].replace(fake.url, "https://api.github.com")
            for side in ("head", "base"):
                side_repo = item[side]["repo"]
                side_repo["url"] = side_repo["url"].replace(fake.url, "https://api.github.com")
    if (ref := take("ref")) is not None and event == "push":
        payload["ref"] = ref
    if (before := take("before")) is not None and "before" in payload:
        payload["before"] = before
    if overrides:
        raise TypeError(f"unknown webhook overrides: {sorted(overrides)}")
    if merge:
        _deep_merge(payload, merge)


def _replace_strings_re(node: Any, pattern: str, number: int) -> Any:
    if isinstance(node, str):
        return re.sub(pattern, lambda m: f"/{m.group(1)}/{number}", node)
    if isinstance(node, list):
        return [_replace_strings_re(item, pattern, number) for item in node]
    if isinstance(node, dict):
        return {key: _replace_strings_re(value, pattern, number) for key, value in node.items()}
    return node


# --- pytest ------------------------------------------------------------------------------


def running_fake_github(**kwargs: Any) -> Iterator[FakeGitHub]:
    """Start a ``FakeGitHub(**kwargs)``, yield it, stop it (no violation check)."""
    fake = FakeGitHub(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    """A fresh, running ``FakeGitHub`` per test; fails the test if a violation was recorded."""
    fake = FakeGitHub().start()
    yield fake
    fake.stop()
    if fake.violations:
        pytest.fail(
            "requests the GitHub API description rejects:\n  " + "\n  ".join(fake.violations),
            pytrace=False,
        )


__all__ = [
    "Call",
    "CheckRun",
    "Comment",
    "FakeGitHub",
    "Installation",
    "Issue",
    "PullRequest",
    "Repo",
    "app_keys",
    "example_payload",
    "fake_github",
    "running_fake_github",
    "sign",
    "validate_webhook",
]
