"""Pages at stable addresses: a repository's trends, the latest report of a PR, of a
branch and of a commit, and the scripts the trend page loads.

    /{owner}/{repo}/trends[?pr=N&set=S&band=B&last=K]   the trend page
    /{owner}/{repo}/trends.json[?...]                  its data
    /{owner}/{repo}/pr/{number}                        → the PR's latest report
    /{owner}/{repo}/branch/{name}                      → the branch's latest report
    /{owner}/{repo}/commit/{sha}                       → the report of a run without a PR

plotly.js comes from the ``plotly`` distribution (pinned through pip, never committed
here) and is served under its version, so browsers may cache it for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path

from aiohttp import web

from bot.pages.trend_page import trend_page
from bot.pages.trends import (
    DEFAULT_LAST,
    default_band,
    latest_of_branch,
    latest_of_pr,
    trend_data,
)
from bot.service import SERVICE, RegressionService
from runner.publish.history import ALL_SETS, HistoryRecord, read_history
from runner.store import IMMUTABLE, StoreError

TRENDS_SCRIPT = Path(__file__).parent / "static" / "trends.js"


@cache
def scripts() -> dict[str, Path]:
    """The files the trend page loads, by the address they are served at."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise RuntimeError("the plotly distribution is not installed")
    plotly = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    version = importlib.metadata.version("plotly")
    digest = hashlib.sha256(TRENDS_SCRIPT.read_bytes()).hexdigest()[:12]
    return {
        f"/static/plotly-{version}.min.js": plotly,
        f"/static/trends-{digest}.js": TRENDS_SCRIPT,
    }


async def static(request: web.Request) -> web.FileResponse:
    """A script of the trend page; its address changes with its content."""
    path = scripts().get(request.path)
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(
        path, headers={"Cache-Control": IMMUTABLE, "Content-Type": "text/javascript"}
    )


def _repository(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['repo']}"


async def _history(service: RegressionService, repository: str) -> list[HistoryRecord]:
    try:
        return await asyncio.to_thread(read_history, service.store, repository)
    except ValueError:
        raise web.HTTPNotFound(text=f"no repository {repository}") from None
    except StoreError as error:
        raise web.HTTPServiceUnavailable(text=f"the history cannot be read: {error}") from None


def _integer(request: web.Request, name: str, default: int | None) -> int | None:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number, got {text!r}") from None


async def _trend_data(request: web.Request, service: RegressionService) -> dict:
    repository = _repository(request)
    pr = _integer(request, "pr", None)
    last = _integer(request, "last", DEFAULT_LAST)
    return trend_data(await _history(service, repository), repository, pr, last)


async def trends(request: web.Request) -> web.Response:
    """The trend page of a repository (``pr`` highlights that PR's latest run)."""
    data = await _trend_data(request, request.app[SERVICE])
    chosen = request.query.get("set", ALL_SETS)
    selected_set = chosen if chosen in data["sets"] else ALL_SETS
    band = request.query.get("band", "")
    if band not in data["bands"]:
        band = default_band(data["bands"])
    page = trend_page(data, list(scripts()), selected_set, band)
    return web.Response(text=page, content_type="text/html")


async def trends_json(request: web.Request) -> web.Response:
    """The trend page's data."""
    return web.json_response(await _trend_data(request, request.app[SERVICE]))


async def _pr_report(service: RegressionService, repository: str, pr: int) -> str | None:
    record = latest_of_pr(await _history(service, repository), pr)
    if record and record.report:
        return record.report
    job = await service.jobs.latest(repository, pr=pr)
    if job is None:
        return None
    return await asyncio.to_thread(service.report_url, repository, pr, job.head_sha)


async def latest_report(request: web.Request) -> web.Response:
    """The latest report of a PR, a branch or a commit's run, at a stable address: from the
    durable history first, then from the bot's own jobs."""
    service = request.app[SERVICE]
    repository = _repository(request)
    kind, ref = request.match_info["kind"], request.match_info["ref"]
    if kind == "pr":
        url = await _pr_report(service, repository, int(ref)) if ref.isdigit() else None
    elif kind == "branch":
        record = latest_of_branch(await _history(service, repository), ref)
        url = record.report if record else None
    else:
        url = await asyncio.to_thread(service.report_url, repository, None, ref)
    if not url:
        raise web.HTTPNotFound(text=f"no report for {repository} {kind} {ref} yet")
    raise web.HTTPFound(url)


def add_routes(app: web.Application) -> None:
    """Serve the trend pages, the stable report addresses and the trend page's scripts."""
    for address in scripts():
        app.router.add_get(address, static)
    app.router.add_get("/{owner}/{repo}/trends", trends)
    app.router.add_get("/{owner}/{repo}/trends.json", trends_json)
    app.router.add_get(r"/{owner}/{repo}/{kind:pr|commit}/{ref}", latest_report)
    app.router.add_get("/{owner}/{repo}/{kind:branch}/{ref:.+}", latest_report)
