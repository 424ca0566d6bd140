"""Register the GitHub App from its manifest, in one command.

``python -m bot.manifest register --public-url URL --out DIR [--org ORG]`` serves a tiny
page on ``127.0.0.1`` that posts the manifest to GitHub's app-creation form. After you
confirm there, GitHub redirects back to the page with a one-time ``code``, which is
exchanged (``POST /app-manifests/{code}/conversions``, no authentication, within an hour)
for the new app's id, private key and webhook secret. They are written to ``DIR`` with
mode 0600 (``github-app.pem``, ``webhook-secret``, ``app.env``) and, given
``--private-key-secret``/``--webhook-secret-secret``, added as new versions of those
Secret Manager secrets. The environment lines for the bot are printed, no secret in them.

``python -m bot.manifest show --public-url URL`` prints the manifest
(``deploy/github-app-manifest.json`` is it for ``https://BOT_PUBLIC_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import secrets
import sys
import webbrowser
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from gidgethub.aiohttp import GitHubAPI

# issues: the PR report comment and the drift issue; contents: branches for drift runs.
PERMISSIONS: dict[str, str] = {
    "checks": "write",
    "pull_requests": "write",
    "issues": "write",
    "contents": "read",
    "metadata": "read",
}
EVENTS: list[str] = ["pull_request", "issue_comment", "check_run", "check_suite", "push"]
DEFAULT_NAME = "scarlet-regression"
DEFAULT_PORT = 8765
GITHUB_URL = "https://github.com"
API_URL = "https://api.github.com"
PEM_FILE = "github-app.pem"
WEBHOOK_SECRET_FILE = "webhook-secret"
ENV_FILE = "app.env"
APP_FILE = "app.json"


def manifest(public_url: str, *, redirect_url: str, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The app's manifest for a bot served at ``public_url``."""
    base = public_url.rstrip("/")
    return {
        "name": name,
        "url": base,
        "description": "Scientific regression reports for pull requests on scarlet.",
        "hook_attributes": {"url": f"{base}/webhook", "active": True},
        "redirect_url": redirect_url,
        "public": False,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }


def creation_url(state: str, *, org: str | None = None, github_url: str = GITHUB_URL) -> str:
    """Where the manifest is posted: the user's or an organisation's new-app form."""
    where = f"organizations/{quote(org, safe='')}/settings" if org else "settings"
    return f"{github_url}/{where}/apps/new?state={quote(state, safe='')}"


def form_page(app_manifest: dict[str, Any], action: str) -> str:
    """An HTML page that posts ``app_manifest`` to ``action`` (at once, or by its button)."""
    value = html.escape(json.dumps(app_manifest), quote=True)
    return (
        "<!doctype html><meta charset=utf-8><title>Register the GitHub App</title>"
        f'<form id=f method=post action="{html.escape(action, quote=True)}">'
        f'<input type=hidden name=manifest value="{value}">'
        "<button>Create the GitHub App on GitHub</button></form>"
        "<script>document.getElementById('f').submit()</script>"
    )


async def convert(
    session: aiohttp.ClientSession, code: str, *, api_url: str = API_URL
) -> dict[str, Any]:
    """Exchange a manifest ``code`` for the app's credentials (id, pem, webhook_secret…)."""
    gh = GitHubAPI(session, DEFAULT_NAME, base_url=api_url)
    data = await gh.post("/app-manifests/{code}/conversions", {"code": code}, data=b"")
    if not isinstance(data, dict) or not all(data.get(k) for k in ("id", "pem")):
        raise RuntimeError("GitHub's conversion answer lacks the app's id or key")
    return data


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_out(out: Path) -> None:
    """Refuse a folder that already holds credentials (another app's key would be lost)."""
    existing = [name for name in (PEM_FILE, WEBHOOK_SECRET_FILE, ENV_FILE) if (out / name).exists()]
    if existing:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}: use another --out")


def store_credentials(app: dict[str, Any], out: Path) -> list[str]:
    """Write the app's key, webhook secret and env file into ``out`` (0600; existing
    credentials are never overwritten); return the bot's environment lines."""
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    pem, hook = out / PEM_FILE, out / WEBHOOK_SECRET_FILE
    _write_private(pem, app["pem"])
    _write_private(hook, app.get("webhook_secret") or "")
    public = {k: app.get(k) for k in ("id", "slug", "name", "html_url", "client_id")}
    _write_private(out / APP_FILE, json.dumps(public, indent=2) + "\n")
    lines = [
        f"GITHUB_APP_ID={app['id']}",
        f"GITHUB_APP_PRIVATE_KEY_FILE={pem.resolve()}",
        f'GITHUB_WEBHOOK_SECRET="$(cat {hook.resolve()})"',
    ]
    env = [lines[0], lines[1], f"GITHUB_WEBHOOK_SECRET={app.get('webhook_secret') or ''}"]
    _write_private(out / ENV_FILE, "\n".join(env) + "\n")
    return lines


def store_in_secret_manager(
    app: dict[str, Any],
    *,
    private_key_secret: str | None,
    webhook_secret_secret: str | None,
    client: Any = None,
) -> list[str]:
    """Add the key and webhook secret as new versions of existing secrets; the
    ``*_SECRET`` lines for ``app.yaml`` (resource names, not values)."""
    from bot.secrets import add_secret_version

    lines = []
    for secret, value, variable in (
        (private_key_secret, app["pem"], "GITHUB_APP_PRIVATE_KEY_SECRET"),
        (webhook_secret_secret, app.get("webhook_secret") or "", "GITHUB_WEBHOOK_SECRET_SECRET"),
    ):
        if secret:
            add_secret_version(secret, value.encode(), client)
            lines.append(f"{variable}={secret}/versions/latest")
    return lines


def registration_app(
    app_manifest: dict[str, Any],
    action: str,
    state: str,
    on_code: Any,
) -> web.Application:
    """The local pages: ``/`` posts the manifest, ``/redirect`` receives GitHub's code
    (checked against ``state``) and awaits ``on_code(code)`` for the page's message."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=form_page(app_manifest, action), content_type="text/html")

    async def redirect(request: web.Request) -> web.Response:
        code = request.query.get("code", "")
        if not code or not secrets.compare_digest(request.query.get("state", ""), state):
            return web.Response(status=400, text="missing code or wrong state")
        try:
            message = await on_code(code)
        except Exception as error:
            return web.Response(status=500, text=f"registration failed: {error}")
        return web.Response(text=message)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/redirect", redirect)
    return app


async def register(
    *,
    public_url: str,
    out: Path,
    name: str = DEFAULT_NAME,
    org: str | None = None,
    port: int = DEFAULT_PORT,
    github_url: str = GITHUB_URL,
    api_url: str = API_URL,
    private_key_secret: str | None = None,
    webhook_secret_secret: str | None = None,
    open_browser: bool = True,
) -> list[str]:
    """Serve the registration pages until GitHub's redirect has been handled; return
    the environment lines for the bot."""
    check_out(out)
    state = secrets.token_urlsafe(16)
    redirect_url = f"http://127.0.0.1:{port}/redirect"
    app_manifest = manifest(public_url, redirect_url=redirect_url, name=name)
    done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

    async def on_code(code: str) -> str:
        if done.done():
            return "This registration has already been completed."
        try:
            async with aiohttp.ClientSession() as session:
                app = await convert(session, code, api_url=api_url)
            lines = store_credentials(app, out)
            lines += store_in_secret_manager(
                app,
                private_key_secret=private_key_secret,
                webhook_secret_secret=webhook_secret_secret,
            )
        except BaseException as error:
            done.set_exception(error)
            raise
        lines.append(f"# install it: {github_url}/apps/{app.get('slug', '')}/installations/new")
        done.set_result(lines)
        return f"GitHub App {app.get('slug')} (id {app['id']}) registered; see the terminal."

    action = creation_url(state, org=org, github_url=github_url)
    runner = web.AppRunner(registration_app(app_manifest, action, state, on_code))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    page = f"http://127.0.0.1:{port}/"
    print(f"Open {page} in a browser logged in to GitHub to create the app.", file=sys.stderr)
    if open_browser:
        webbrowser.open(page)
    try:
        return await done
    finally:
        await asyncio.sleep(0.5)  # let the confirmation page reach the browser
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bot.manifest")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print the manifest")
    reg = commands.add_parser("register", help="create the GitHub App from the manifest")
    for sub in (show, reg):
        sub.add_argument("--public-url", required=True, help="the bot's https address")
        sub.add_argument("--name", default=DEFAULT_NAME)
        sub.add_argument("--port", type=int, default=DEFAULT_PORT)
    reg.add_argument("--out", type=Path, required=True, help="folder for the credentials")
    reg.add_argument("--org", help="register under this organisation instead of your user")
    reg.add_argument("--github-url", default=GITHUB_URL)
    reg.add_argument("--api-url", default=API_URL)
    reg.add_argument("--private-key-secret", help="projects/P/secrets/S to add the key to")
    reg.add_argument("--webhook-secret-secret", help="projects/P/secrets/S for the secret")
    reg.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    redirect_url = f"http://127.0.0.1:{args.port}/redirect"
    if args.command == "show":
        app_manifest = manifest(args.public_url, redirect_url=redirect_url, name=args.name)
        print(json.dumps(app_manifest, indent=2))
        return 0
    lines = asyncio.run(
        register(
            public_url=args.public_url,
            out=args.out,
            name=args.name,
            org=args.org,
            port=args.port,
            github_url=args.github_url,
            api_url=args.api_url,
            private_key_secret=args.private_key_secret,
            webhook_secret_secret=args.webhook_secret_secret,
            open_browser=not args.no_browser,
        )
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
