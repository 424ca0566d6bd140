"""Trend pages at stable addresses: ten merged branches with known shifts, a PR beside
them, and the pages loaded in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bot.app import create_app
from bot.pages.site import main as site_main
from bot.pages.site import publish_site
from bot.pages.trends import trend_data
from bot.settings import Settings
from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.publish.history import append_record
from runner.publish.summarise import summarise
from runner.store import LocalStore
from support import shift_head, synthetic_result, tiny_pull_request, tiny_repository, two_blends

REPO = "octo/scarlet"
TINY_RUNNER = Path(__file__).parents[1] / "support" / "tiny_runner.py"
CHROMIUM = shutil.which("chromium")
BRANCHES = [f"branch-{i:02d}" for i in range(10)]
SHIFTED = {3: 0.1, 7: -0.1}  # branch index → shift of head's r-band mag error
START = datetime(2026, 11, 1, tzinfo=UTC)


def merged_record(index: int):
    result = synthetic_result(blends=40, seed=index)
    if index in SHIFTED:
        shift_head(result, band=1, shift=SHIFTED[index])
    result.provenance.head.sha = f"{index + 1:040x}"
    result.comparison = compare(result, CompareConfig())
    landed = (START + timedelta(hours=index)).isoformat()
    return summarise(result, REPO, branch=BRANCHES[index], merged_at=landed)


@dataclass
class Site:
    """The bot serving a store, and a session to browse it with."""

    settings: Settings
    store: LocalStore
    session: aiohttp.ClientSession


@pytest_asyncio.fixture
async def site(fake_github, tmp_path, unused_tcp_port):
    """The bot on 127.0.0.1 over a store holding ten merges, appended out of merge order
    (runs finish in any order)."""
    settings = Settings(
        app_id=str(fake_github.app_id),
        private_key=fake_github.private_key_pem,
        webhook_secret=fake_github.webhook_secret,
        data_dir=tmp_path / "bot",
        datasets=(),
        api_url=fake_github.url,
        public_url=f"http://127.0.0.1:{unused_tcp_port}",
    )
    store = LocalStore(Path(settings.store_spec), base_url=settings.store_url)
    for index in [2, 0, 1, 5, 3, 4, 9, 6, 8, 7]:
        append_record(store, merged_record(index))
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    async with aiohttp.ClientSession() as session:
        yield Site(settings, store, session)
    await runner.cleanup()


async def get_json(session, url):
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_ten_merged_branches_appear_in_merge_order_with_their_shifts(site):
    settings, session = site.settings, site.session
    data = await get_json(session, f"{settings.public_url}/{REPO}/trends.json")
    assert [p["label"] for p in data["merges"]] == BRANCHES
    assert data["current"] is None
    medians = [box["all"]["median"] for box in data["boxes"]["mag_error_r"]]
    baseline = sorted(m for i, m in enumerate(medians) if i not in SHIFTED)
    typical = baseline[len(baseline) // 2]
    for index, median in enumerate(medians):
        expected = typical + SHIFTED.get(index, 0.0)
        assert median == pytest.approx(expected, abs=0.03), BRANCHES[index]
    assert max(range(10), key=medians.__getitem__) == 3
    assert min(range(10), key=medians.__getitem__) == 7
    # Other bands did not move; the line of medians covers all history.
    g = [box["all"]["median"] for box in data["boxes"]["mag_error_g"]]
    assert max(g) - min(g) < 0.06
    assert data["history"]["medians"]["mag_error_r"]["all"] == medians

    recent = await get_json(session, f"{settings.public_url}/{REPO}/trends.json?last=4")
    assert [p["label"] for p in recent["merges"]] == BRANCHES[-4:]
    assert len(recent["history"]["points"]) == 10


async def test_a_pr_stands_beside_the_merges_and_its_addresses_lead_to_its_report(site):
    settings, store, session = site.settings, site.store, site.session
    result = shift_head(synthetic_result(blends=12, seed=42), band=1, shift=0.2)
    result.provenance.head.sha = "e" * 40
    result.comparison = compare(result, CompareConfig())
    report = f"{settings.public_url}/artifacts/runs/pr/octo/scarlet/11/{'e' * 40}/report.html"
    append_record(store, summarise(result, REPO, pr=11, branch="bolder", report=report))

    data = await get_json(session, f"{settings.public_url}/{REPO}/trends.json?pr=11")
    assert data["current"]["label"] == "#11 bolder"
    assert data["current"]["summaries"]["mag_error_r"]["all"]["median"] > max(
        box["all"]["median"] for box in data["boxes"]["mag_error_r"]
    )
    for address in ("pr/11", "branch/bolder"):
        url = f"{settings.public_url}/{REPO}/{address}"
        async with session.get(url, allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (302, report)
    async with session.get(f"{settings.public_url}/{REPO}/pr/12") as response:
        assert response.status == 404
    async with session.get(f"{settings.public_url}/{REPO}/trends?pr=x") as response:
        assert response.status == 400 and "whole number" in await response.text()


async def test_the_page_names_its_scripts_by_version_and_filters(site):
    settings, session = site.settings, site.session
    async with session.get(f"{settings.public_url}/{REPO}/trends?set=set&band=i") as response:
        assert response.status == 200
        page = await response.text()
    assert '<option value="set" selected>' in page and '<option value="i" selected>' in page
    scripts = [part.split('"')[0] for part in page.split('<script src="')[1:]]
    assert len(scripts) == 2 and scripts[0].startswith("/static/plotly-")
    for script in scripts:
        async with session.get(settings.public_url + script) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"].endswith("immutable")
    async with session.get(f"{settings.public_url}/{REPO}/trends.json") as response:
        assert len(await response.read()) < 200_000  # summaries, not per-source values


def publish_pr_run(settings: Settings, tmp_path: Path, dataset: Path) -> str:
    """Run the real runner (tiny deblender) for PR 7 and publish it as the bot would;
    what it said on stderr."""
    repo, _ = tiny_repository(tmp_path / "scarlet")
    head = tiny_pull_request(repo)
    argv = [sys.executable, str(TINY_RUNNER), "run", "--repo", str(repo), "--head", head]
    argv += ["--base", "main", "--dataset", str(dataset), "--out", str(tmp_path / "run")]
    argv += ["--workers", "1", "--store", settings.store_spec, "--store-url", settings.store_url]
    argv += ["--repository", REPO, "--pr", "7", "--branch", "feature"]
    argv += ["--trends-url", f"{settings.public_url}/{REPO}/trends?pr=7"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_history_that_cannot_be_appended_costs_the_trend_point_not_the_report(
    tmp_path, synthetic_set, monkeypatch
):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    settings = Settings("1", "key", "secret", tmp_path / "bot", datasets=())
    (Path(settings.store_spec) / "history").mkdir(parents=True)
    (Path(settings.store_spec) / "history" / "octo").write_text("a file where a folder goes")
    stderr = publish_pr_run(settings, tmp_path, two_blends(synthetic_set, tmp_path / "blends"))
    assert "warning: the run is published, its history record is not" in stderr
    assert list(Path(settings.store_spec).glob("runs/pr/octo/scarlet/7/*/report/report.html"))


def test_a_rerun_of_a_merge_keeps_its_label_and_place():
    records = [merged_record(i) for i in range(3)]
    rerun = merged_record(1)
    rerun.branch = rerun.merged_at = None  # re-run from its check run: nothing known
    data = trend_data([*records, rerun], REPO)
    assert [p["label"] for p in data["merges"]] == BRANCHES[:3]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
async def test_chromium_loads_the_trend_page_the_pr_page_and_the_static_site(
    site, tmp_path, synthetic_set, monkeypatch
):
    playwright = pytest.importorskip("playwright.async_api")
    settings = site.settings
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    publish_pr_run(settings, tmp_path, two_blends(synthetic_set, tmp_path / "blends"))

    problems: list[str] = []
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1200, "height": 900},
        )
        page = browser.pages[0] if browser.pages else await browser.new_page()
        page.on(
            "console",
            lambda m: m.type == "error" and problems.append(f"console: {m.text} {m.location}"),
        )
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"),
        )

        await page.goto(f"{settings.public_url}/{REPO}/trends?pr=7", wait_until="networkidle")
        await page.wait_for_selector("body[data-drawn=true]")
        drawn = await page.evaluate(
            "[...document.querySelectorAll('section:not([hidden]) .js-plotly-plot')].length"
        )
        visible = await page.evaluate("document.querySelectorAll('section:not([hidden])').length")
        assert drawn == visible > 5
        plotted = await page.evaluate(
            "document.querySelector('#metric-mag_error_r .js-plotly-plot').data"
            ".map(t => ({name: t.name, x: t.x, median: t.median}))"
        )
        merged, current, line = plotted
        assert merged["x"] == list(range(10)) and current["name"] == "PR #7 feature"
        assert current["x"] == [10] and line["name"] == "median, every merge"
        assert max(range(10), key=merged["median"].__getitem__) == 3
        await page.screenshot(path=str(tmp_path / "trends.png"), full_page=True)

        await page.goto(f"{settings.public_url}/{REPO}/pr/7", wait_until="networkidle")
        assert "scarlet regression" in await page.title()
        images = await page.evaluate(
            "[...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])"
        )
        assert images and all(loaded for _, loaded in images), images
        trends_link = await page.get_attribute("a:text('Trends')", "href")
        assert trends_link == f"{settings.public_url}/{REPO}/trends?pr=7"
        await page.screenshot(path=str(tmp_path / "pr.png"), full_page=True)

        # The same page as a static site in the store, served from there.
        await page.goto(publish_site(site.store, REPO), wait_until="networkidle")
        await page.wait_for_selector("body[data-drawn=true]")
        static = await page.evaluate(
            "document.querySelector('#metric-mag_error_r .js-plotly-plot').data[0].median"
        )
        assert static == merged["median"]
        await page.screenshot(path=str(tmp_path / "site.png"), full_page=True)
        await browser.close()
    assert problems == []
    assert (tmp_path / "trends.png").stat().st_size > 10_000


def test_the_static_site_is_one_command(tmp_path, capsys):
    store = LocalStore(tmp_path / "store")
    append_record(store, merged_record(0))
    assert site_main(["--store", str(store.root), "--repository", REPO]) == 0
    index = tmp_path / "store" / "site" / REPO / "index.html"
    assert capsys.readouterr().out.strip() == index.as_uri()
    assert "branch-00" in index.read_text()
    assert len(list((tmp_path / "store" / "site" / "static").iterdir())) == 2
    assert site_main(["--store", str(store.root), "--repository", "no-slash"]) == 2
    assert "owner/name" in capsys.readouterr().err
