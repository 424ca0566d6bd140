"""scarlet_lite (lsst/scarlet_lite) from a local clone, through ``python -m runner run``.

Needs a clone of the real repository with its tags (lsst-versions reads the version from
them): ``$SCARLET_LITE_REPO``, or the mirror the team's machines keep at
/work/.mirror/lsst+scarlet_lite/repo; skips where there is none. Three real builds shared
by the module (~3 minutes each on 2 cores): PR #11's base and head, and main. Nothing of
scarlet_lite's code lives in this repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runner.commands import main
from runner.deblend.adapters import detect_adapter
from runner.deblend.revisions import checkout, resolve
from runner.result import RunResult
from support import HSC

pytestmark = [pytest.mark.scarlet_lite, pytest.mark.hsc]

MIRROR = Path(os.environ.get("SCARLET_LITE_REPO", "/work/.mirror/lsst+scarlet_lite/repo"))
BEFORE_11, AFTER_11 = "fba2494", "a211922"  # PR #11: a C++ refactor
MAIN = "6ebf1fc"  # since #8 a new initialisation (FactorizedInitialization with bg_thresh)
OLD = "ad2a53e"  # before 8fd276d (2024-10): its build needs setuptools<65


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """(work folder, repository, blend set of five set1 blends); one cache for the module."""
    if not MIRROR.exists():
        pytest.skip(f"no scarlet_lite clone at {MIRROR} (set SCARLET_LITE_REPO)")
    root = tmp_path_factory.mktemp("scarlet_lite")
    dataset = root / "set1"
    dataset.mkdir()
    for path in sorted((HSC / "set1").glob("*.npz"))[:5]:
        shutil.copy(path, dataset)
    return root, MIRROR, dataset


def run(lite, head: str, base: str, name: str) -> RunResult:
    root, repo, dataset = lite
    argv = ["run", "--repo", str(repo), "--head", head, "--base", base, "--dataset"]
    argv += [str(dataset), "--out", str(root / name), "--cache", str(root / "cache")]
    assert main(argv) == 0
    return RunResult.read(root / name / "result.json")


def test_the_adapter_is_told_from_the_tree(lite):
    _, repo, _ = lite
    tree = checkout(repo, resolve(repo, MAIN), lite[0] / "tree")
    assert detect_adapter(tree).name == "scarlet_lite"


def test_a_refactor_that_keeps_every_model_passes_identical(lite):
    result = run(lite, AFTER_11, BEFORE_11, "pr11")
    assert result.provenance.adapter == "scarlet_lite"
    assert result.provenance.head.deblender_version.startswith("28.2025.")
    for blend in result.blends:
        assert blend.base.status == blend.head.status == "ok", blend
        assert blend.base.converged and blend.base.iterations < 300
        assert blend.base.model_hash == blend.head.model_hash
        assert blend.base.native == []  # scarlet_lite measures nothing itself
        assert all(s.flux[1] > 0 for s in blend.head.sources)
    assert result.comparison.identical_models and result.comparison.verdict == "pass"


def test_main_with_its_new_initialisation_deblends_every_blend_and_changes_them(lite):
    # fba2494 initialises with FactorizedChi2Initialization, main with
    # FactorizedInitialization(bg_thresh, initial_bg_thresh): the adapter drives both.
    result = run(lite, MAIN, BEFORE_11, "main")
    for blend in result.blends:
        assert blend.base.status == blend.head.status == "ok", blend
        assert blend.base.model_hash != blend.head.model_hash
        assert 0.5 < blend.head.chi2_dof < 3
    assert result.comparison.tool_failure is None


def test_a_revision_that_needs_an_old_setuptools_is_refused_in_one_line(lite):
    result = run(lite, MAIN, OLD, "old")
    build = result.provenance.base.build
    assert build.status == "refused"
    assert build.error == (
        "its build requires setuptools<65, the scarlet_lite lock has setuptools 84.2.1: not built"
    )
    comparison = result.comparison
    assert comparison.verdict == "neutral" and comparison.tool_failure.kind == "refused"
    assert comparison.reasons[0].startswith("the scarlet_lite adapter cannot build base")
