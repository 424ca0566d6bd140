"""The store's key layout (keys are ``/``-separated, relative to the store's root or
bucket prefix)::

    images/<sha256>.<ext>                      content-addressed, immutable
    runs/pr/<owner>/<name>/<number>/<sha>/...  a run of a pull request at head <sha>
    runs/commit/<owner>/<name>/<sha>/...       a run without a PR (e.g. a branch baseline)
    history/<owner>/<name>.jsonl               one summary record a run, appended (trends)
    environments/<key>/...                     built environments shared by a run's tasks
                                               (runner.deblend.shared)

(the kind of run comes first so that one literal lifecycle prefix, ``runs/pr/``, lets
pull requests' runs expire while the default branch's history stays)

    .../result.json                            the run result (written last by store_run)
    .../report/...                             the run's rendered report files, if any

``<owner>/<name>`` is any repository name of that shape and ``<sha>`` a full 40- or
64-digit lowercase hex commit id; the store knows nothing of GitHub.

Images are named by the SHA-256 of their bytes and served with
``Cache-Control: public, max-age=31536000, immutable``: the bytes behind an address never
change, so identical images are stored once and no cache (GitHub's image proxy included)
can show a stale one. Storing existing bytes again writes nothing: GCS uploads are
create-only (``if_generation_match=0``; a 412 means the object is already there, which is
success), local writes hard-link a finished temporary file into place, which also fails
when the name exists. Other documents are mutable and get ``Cache-Control: no-cache``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from runner.store.protocol import ArtifactStore, guess_content_type

_SUFFIX = re.compile(r"\.[a-z0-9]{1,16}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def image_key(data: bytes, suffix: str = ".png") -> str:
    """The content-addressed key of image bytes: ``images/<sha256 hex><suffix>``."""
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"bad image suffix {suffix!r} (want e.g. '.png')")
    return f"images/{hashlib.sha256(data).hexdigest()}{suffix}"


def run_prefix(repository: str, pr: int | None, sha: str, drift: bool = False) -> str:
    """The key prefix (ending in ``/``) of one run of ``repository`` at ``sha`` (of its
    latest drift run at ``sha`` with ``drift``)."""
    owner, slash, name = repository.partition("/")
    if not slash or not all(_NAME.fullmatch(p) and p not in (".", "..") for p in (owner, name)):
        raise ValueError(f"repository must be 'owner/name', got {repository!r}")
    if not _SHA.fullmatch(sha):
        raise ValueError(f"sha must be a full lowercase hex commit id, got {sha!r}")
    if drift:
        return f"runs/drift/{owner}/{name}/{sha}/"
    if pr is None:
        return f"runs/commit/{owner}/{name}/{sha}/"
    if isinstance(pr, bool) or not isinstance(pr, int) or pr < 1:
        raise ValueError(f"pr must be a positive int or None, got {pr!r}")
    return f"runs/pr/{owner}/{name}/{pr}/{sha}/"


def store_run(
    store: ArtifactStore,
    run_dir: Path,
    repository: str,
    pr: int | None,
    sha: str,
    drift: bool = False,
) -> dict[str, Any]:
    """Upload a run directory's ``result.json`` and ``report/`` files under its run prefix.

    Report files go first and ``result.json`` last, so a stored result means a complete
    upload. Returns ``{"prefix": ..., "keys": {relpath: key}, "urls": {relpath: url}}``.
    """
    prefix = run_prefix(repository, pr, sha, drift)
    run_dir = Path(run_dir)
    result = run_dir / "result.json"
    if not result.is_file():
        raise FileNotFoundError(f"no result.json in {run_dir}")
    report = run_dir / "report"
    files = (
        sorted(p for p in report.rglob("*") if p.is_file() and not p.is_symlink())
        if report.is_dir()
        else []
    )
    keys: dict[str, str] = {}
    for path in [*files, result]:
        rel = path.relative_to(run_dir).as_posix()
        key = prefix + rel
        store.put(key, path.read_bytes(), guess_content_type(path.name))
        keys[rel] = key
    return {"prefix": prefix, "keys": keys, "urls": {rel: store.url(k) for rel, k in keys.items()}}
