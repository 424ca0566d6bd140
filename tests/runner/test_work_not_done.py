"""Work not done twice, and never on a guess (issue 26): the build is skipped only for
files that provably cannot reach the install, comments alone install the same, any
stored outcome of a SHA serves as head or base, and a broken base is compared with its
nearest good ancestor's stored run."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.deblend.installed import installed_hash, reaching
from runner.deblend.revisions import git
from runner.result import RunResult
from support import tiny_adapter, tiny_repository

SCARLET_RECORD = [
    "scarlet-1.0.1+g56a2bc4.dist-info/METADATA",
    "scarlet-1.0.1+g56a2bc4.dist-info/licenses/LICENSE.md",
    "scarlet/__init__.py",
    "scarlet/blend.py",
    "scarlet/operators_pybind11.cc",
    "scarlet/operators_pybind11.cpython-311-x86_64-linux-gnu.so",
    "scarlet/testing/lookup.db",
]


# Changed files and those of them that may reach the install (are built).
SKIP_CASES = [
    # metadata only (LICENSE.md is installed, but as the distribution's metadata)
    (["README.md", "LICENSE.md", "CITATION.cff", "CHANGELOG.rst"], []),
    ([".github/workflows/sphinx.yml", ".travis.yml", "docs/conf.py"], []),
    (["tests/test_bbox.py", "docs/tutorials/start.ipynb", "examples/demo.ipynb"], []),
    (["version.py"], ["version.py"]),  # setup.py imports it
    (
        ["helpers/build_tools.py", "Makefile", "requirements.txt"],
        ["helpers/build_tools.py", "Makefile", "requirements.txt"],
    ),
    (["scarlet/README.md", "tests/__init__.py"], ["scarlet/README.md", "tests/__init__.py"]),
]


def test_only_files_that_provably_cannot_reach_the_install_skip_the_build():
    assert [reaching(changed, SCARLET_RECORD) for changed, _ in SKIP_CASES] == [
        reaches for _, reaches in SKIP_CASES
    ]


@pytest.fixture
def world(tmp_path, synthetic_set, monkeypatch):
    """A tiny repository with a LICENSE (installed as metadata) and six synthetic blends."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo, _ = tiny_repository(tmp_path / "repo")
    (repo / "LICENSE").write_text("MIT License\n")
    (repo / "version.py").write_text("VERSION = '1.0'\n")
    base = commit(repo, "a licence and a version helper")
    return repo, base, synthetic_set, tmp_path


def run(world, head: str, base: str, name: str, *extra: str) -> RunResult:
    repo, _, dataset, tmp_path = world
    out = tmp_path / name
    argv = ["run", "--repo", str(repo), "--head", head, "--base", base, "--adapter", "tiny",
            "--dataset", str(dataset), "--out", str(out), "--workers", "2", *extra]  # fmt: skip
    assert main(argv) == 0
    return RunResult.read(out / "result.json")


def change(repo: Path, path: str, text: str, message: str) -> str:
    (repo / path).write_text(text)
    return commit(repo, message)


def test_a_licence_change_is_metadata_only_and_skips_the_build(world):
    repo, base, _, _ = world
    head = change(repo, "LICENSE", "MIT License\nCopyright 2026\n", "licence")
    result = run(world, head, base, "licence")
    assert result.provenance.skipped.reason == "no installed file changed"
    assert result.provenance.head.build.status == "skipped"
    assert result.comparison.verdict == "pass"


def test_a_python_file_outside_the_package_is_built_it_may_be_imported_by_the_build(world):
    repo, base, _, _ = world
    head = change(repo, "version.py", "VERSION = '1.0'  # checked\n", "version helper")
    result = run(world, head, base, "version")
    assert result.provenance.head.build.status == "ok", "built: never skipped on a guess"
    assert result.provenance.skipped.reason == "identical build"


def test_a_comment_in_a_module_builds_to_base_s_install_and_is_not_deblended(world):
    repo, base, _, tmp_path = world
    init = repo / "tinydeblender" / "__init__.py"
    commented = "# The tiny deblender.\n" + init.read_text().replace(
        "'1.0'", "'1.0'  # the version"
    )
    head = change(repo, "tinydeblender/__init__.py", commented, "comments")
    result = run(world, head, base, "comments")
    assert result.provenance.skipped.reason == "identical build"
    assert result.provenance.head.build.installed == result.provenance.base.build.installed
    assert not list((tmp_path / "comments").glob("logs/worker-*.log"))
    assert result.comparison.verdict == "pass"
    code = change(repo, "tinydeblender/__init__.py", commented + "GAIN = 1.5\n", "code")
    envs = sorted((tmp_path / "cache" / "envs").glob("*/environment.json"))
    hashes = {installed_hash(e.parent, "tinydeblender") for e in envs}
    assert len(envs) == 2 and len(hashes) == 1  # base's and the comments': alike
    assert run(world, code, base, "code").provenance.skipped is None


def test_a_sha_measured_as_base_is_not_deblended_again_as_head(world):
    repo, base, _, _ = world
    brighter = change(repo, "tinydeblender/__init__.py", "GAIN = 1.5\n", "brighter")
    # base measured here, and stored: a trusted run of the protected branch's commits
    run(world, brighter, base, "first", "--trusted-ref", "main")
    git(repo, "checkout", "--quiet", "-b", "other", base)
    dimmer = change(repo, "tinydeblender/__init__.py", "GAIN = 0.5\n", "dimmer")
    result = run(world, base, dimmer, "second", "--timing-sample", "2")
    reuse = result.provenance.head_reuse
    assert reuse.side == "head" and reuse.blends == 4 and len(reuse.checked) == 2
    assert reuse.mismatched == []
    fresh = [b for b in result.blends if b.head.reused_from is None]
    assert len(fresh) == 2 and all(b.base.reused_from is None for b in result.blends)


def test_a_broken_base_is_compared_with_its_nearest_good_ancestor(world):
    repo, good, _, _ = world
    probe = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "--quiet", "-b", "probe")
    probed = change(repo, "tinydeblender/__init__.py", "GAIN = 1.5\n", "probe")
    run(world, probed, good, "good", "--trusted-ref", "probe")  # stored: a trusted run
    git(repo, "checkout", "--quiet", "main")
    assert git(repo, "rev-parse", "HEAD") == probe
    broken = change(repo, "tinydeblender/__init__.py", "BROKEN = True\n", "every blend errors")
    git(repo, "checkout", "--quiet", "-b", "fix")
    fix = change(repo, "tinydeblender/__init__.py", "__version__ = '1.0'\n", "the fix")
    git(repo, "checkout", "--quiet", "main")
    result = run(world, fix, broken, "fixed")
    comparison = result.comparison
    assert len(comparison.fixed) == 6
    assert result.provenance.ancestor.sha == good and result.provenance.ancestor.distance == 1
    assert all(b.ancestor is not None and b.ancestor.status == "ok" for b in result.blends)
    assert comparison.ancestor.verdict == "pass" and comparison.verdict == "pass"
    reasons = " ".join(comparison.reasons)
    assert "base errors on 6 of 6 blends: DeblendFailure in _check_box" in reasons
    assert "fixed: 6 of 6 blends that errored on base deblend on head" in reasons
    assert f"nearest good ancestor {good[:12]}: pass" in reasons
