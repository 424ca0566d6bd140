"""Residual comparison images into an artifact store, and the report written beside them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from runner.publish.report import (
    DETAIL_IMAGES,
    Links,
    caption,
    check_run_output,
    comment,
    html_report,
)
from runner.publish.residuals import render_blend
from runner.result import RunResult
from runner.store import ArtifactStore, LocalStore, run_prefix, store_run


def store_residual_images(
    result: RunResult, run_dir: Path, store: ArtifactStore, limit: int = DETAIL_IMAGES
) -> dict[tuple[str, str], str]:
    """Render the ``limit`` most changed blends and store them; their keys by (set, id).
    Blends whose base and head models are identical get no image (the report lists them)."""
    if result.comparison is None:
        raise ValueError("the run result has no comparison")
    blends = {(b.dataset, b.id): b for b in result.blends}
    folders = {d.name: Path(d.path) for d in result.provenance.datasets}
    keys = {}
    changed = [change for change in result.comparison.blends if not change.identical]
    for change in changed[:limit]:
        blend = blends[(change.dataset, change.id)]
        path = folders[change.dataset] / f"{change.id}.npz"
        png = render_blend(run_dir, blend, path, caption(change))
        keys[(change.dataset, change.id)] = store.put_image(png)
    return keys


def write_report(result: RunResult, run_dir: Path, out: Path) -> list[Path]:
    """Write the comment, the check run's output, the HTML page and their images to
    ``out`` (a local store: images under ``out/images``); return the files written."""
    store = LocalStore(Path(out))
    keys = store_residual_images(result, run_dir, store)
    links = Links(report="report.html", images=keys)
    output = check_run_output(result, links)
    documents = {
        "comment.md": comment(result, links),
        "check-run.json": json.dumps(asdict(output), indent=1, ensure_ascii=False),
        "report.html": html_report(result, links),
    }
    for name, text in documents.items():
        content_type = "text/html" if name.endswith("html") else "text/plain"
        store.put(name, text.encode(), f"{content_type}; charset=utf-8")
    return [Path(out) / name for name in [*documents, *keys.values()]]


def publish_run(
    result: RunResult,
    run_dir: Path,
    store: ArtifactStore,
    repository: str,
    pr: int | None,
    images: int = DETAIL_IMAGES,
    trends: str | None = None,
) -> dict:
    """Store a compared run for the bot: the residual images of the ``images`` most
    changed blends (none where the models are identical), the HTML report (linking to
    ``trends``, if given), the result and ``published.json`` (the addresses of all of it)
    under the run's prefix (a drift run's own, see ``run_prefix``)."""
    keys = store_residual_images(result, run_dir, store, limit=images)
    images = {key: store.url(value) for key, value in keys.items()}
    drift = result.provenance.drift is not None
    prefix = run_prefix(repository, pr, result.provenance.head.sha, drift)
    links = Links(report=store.url(prefix + "report/report.html"), trends=trends, images=images)
    report = Path(run_dir) / "report"
    report.mkdir(exist_ok=True)
    (report / "report.html").write_text(html_report(result, links))
    stored = store_run(store, run_dir, repository, pr, result.provenance.head.sha, drift)
    published = {
        "prefix": prefix,
        "result": stored["urls"]["result.json"],
        "report": stored["urls"]["report/report.html"],
        "images": {f"{dataset}/{blend}": url for (dataset, blend), url in images.items()},
    }
    text = json.dumps(published, indent=1)
    (Path(run_dir) / "published.json").write_text(text)
    store.put(prefix + "published.json", text.encode(), "application/json")
    return published
