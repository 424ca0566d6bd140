"""Work not done: a head that cannot change a model is not built or not deblended, and
base's outcomes measured before are read from the store (spot-checked) instead of
deblended again, with the timings still paired within the run."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.datasets import open_datasets
from runner.deblend import adapters
from runner.deblend.environments import environment_key
from runner.deblend.installed import reaching
from runner.deblend.machine import this_machine
from runner.deblend.outcomes import PREFIX, outcome_key, spot_sample
from runner.deblend.revisions import git
from runner.publish.merge import merged_reuse
from runner.publish.report import Links, comment
from runner.result import SCHEMA_FILE, Machine, Reuse, RunResult
from support import tiny_adapter, tiny_repository

HERE = Machine("Test CPU", "0123456789abcdef", 2)
SCARLET_RECORD = [
    "scarlet-1.0.1+g45187fd.dist-info/RECORD",
    "scarlet/__init__.py",
    "scarlet/_version.py",
    "scarlet/blend.py",
    "scarlet/operators_pybind11.cc",
    "scarlet/operators_pybind11.cpython-311-x86_64-linux-gnu.so",
    "scarlet/testing/lookup.db",
]


@pytest.fixture
def world(tmp_path, synthetic_set, monkeypatch):
    """A tiny repository (base 1.0, GAIN 1) and six synthetic blends."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo, base = tiny_repository(tmp_path / "repo")
    dataset = tmp_path / "blends"
    dataset.mkdir()
    for path in sorted(synthetic_set.glob("*.npz")):
        (dataset / path.name).write_bytes(path.read_bytes())
    return repo, base, dataset, tmp_path


def gain(repo: Path, value: float) -> str:
    """A commit on the tiny package whose models are ``value`` times brighter."""
    init = f"__version__ = '1.0'\nGAIN = {value}\n"
    (repo / "tinydeblender" / "__init__.py").write_text(init)
    return commit(repo, f"gain {value}")


def run(world, head: str, name: str, *extra: str, trusted: bool = False) -> RunResult:
    """Run head against base; ``trusted``: as a run of ``main``'s own commits, which
    stores its outcomes."""
    repo, base, dataset, tmp_path = world
    extra = (*extra, "--trusted-ref", "main") if trusted else extra
    out = tmp_path / name
    args = ["run", "--repo", str(repo), "--head", head, "--base", base, "--adapter", "tiny",
            "--dataset", str(dataset), "--out", str(out), "--workers", "2", *extra]  # fmt: skip
    assert main(args) == 0
    document = json.loads((out / "result.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    return RunResult.read(out / "result.json")


def worker_logs(world, name: str) -> list[Path]:
    return sorted((world[3] / name).glob("logs/worker-*.log"))


def test_only_a_trusted_run_stores_outcomes(world):
    repo, _, _, tmp_path = world
    head = gain(repo, 1.5)
    run(world, head, "pull-request")
    assert not (tmp_path / "cache" / "store" / PREFIX).exists(), "a pull request's run stores none"
    assert run(world, head, "again").provenance.reuse is None
    run(world, head, "trusted", trusted=True)
    assert len(list((tmp_path / "cache" / "store" / PREFIX).glob("*/*.json"))) == 12
    assert run(world, gain(repo, 1.6), "reads", "--timing-sample", "2").provenance.reuse.blends == 4


def test_a_docs_only_change_is_neither_built_nor_deblended(world):
    repo, _, _, tmp_path = world
    (repo / "README.md").write_text("# tinydeblender\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "index.rst").write_text("Docs\n")
    docs = commit(repo, "docs")
    result = run(world, docs, "docs")
    assert result.provenance.skipped.reason == "no installed file changed"
    assert result.provenance.skipped.changed == ["README.md", "docs/index.rst"]
    assert result.provenance.head.build.status == "skipped"
    assert len(list((tmp_path / "cache" / "envs").glob("*/environment.json"))) == 1  # base's
    assert not worker_logs(world, "docs") and result.blends == []
    assert result.comparison.verdict == "pass" and result.comparison.identical_models
    assert "does not change the installed scarlet" in result.comparison.reasons[0]
    text = comment(result, Links())
    assert "This PR does not change the installed scarlet" in text
    assert "head not built" in text


def test_a_docs_only_change_after_base_was_measured_shows_base_results_for_both(world):
    repo, base, _, _ = world
    run(world, gain(repo, 1.5), "first", trusted=True)
    git(repo, "checkout", "--quiet", "-b", "docs", base)
    (repo / "CHANGELOG.md").write_text("- nothing\n")
    docs = commit(repo, "changelog")
    result = run(world, docs, "docs")
    assert result.provenance.skipped is not None and len(result.blends) == 6
    assert all(b.head.reused_from and b.base.reused_from for b in result.blends)
    assert all(b.head.model_hash == b.base.model_hash for b in result.blends)
    assert result.comparison.verdict == "pass" and not worker_logs(world, "docs")


def test_a_change_whose_build_installs_the_same_files_is_not_deblended(world):
    repo, _, _, _ = world
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "# a note\n")
    same = commit(repo, "a comment in pyproject.toml")
    result = run(world, same, "same")
    assert result.provenance.skipped.reason == "identical build"
    assert result.provenance.head.build.status == "ok"
    assert result.provenance.head.build.installed == result.provenance.base.build.installed
    assert not worker_logs(world, "same")
    assert result.comparison.verdict == "pass"


def test_full_does_all_the_work(world):
    repo, _, _, _ = world
    (repo / "README.md").write_text("# tinydeblender\n")
    docs = commit(repo, "docs")
    result = run(world, docs, "docs", "--full")
    assert result.provenance.skipped is None and result.provenance.reuse is None
    assert len(result.blends) == 6 and result.comparison.identical_models
    assert result.provenance.head.build.status == "ok"


def test_base_outcomes_are_reused_spot_checked_and_the_timings_stay_paired(world):
    repo, base, _, _ = world
    first = run(world, gain(repo, 1.5), "first", trusted=True)
    assert first.provenance.reuse is None
    head = gain(repo, 1.6)
    result = run(world, head, "second", "--timing-sample", "2")
    reuse = result.provenance.reuse
    assert reuse.side == "base" and reuse.blends == 4 and reuse.mismatched == []
    head_sha, started = first.provenance.head.sha[:12], first.provenance.started
    assert reuse.runs == [f"the run of {head_sha} against {base[:12]} at {started}"]
    fresh = {f"{b.dataset}/{b.id}" for b in result.blends if b.base.reused_from is None}
    assert fresh == set(reuse.checked) and len(fresh) == 2
    timing = {m.name: m for m in result.comparison.metrics if m.kind == "timing"}
    assert timing and all(m.n == 2 for m in timing.values())
    assert "Timings rest on the 2 blends deblended by both sides in this run." in comment(
        result, Links()
    )
    full = run(world, head, "full", "--full")
    assert full.provenance.reuse is None
    assert result.comparison.verdict == full.comparison.verdict == "fail"
    science = {m.name: m.status for m in full.comparison.metrics if m.kind == "science"}
    assert {m.name: m.status for m in result.comparison.metrics if m.kind == "science"} == science


def test_a_stored_outcome_tampered_with_is_caught_and_base_is_deblended_again(world):
    repo, _, dataset, tmp_path = world
    first = run(world, gain(repo, 1.5), "first", trusted=True)
    head = gain(repo, 1.6)
    (checked,) = spot_sample(open_datasets([dataset])[0].blends, head, 1)
    environment = first.provenance.base.build.environment
    key = outcome_key(environment, {}, this_machine(), adapters.ADAPTERS["tiny"])
    document = tmp_path / "cache" / "store" / PREFIX / key / f"{checked.sha256}.json"
    stored = json.loads(document.read_text())
    stored["outcome"]["sources"][0]["flux"][0] *= 1.01
    document.write_text(json.dumps(stored))
    result = run(world, head, "second", "--timing-sample", "1")
    reuse = result.provenance.reuse
    assert reuse.mismatched == [f"{checked.dataset}/{checked.id}"] and reuse.blends == 0
    assert all(b.base.reused_from is None for b in result.blends)
    assert "did not match a fresh deblend" in comment(result, Links())


def test_an_unreadable_stored_outcome_is_a_miss(world):
    repo, _, _, tmp_path = world
    run(world, gain(repo, 1.5), "first", trusted=True)
    for document in (tmp_path / "cache" / "store" / PREFIX).glob("*/*.json"):
        document.write_text("{not json")
    result = run(world, gain(repo, 1.6), "second")
    assert result.provenance.reuse is None and len(result.blends) == 6


def test_reuse_misses_when_the_options_or_a_blend_s_bytes_change(world):
    repo, _, dataset, _ = world
    run(world, gain(repo, 1.5), "first", trusted=True)
    head = gain(repo, 1.6)
    assert run(world, head, "options", "--max-iter", "7").provenance.reuse is None
    changed = sorted(dataset.glob("*.npz"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0")  # other bytes, the same blend
    result = run(world, head, "bytes", "--timing-sample", "1")
    assert result.provenance.reuse.blends == 4
    (blend,) = [b for b in result.blends if b.id == changed.stem]
    assert blend.base.reused_from is None


def test_reuse_misses_on_another_kind_of_machine(world, monkeypatch):
    repo, _, _, _ = world
    run(world, gain(repo, 1.5), "first", trusted=True)
    monkeypatch.setattr("runner.deblend.run.this_machine", lambda: HERE)
    result = run(world, gain(repo, 1.6), "elsewhere")
    assert result.provenance.reuse is None and result.provenance.machine == HERE


def test_the_outcome_key_covers_environment_lock_options_machine(tmp_path):
    adapter = tiny_adapter(tmp_path)
    (tmp_path / "other").mkdir()
    other_lock = tiny_adapter(tmp_path / "other")
    other_lock.lock.write_text(adapter.lock.read_text() + "# another lock\n")
    sha = "a" * 40
    key = outcome_key(environment_key(sha, adapter), {}, HERE, adapter)
    assert key == outcome_key(environment_key(sha, adapter), {}, HERE, adapter)
    others = [
        outcome_key(environment_key("b" * 40, adapter), {}, HERE, adapter),
        outcome_key(environment_key(sha, other_lock), {}, HERE, other_lock),
        outcome_key(environment_key(sha, adapter), {"max_iter": 7}, HERE, adapter),
        outcome_key(environment_key(sha, adapter), {}, Machine("Other CPU", "0" * 16, 2), adapter),
        outcome_key(environment_key(sha, adapter), {}, Machine("Test CPU", "f" * 16, 2), adapter),
    ]
    assert key not in others and len(set(others)) == len(others)


@pytest.mark.parametrize(
    ("changed", "reaches"),
    [
        (["README.md", "docs/conf.py", "tests/test_bbox.py", ".github/workflows/ci.yml"], []),
        (["scarlet/blend.py"], ["scarlet/blend.py"]),
        (["scarlet/lite/new_module.py"], ["scarlet/lite/new_module.py"]),  # added by head
        (
            ["setup.py", "src/extension.cpp", "include/x.h"],
            ["setup.py", "src/extension.cpp", "include/x.h"],
        ),
        (["tests/__init__.py", "extra.pth"], ["tests/__init__.py", "extra.pth"]),
        (["src/scarlet/blend.py"], ["src/scarlet/blend.py"]),  # a src layout
        (["data/lookup.db", "extern/eigen/"], ["data/lookup.db", "extern/eigen/"]),
    ],
)
def test_which_changed_files_reach_the_install(changed, reaches):
    assert reaching(changed, SCARLET_RECORD) == reaches


def test_shards_reuse_merges_into_one():
    one = Reuse("base", "k1", ["run a"], 40, ["set1/1", "set1/2"], [])
    other = Reuse("base", "k2", ["run a", "run b"], 0, ["set1/3"], ["set1/3"])
    merged = merged_reuse([one, None, other])
    assert merged == Reuse("base", "k1, k2", ["run a", "run b"], 40,
                           ["set1/1", "set1/2", "set1/3"], ["set1/3"])  # fmt: skip
    assert merged_reuse([None, None]) is None
