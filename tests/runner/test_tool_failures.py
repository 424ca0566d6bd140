"""The tool's own failures are told apart from a pull request's: an adapter broken by the
revision's API, the same failure on both sides on every blend, a revision whose declared
requirements the lock does not meet. A tiny package and a tiny adapter, end to end."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from runner.commands import main
from runner.commands.drift import drift
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.deblend.adapters import Adapter
from runner.deblend.run import RunConfig
from runner.publish.report import Links, comment, drift_failed, drift_issue
from runner.publish.untrusted import code
from runner.result import SCHEMA_FILE, RunResult
from support import TINY_LOCK, TINY_PYPROJECT, tiny_repository, two_blends

# A tiny adapter that relies on the deblender's API: ``fit`` returning (gain, iterations).
ADAPTER = """
import numpy as np
import tinydeblender


def deblend(blend, options):
    gain, iterations = tinydeblender.fit(blend["images"])
    model = blend["images"].astype(float) * gain
    sources = np.zeros((len(blend["centers"]), *model.shape))
    for k, (y, x) in enumerate(blend["centers"]):
        box = (slice(None), slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
        sources[k][box] = model[box]
    return {"model": model.astype(np.float32), "source_models": sources,
            "iterations": iterations, "converged": True, "logL": 0.0, "init_logL": -1.0,
            "init_time": 0.0, "fit_time": 0.0, "version": tinydeblender.__version__}
"""
FIT = "__version__ = '1.0'\n\ndef fit(images):\n    return {result}\n"


@pytest.fixture
def tiny(tmp_path, synthetic_set, monkeypatch):
    """(repo, base SHA, run): ``run(head, name[, base])`` runs the tiny adapter."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    (tmp_path / "lock.txt").write_text(TINY_LOCK)
    (tmp_path / "adapter.py").write_text(ADAPTER)
    adapter = Adapter("tiny", "tinydeblender", tmp_path / "lock.txt", tmp_path / "adapter.py")
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", adapter)
    repo, _ = tiny_repository(tmp_path / "repo")
    base = change(repo, FIT.format(result="1.0, 7"), "base: fit returns (gain, iterations)")
    dataset = two_blends(synthetic_set, tmp_path / "blends")

    def run(head: str, name: str, base: str = base) -> RunResult:
        out = tmp_path / name
        argv = ["run", "--repo", str(repo), "--head", head, "--base", base, "--dataset"]
        argv += [str(dataset), "--out", str(out), "--adapter", "tiny", "--workers", "1"]
        assert main(argv) == 0
        document = json.loads((out / "result.json").read_text())
        jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
        return RunResult.read(out / "result.json")

    return repo, base, run


def change(repo, module: str, message: str, pyproject: str = TINY_PYPROJECT) -> str:
    (repo / "tinydeblender" / "__init__.py").write_text(module)
    (repo / "pyproject.toml").write_text(pyproject)
    return commit(repo, message)


def test_an_adapter_the_revision_broke_is_a_tool_failure_never_a_regression(tiny):
    # As scarlet2's #272 did to the adapter: ``fit`` returns one item more.
    repo, _, run = tiny
    head = change(repo, FIT.format(result="1.0, 7, {'loss': []}"), "fit returns its info too")
    result = run(head, "broken")
    for blend in result.blends:
        assert blend.base.status == "ok" and blend.head.status == "errored"
        assert blend.head.raised_by == "adapter"
        assert "gain, iterations = tinydeblender.fit" in blend.head.traceback
    comparison = result.comparison
    assert comparison.verdict == "neutral"
    failure = comparison.tool_failure
    assert (failure.kind, failure.sides, failure.blends) == ("adapter code", ["head"], 2)
    assert comparison.reasons == [failure.headline]
    assert failure.headline.startswith(
        f"the tiny adapter cannot drive this revision (head {head[:12]}): ValueError: too many"
    )
    text = comment(result, Links())
    assert "**Tool failure, not this pull request's regression:**" in text
    assert "gain, iterations = tinydeblender.fit" in text  # the traceback's last frames


def test_the_same_failure_on_both_sides_on_every_blend_is_the_tools(tiny):
    # Both revisions fail alike inside the deblender (as an environment the tool chose
    # would make them): nothing tells them apart, and it is not the pull request's doing.
    repo, _, run = tiny
    broken = "__version__ = '1.0'\n\ndef fit(images):\n    raise OSError('no such library')\n"
    base = change(repo, broken, "base fails")
    head = change(repo, broken.replace("'1.0'", "'1.1'"), "head fails alike")
    result = run(head, "both", base)
    failure = result.comparison.tool_failure
    assert failure.kind == "same failure on both sides" and failure.sides == ["base", "head"]
    assert "OSError: no such library" in failure.headline
    assert result.comparison.verdict == "neutral"


def test_declared_requirements_the_lock_does_not_meet_are_reported(tiny):
    # As scarlet2 since #265 declares jax<=0.9.2 where the lock had 0.10.2.
    repo, _, run = tiny
    pyproject = TINY_PYPROJECT + 'dependencies = ["numpy<2"]\n'
    head = change(repo, FIT.format(result="1.0, 7"), "require an old numpy", pyproject)
    result = run(head, "conflict")
    conflicts = result.provenance.head.build.conflicts
    assert len(conflicts) == 1 and "numpy<2" in conflicts[0] and "2.4.6" in conflicts[0]
    assert result.provenance.base.build.conflicts == []
    # Untrusted text (it names the revision's requirements): one code span, however fenced.
    assert f"The lock does not meet head's declared requirements: {code(conflicts[0])}." in comment(
        result, Links()
    )


def test_a_drift_run_watches_mains_newest_commit_and_names_an_adapter_it_broke(tiny, tmp_path):
    # No revision given: the default branch's newest commit, resolved at run time.
    repo, _, _ = tiny
    newest = change(repo, FIT.format(result="1.0, 7, {'loss': []}"), "main: fit returns more")
    config = RunConfig(
        str(repo), "", "", [tmp_path / "blends"], tmp_path / "drift", workers=1, adapter="tiny"
    )
    result = drift(dataclasses.replace(config, cache=tmp_path / "cache"))
    assert result.provenance.drift.rev == "main" and result.provenance.head.sha == newest
    failure = result.comparison.tool_failure
    assert failure.kind == "adapter code" and failure.sides == ["base", "head"]
    assert result.comparison.verdict == "neutral" and drift_failed(result)
    title, body = drift_issue(result, Links())
    assert title.startswith("The tiny adapter cannot drive these revisions")
    assert "gain, iterations = tinydeblender.fit" in body
