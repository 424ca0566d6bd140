"""scarlet v1 from a local clone of pmelchior/scarlet, through ``python -m runner run``.

Needs a clone of the real repository: ``$SCARLET1_REPO``, or the mirror the team's
machines keep at /work/.mirror/pmelchior+scarlet/repo. Skips where there is none.
Pull requests are played by commits made at test time on a local clone of it, on top of
45187fd. Nothing of scarlet's code lives in this repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend.adapters import get_adapter
from runner.deblend.environments import build_environment, environment_key
from runner.deblend.pool import Side, Task, run_tasks
from runner.deblend.revisions import checkout, git, resolve
from runner.publish.report import what_changed
from runner.result import RunResult
from support import HSC

pytestmark = pytest.mark.scarlet1

MIRROR = Path(os.environ.get("SCARLET1_REPO", "/work/.mirror/pmelchior+scarlet/repo"))
# On master: "Init fixes #284" changes the fit; the commit before it and the tag btk-v1
# (three commits earlier) give bit-identical models.
BEFORE_284 = "45187fd"
AFTER_284 = "2d1f022"
BTK_V1 = "btk-v1"

# The adapter, with a record in "version" of whether Blend.fit's own test stopped the fit.
STOP_SPY = """
import json
exec(open({adapter!r}).read())
_adapter_deblend, _callback, stopped = deblend, scarlet.Blend._callback, []

def callback(*args, **kwargs):
    try:
        return _callback(*args, **kwargs)
    except StopIteration:
        stopped.append(True)
        raise

scarlet.Blend._callback = callback

def deblend(blend, options):
    stopped.clear()
    result = _adapter_deblend(blend, options)
    result["version"] = json.dumps(bool(stopped))
    return result
"""


@pytest.fixture(scope="module")
def scarlet1(tmp_path_factory):
    if not MIRROR.exists():
        pytest.skip(f"no clone of pmelchior/scarlet at {MIRROR} (set SCARLET1_REPO)")
    root = tmp_path_factory.mktemp("scarlet1")
    blends = root / "hsc-set1"
    blends.mkdir()
    for path in sorted((HSC / "set1").glob("*.npz"))[:4]:
        shutil.copy(path, blends)
    return root, blends


def run(root, blends, head, base, name, repo=MIRROR, *extra, cache=None):
    out = root / name
    argv = ["run", "--repo", str(repo), "--head", head, "--base", base, *extra]
    argv += ["--dataset", str(blends), "--out", str(out), "--cache", str(cache or root / "cache")]
    assert main(argv) == 0
    return RunResult.read(out / "result.json")


def test_a_commit_that_changes_the_fit_changes_every_model(scarlet1):
    root, blends = scarlet1
    # Both are master's own commits: a trusted run, which stores its outcomes.
    result = run(root, blends, AFTER_284, BEFORE_284, "changed", MIRROR, "--trusted-ref", "master")
    assert result.provenance.adapter == "scarlet1"
    head, base = result.provenance.head, result.provenance.base
    assert head.deblender_version.endswith(f"+g{head.sha[:7]}")
    assert base.deblender_version.endswith(f"+g{base.sha[:7]}")
    assert head.packages["autograd"] == "1.8.0"
    for blend in result.blends:
        assert blend.base.status == blend.head.status == "ok", blend
        assert blend.base.model_hash != blend.head.model_hash
    errors = [e for b in result.blends for s in b.head.injected for e in s.mag_error]
    assert abs(np.median(errors)) < 0.2
    assert np.percentile(np.abs(errors), 90) < 0.5
    comparison = result.comparison
    assert comparison.tally.changed == 4
    top = comparison.blends[0]
    assert what_changed(result).startswith("4 of 4 blends changed;")
    assert f"{top.dataset}/{top.id}" in what_changed(result)
    # Again with base's outcomes from the store but for one blend: the same verdict.
    reused = run(root, blends, AFTER_284, BEFORE_284, "reused", MIRROR, "--timing-sample", "1")
    assert reused.provenance.reuse.blends == 3 and not reused.provenance.reuse.mismatched
    assert reused.comparison.verdict == comparison.verdict
    assert what_changed(reused) == what_changed(result)


def test_a_docs_only_commit_is_neither_built_nor_deblended(scarlet1, pull_request):
    root, blends = scarlet1
    clone, head = pull_request("Docs: the CI badge", "README.md", BADGE, "ci.svg")
    result = run(root, blends, head, BEFORE_284, "docs", clone)
    assert result.provenance.skipped.changed == ["README.md"]
    assert result.provenance.head.build.status == "skipped"
    environment = environment_key(head, get_adapter("scarlet1"))
    assert not (root / "cache" / "envs" / environment).exists()
    assert not list((root / "docs").glob("logs/worker-*"))
    assert result.comparison.verdict == "pass" and result.comparison.identical_models


def test_commits_that_do_not_touch_the_fit_give_identical_models(scarlet1):
    root, blends = scarlet1
    result = run(root, blends, BEFORE_284, BTK_V1, "unchanged")
    assert result.provenance.head.build.reused, "the environment of 45187fd was built already"
    for blend in result.blends:
        assert blend.base.model_hash == blend.head.model_hash
        assert blend.base.injected == blend.head.injected
    assert result.comparison.identical_models and result.comparison.verdict == "pass"


@pytest.fixture(scope="module")
def pull_request(scarlet1):
    """Make a commit on 45187fd in a local clone of scarlet that replaces ``old`` (found
    once) in ``path`` by ``new``; returns (clone, SHA)."""
    root, _ = scarlet1
    clone = root / "scarlet"
    subprocess.run(["git", "clone", "--quiet", str(MIRROR), str(clone)], check=True)

    def make(message: str, path: str, old: str, new: str) -> tuple[Path, str]:
        git(clone, "checkout", "--quiet", "-B", message.split(":")[0].lower(), BEFORE_284)
        file = clone / path
        source = file.read_text()
        assert source.count(old) == 1, f"scarlet's {path} no longer reads as this test expects"
        file.write_text(source.replace(old, new))
        return clone, commit(clone, message)

    return make


@pytest.fixture(scope="module")
def set1(scarlet1):
    """All of HSC set1: 100 blends, 7 of them at least 60 px wide."""
    return HSC / "set1"


RENDER = "        return self.renderer(model, *parameters)\n"
BADGE = "https://travis-ci.org/pmelchior/scarlet.svg?branch=master"


def test_a_commit_that_wrecks_a_few_blends_fails_blend_by_blend(scarlet1, pull_request, set1):
    # Only frames at least 60 px wide render 50 % too bright: 7 of 100 blends wrecked, the
    # other 93 bit-identical, so no median over blends or sources moves.
    root, _ = scarlet1
    clone, head = pull_request(
        "Wide: render wide frames 50% brighter", "scarlet/observation.py", RENDER,
        "        scale = 1.5 if model.shape[-1] >= 60 else 1.0\n"
        "        return scale * self.renderer(model, *parameters)\n",
    )  # fmt: skip
    # A baseline run of master's 45187fd stores base's set1 outcomes (a trusted run).
    run(root, set1, BEFORE_284, BEFORE_284, "baseline", MIRROR, "--trusted-ref", "master")
    full = run(root, set1, head, BEFORE_284, "wide", clone, "--full")
    result = run(root, set1, head, BEFORE_284, "wide-reused", clone)  # base from the store
    assert full.provenance.reuse is None and result.provenance.reuse.blends == 88
    assert result.comparison.verdict == full.comparison.verdict
    assert what_changed(result) == what_changed(full)
    comparison = result.comparison
    wide = {b.id for b in result.blends if b.shape[1] >= 60}
    assert len(wide) == 7
    assert {c.id for c in comparison.blends if not c.identical} == wide
    assert comparison.tally.worse >= 5
    assert comparison.verdict == "fail"
    assert all(m.status != "regressed" for m in comparison.metrics if m.statistic == "median")


MEASURE = "    return model.sum(axis=(1, 2))\n"


def test_a_commit_that_changes_only_scarlet_measure_is_reported_not_judged(
    scarlet1, pull_request, set1
):
    # scarlet's own r fluxes 2 % low, every model bit-identical: the runner measures the
    # fluxes from the source models itself, so nothing judged changed; the change of
    # scarlet's measurement code is reported beside the verdict.
    root, _ = scarlet1
    clone, head = pull_request(
        "Measure: r fluxes 2% low", "scarlet/measure.py", MEASURE,
        "    return model.sum(axis=(1, 2)) * np.array([1, 0.98, 1, 1, 1])[: len(model)]\n",
    )  # fmt: skip
    result = run(root, set1, head, BEFORE_284, "measure", clone)
    assert result.provenance.reuse.blends == 88, "base's set1 outcomes are stored"
    for blend in result.blends:
        assert blend.base.model_hash == blend.head.model_hash
        assert blend.base.sources == blend.head.sources
        for base, head_ in zip(blend.base.native, blend.head.native, strict=True):
            if base.flux[1] is not None:
                assert head_.flux[1] == pytest.approx(0.98 * base.flux[1], rel=1e-6)
    comparison = result.comparison
    assert comparison.identical_models and comparison.verdict == "pass"
    deblended = [b for b in result.blends if b.base.status == b.head.status == "ok"]
    assert comparison.native.blends == [f"{b.dataset}/{b.id}" for b in deblended]
    assert comparison.native.flux == pytest.approx(0.02, rel=1e-4)


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_a_pull_request_that_changes_only_python_compiles_nothing(scarlet1, pull_request, tmp_path):
    # A trusted run of the branch's own commit writes the compiler cache, from which the
    # head's build of a pull request on it, in an environment of its own, takes both
    # extensions.
    root, blends = scarlet1
    clone, head = pull_request(
        "Python: a sum in two steps", "scarlet/measure.py", MEASURE,
        "    total = model.sum(axis=(1, 2))\n    return total\n",
    )  # fmt: skip
    git(clone, "branch", "--force", "main-284", BEFORE_284)
    cache, trusted = tmp_path / "cache", ("--trusted-ref", "main-284")
    baseline = run(root, blends, BEFORE_284, BEFORE_284, "main-284", clone, *trusted, cache=cache)
    # Counted by the runner from ccache's statistics: the two extensions, and the compiler
    # checks of scarlet's setup.py (temporary files, which never hit).
    writable = baseline.provenance.base.build.compiler_cache
    assert writable == "ccache: 0 hits, 4 misses (writable)"
    result = run(root, blends, head, "main-284", "python-only", clone, cache=cache)
    base, head = result.provenance.base.build, result.provenance.head.build
    assert base.reused and not head.reused
    assert head.compiler_cache.startswith("ccache: 2 hits, 0 misses (read-only")
    assert result.comparison.identical_models


@pytest.mark.parametrize("max_iter", [12, 100])
def test_converged_says_whether_blend_fit_stopped_on_its_own_test(scarlet1, tmp_path, max_iter):
    root, blends = scarlet1
    adapter, sha, cache = get_adapter("scarlet1"), resolve(MIRROR, BEFORE_284), root / "cache"
    source = checkout(MIRROR, sha, cache / "checkouts" / sha)
    env = build_environment(source, sha, adapter, cache)
    spy = tmp_path / "spy_adapter.py"
    spy.write_text(STOP_SPY.format(adapter=str(adapter.worker_file)))
    files = sorted(blends.glob("*.npz"))
    tasks = [Task("spy", blend, tmp_path / blend.name, {"max_iter": max_iter}) for blend in files]
    outcomes = []
    run_tasks(tasks, {"spy": Side("spy", env.python, spy)}, tmp_path, 1, 600.0, outcomes.append)
    replies = [outcome.reply for outcome in outcomes]
    assert all(reply and reply["ok"] for reply in replies), outcomes
    for reply in replies:
        assert reply["converged"] is json.loads(reply["version"])
        assert reply["converged"] is (reply["iterations"] < max_iter)
    converged = [reply["converged"] for reply in replies]
    if max_iter == 100:
        assert any(converged), "some of these blends converge within scarlet's testing settings"
    else:
        assert not all(converged), "12 steps cut some of these fits off"
