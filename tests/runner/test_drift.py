"""Drift runs: the tiny drift deblender requires ``tinyscale>=1``; its lock pins 1.0, and
a wheel directory standing in for the package index also holds 2.0, which drops the
keyword the deblender calls it with."""

from __future__ import annotations

import json

import jsonschema
import pytest

from runner.commands import main
from runner.deblend import adapters
from runner.publish.report import Links, check_run_output, comment, drift_failed, drift_issue
from runner.result import SCHEMA_FILE, RunResult
from support import tiny_drift_adapter, tiny_drift_repository, tinyscale_wheels, two_blends


@pytest.fixture
def drift_setup(tmp_path, synthetic_set, monkeypatch):
    """The repository, its adapter registered as ``tiny``, two blends, the wheels."""
    wheels = tinyscale_wheels(tmp_path)
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_drift_adapter(tmp_path))
    repo, sha = tiny_drift_repository(tmp_path / "scarlet")
    dataset = two_blends(synthetic_set, tmp_path / "blends")
    return repo, sha, dataset, wheels


def runner(command: str, repo, dataset, out, *revisions: str) -> int:
    argv = [command, "--repo", str(repo), *revisions, "--dataset", str(dataset)]
    argv += ["--out", str(out), "--workers", "1", "--adapter", "tiny"]
    return main([*argv, "--cache", str(out.parent / "cache")])


def test_a_newer_release_of_a_dependency_breaks_the_deblend_and_the_drift_run_names_it(
    drift_setup, tmp_path, capsys
):
    repo, sha, dataset, _ = drift_setup
    assert runner("drift", repo, dataset, tmp_path / "drift", "--rev", "main") == 0
    assert "newer than the lock: tinyscale 1.0 → 2.0" in capsys.readouterr().out
    document = json.loads((tmp_path / "drift" / "result.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    result = RunResult.read(tmp_path / "drift" / "result.json")

    provenance = result.provenance
    assert provenance.base.sha == provenance.head.sha == sha
    assert provenance.drift.rev == "main" and provenance.drift.sha == sha
    assert [(p.name, p.locked, p.newest) for p in provenance.drift.packages] == [
        ("tinyscale", "1.0", "2.0")
    ]
    assert provenance.base.packages["tinyscale"] == "1.0"
    assert provenance.head.packages["tinyscale"] == "2.0"
    locked, newest = provenance.base.build.environment, provenance.head.build.environment
    assert newest.startswith("newest-") and locked != newest
    assert not provenance.head.build.reused

    assert all(b.base.status == "ok" for b in result.blends)
    assert all(b.head.status == "errored" and "TypeError" in b.head.error for b in result.blends)
    assert result.comparison.verdict == "fail" and drift_failed(result)
    text = comment(result, Links())
    assert "| `tinyscale` | 1.0 | 2.0 |" in text and "2 errored deblend(s)" in text
    assert "| `tinyscale` | 1.0 | 2.0 |" in check_run_output(result, Links()).summary
    title, body = drift_issue(result, Links())
    assert "tinyscale" in title and "TypeError" in body and "| `tinyscale` | 1.0 | 2.0 |" in body

    # With the lock, the same revision is clean: deblended twice, identical models.
    assert runner("run", repo, dataset, tmp_path / "locked", "--head", sha, "--base", sha) == 0
    locked_run = RunResult.read(tmp_path / "locked" / "result.json")
    assert locked_run.provenance.head.build.environment == locked
    assert locked_run.comparison.verdict == "pass" and locked_run.comparison.identical_models
    assert all(b.head.status == b.base.status == "ok" for b in locked_run.blends)


def test_a_drift_run_with_nothing_newer_is_clean(drift_setup, tmp_path):
    repo, sha, dataset, wheels = drift_setup
    (wheels / "tinyscale-2.0-py3-none-any.whl").unlink()
    assert runner("drift", repo, dataset, tmp_path / "drift", "--rev", sha) == 0
    result = RunResult.read(tmp_path / "drift" / "result.json")
    assert result.provenance.drift.packages == []
    assert result.comparison.verdict == "pass" and result.comparison.identical_models
    assert not drift_failed(result)
    assert "Every package is at its locked version." in comment(result, Links())


def test_lock_adopt_writes_the_newer_versions_keeping_the_comments(drift_setup, tmp_path):
    repo, _, dataset, _ = drift_setup
    assert runner("drift", repo, dataset, tmp_path / "drift", "--rev", "main") == 0
    lock = adapters.ADAPTERS["tiny"].lock
    shipped = lock.read_text()
    new = tmp_path / "new-lock.txt"
    argv = ["lock", "adopt", str(tmp_path / "drift" / "result.json"), "--lock", str(lock)]
    assert main([*argv, "--out", str(new)]) == 0
    assert lock.read_text() == shipped, "the shipped lock is left alone"
    assert new.read_text() == shipped.replace("tinyscale==1.0", "tinyscale==2.0")

    # A lock the drift run did not use is refused, and nothing is written.
    other = tmp_path / "other-lock.txt"
    other.write_text(shipped + "six==1.17.0\n")
    argv[-1] = str(other)
    assert main([*argv, "--out", str(tmp_path / "refused.txt")]) == 2
    assert not (tmp_path / "refused.txt").exists()
