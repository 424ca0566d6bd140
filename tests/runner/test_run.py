"""``python -m runner run`` end to end with a tiny package and the faulty test deblender:
bad blends and bad revisions error alone, with reasons, and the result fits its schema."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.deblend.revisions import git
from runner.deblend.run import BUILD_SPLIT
from runner.publish.report import MARKER
from runner.result import SCHEMA_FILE, RunResult
from support import FAULTY_ADAPTER, tiny_adapter, tiny_repository, write_blend_with


@pytest.fixture
def setup(tmp_path, synthetic_set, monkeypatch):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo, base = tiny_repository(tmp_path / "repo")
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.1'\n")
    head = commit(repo, "1.1")
    dataset = tmp_path / "blends"
    dataset.mkdir()
    fine = sorted(synthetic_set.glob("*.npz"))[:3]
    for path in fine:
        (dataset / path.name).write_bytes(path.read_bytes())
    images = np.load(fine[0])["images"].copy()
    images[0, 0, 0] = 1001.0  # the faulty deblender raises
    write_blend_with(dataset / "raises.npz", fine[0], images=images)
    images[0, 0, 0] = 1004.0  # the faulty deblender returns a NaN model
    write_blend_with(dataset / "nan.npz", fine[0], images=images)
    (dataset / "truncated.npz").write_bytes(fine[0].read_bytes()[:3000])
    return repo, base, head, dataset, tmp_path / "out"


def run_args(repo, head, base, dataset, out, workers: int = 2) -> list[str]:
    """``run`` arguments for the tiny package (the adapter comes separately)."""
    return ["run", "--repo", str(repo), "--head", head, "--base", base,
            "--dataset", str(dataset), "--out", str(out), "--workers", str(workers)]  # fmt: skip


def run_cli(repo, head, base, dataset, out, *extra):
    return main([*run_args(repo, head, base, dataset, out), "--adapter", "tiny", *extra])


def test_a_run_measures_every_good_blend_and_errors_each_bad_one_alone(setup, capsys):
    repo, base, head, dataset, out = setup
    assert run_cli(repo, head, base, dataset, out) == 0
    document = json.loads((out / "result.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    result = RunResult.read(out / "result.json")
    assert result.provenance.head.sha == head and result.provenance.base.sha == base
    assert result.provenance.head.deblender_version == "1.1"
    assert result.provenance.base.deblender_version == "1.0"
    isolation = result.provenance.isolation  # how the revisions' code ran, said plainly
    assert isolation["build"].startswith(BUILD_SPLIT + "bwrap allow-list: an empty read-only")
    assert isolation["workers"].startswith("bwrap allow-list: an empty read-only root")
    assert result.provenance.sandboxed and result.provenance.trusted_ref is None
    blends = {b.id: b for b in result.blends}
    assert len(blends) == 6
    for blend in blends.values():
        assert blend.base.status == blend.head.status
    timed = [run for b in blends.values() for run in (b.base, b.head) if run.status == "ok"]
    assert timed and all(run.wall_time > 0 and run.cpu_time >= 0 for run in timed)
    assert blends["raises"].head.error == "DeblendFailure: the deblender gave up"
    assert "NaN value(s) in model" in blends["nan"].head.error
    assert blends["truncated"].head.error.startswith("bad blend file: not a readable npz")
    good = [b for b in blends.values() if b.head.status == "ok"]
    assert len(good) == 3
    for blend in good:
        assert blend.head.model_hash == blend.base.model_hash
        assert len(blend.head.injected) == blend.n_sources
        assert (out / blend.head.arrays).exists()
    assert result.comparison.identical_models
    # Blends that error on both sides are excluded and listed; they judge nothing.
    assert result.comparison.verdict == "pass"
    assert sorted(result.comparison.excluded) == ["blends/nan", "blends/raises", "blends/truncated"]
    assert "verdict: pass" in capsys.readouterr().out


def test_a_revision_that_does_not_exist_stops_the_run_with_one_line(setup, capsys):
    repo, base, _, dataset, out = setup
    assert run_cli(repo, "no-such-branch", base, dataset, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: revision 'no-such-branch' does not exist in {repo}"
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("full", [False, True])
def test_a_head_that_does_not_build_fails_naming_its_error_and_nothing_is_deblended(
    setup, capsys, full
):
    repo, base, _, dataset, out = setup
    (repo / "pyproject.toml").write_text("[project\nname = broken")
    broken = commit(repo, "break the build")
    assert run_cli(repo, broken, base, dataset, out, *(["--full"] if full else [])) == 0
    result = RunResult.read(out / "result.json")
    assert result.provenance.head.build.status == "failed"
    assert "pyproject.toml" in result.provenance.head.build.log_tail
    assert result.blends == [] and not list(out.glob("logs/worker-*.log"))  # base neither
    assert result.comparison.verdict == "fail"
    assert result.comparison.reasons[0].startswith("head does not build: ")
    assert "warning: head" in capsys.readouterr().err


def test_a_branch_as_base_is_its_merge_base(setup):
    repo, base, head, dataset, out = setup
    git(repo, "branch", "feature", head)
    git(repo, "reset", "--quiet", "--hard", base)
    (repo / "README").write_text("main moved on")
    commit(repo, "main moves on")
    assert run_cli(repo, "feature", "main", dataset, out) == 0
    provenance = RunResult.read(out / "result.json").provenance
    assert provenance.base.sha == base == provenance.merge_base


def test_relative_paths_work_from_any_directory(setup, monkeypatch):
    repo, base, head, dataset, out = setup
    monkeypatch.chdir(out.parent)
    assert run_cli(repo.name, head, base, dataset.name, "out") == 0
    result = RunResult.read(out / "result.json")
    assert sum(b.head.status == "ok" for b in result.blends) == 3


CONFIG = ".github/scarlet-regression.toml"


def test_an_invalid_config_in_the_policy_revision_stops_the_run_naming_the_key(setup, capsys):
    repo, base, _, dataset, out = setup
    (repo / ".github").mkdir()
    (repo / CONFIG).write_text("[metrics.chi2]\ntolerance = 1\n")
    head = commit(repo, "a config with a typo")
    # Judged by the base's (none): the head's typo is only noted.
    assert run_cli(repo, head, base, dataset, out) == 0
    policy = RunResult.read(out / "result.json").comparison.policy
    assert (policy.source, policy.sha) == ("base", git(repo, "rev-parse", base))
    assert "unknown metric metrics.chi2" in policy.note
    assert run_cli(repo, head, base, dataset, out, "--config-from", "head") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {CONFIG} at {head[:12]}: unknown metric")


LOOSE = """[blends]
mag_tolerance = 100
chi2_tolerance = 1e6
[metrics.mag_error]
tolerance = 100
[metrics.abs_mag_error]
tolerance = 100
[metrics.abs_mag_error_tail]
tolerance = 100
[metrics.chi2_dof]
tolerance = 1e6
[metrics.chi2_dof_tail]
tolerance = 1e6
"""


def test_a_head_that_loosens_the_config_is_still_judged_by_the_base(setup):
    repo, base, _, dataset, out = setup
    # The head makes every model and flux 10 % fainter and loosens every tolerance that
    # would catch it.
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.2'\nGAIN = 0.9\n")
    (repo / ".github").mkdir()
    (repo / CONFIG).write_text(LOOSE)
    head = commit(repo, "fainter, and a looser gate")
    assert run_cli(repo, head, base, dataset, out) == 0
    comparison = RunResult.read(out / "result.json").comparison
    assert comparison.verdict == "fail"
    assert comparison.policy.source == "base"
    assert "blends.mag_tolerance: 0.1 → 100.0" in comparison.policy.differences
    assert "metrics.mag_error.tolerance: default → 100.0" in comparison.policy.differences
    # A maintainer may judge by the head's on purpose.
    assert run_cli(repo, head, base, dataset, out, "--config-from", "head") == 0
    comparison = RunResult.read(out / "result.json").comparison
    assert comparison.policy.source == "head" and comparison.verdict == "pass"


def test_report_writes_comment_check_run_and_page_with_residual_images(setup):
    repo, base, _, dataset, out = setup
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.2'\nGAIN = 1.05\n")
    head = commit(repo, "every model 5 % brighter")
    report = out.parent / "report"
    assert run_cli(repo, head, base, dataset, out, "--report", str(report)) == 0
    result = RunResult.read(out / "result.json")
    comment = (report / "comment.md").read_text()
    assert comment.startswith(MARKER)
    images = sorted((report / "images").glob("*.png"))
    assert len(images) == 3, "one residual comparison per changed blend both sides deblended"
    for image in images:
        assert image.name == f"{hashlib.sha256(image.read_bytes()).hexdigest()}.png"
        assert f"](images/{image.name})" in comment
        assert f'src="images/{image.name}"' in (report / "report.html").read_text()
    output = json.loads((report / "check-run.json").read_text())
    assert output["title"].startswith(result.comparison.verdict)
    # The three blends that errored on both sides are excluded and listed, not neutral.
    assert sorted(result.comparison.excluded) == ["blends/nan", "blends/raises", "blends/truncated"]
    # Storing the same run's images again adds nothing.
    before = sum(p.stat().st_size for p in images)
    assert main(["compare", str(out / "result.json"), "--report", str(report)]) == 0
    assert sum(p.stat().st_size for p in (report / "images").glob("*.png")) == before


def test_identical_models_get_no_residual_image(setup):
    repo, base, head, dataset, out = setup
    report = out.parent / "report"
    assert run_cli(repo, head, base, dataset, out, "--report", str(report)) == 0
    result = RunResult.read(out / "result.json")
    assert result.comparison.identical_models and result.comparison.verdict == "pass"
    assert not list((report / "images").glob("*.png"))
    assert "](images/" not in (report / "comment.md").read_text()


def test_a_run_publishes_to_a_store_and_reports_progress_as_json_lines(setup, capsys):
    repo, base, head, dataset, out = setup
    store = out.parent / "store"
    extra = ["--store", str(store), "--repository", "octo/scarlet", "--pr", "5", "--progress-json"]
    assert run_cli(repo, head, base, dataset, out, *extra) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    deblending = [line for line in lines if line["phase"] == "deblending"]
    assert [line["done"] for line in deblending] == list(range(11)), "5 readable blends, 2 sides"
    assert lines[-1]["phase"] == "finished"
    published = json.loads(Path(lines[-1]["published"]).read_text())
    prefix = f"runs/pr/octo/scarlet/5/{head}/"
    assert published["prefix"] == prefix
    for name in ("result.json", "published.json", "report/report.html"):
        assert (store / prefix / name).is_file()
    assert published["images"] == {}, "identical models get no image"


def test_a_terminated_run_takes_its_workers_down(setup, tmp_path):
    repo, base, head, dataset, out = setup
    source = sorted(dataset.glob("synth*.npz"))[0]
    images = np.load(source)["images"].copy()
    images[0, 0, 0] = 1002.0  # the faulty deblender hangs
    write_blend_with(dataset / "hangs.npz", source, images=images)
    tiny_runner = str(Path(__file__).parents[1] / "support" / "tiny_runner.py")
    argv = [sys.executable, tiny_runner, *run_args(repo, head, base, dataset, out, workers=1)]
    env = {**os.environ, "SCARLET_REGRESSION_CACHE": str(tmp_path / "cache")}
    runner = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def workers() -> list[int]:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"worker.py" in cmdline and str(FAULTY_ADAPTER).encode() in cmdline:
                found.append(int(proc.name))
        return found

    deadline = time.monotonic() + 120
    while not workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers(), "the run started workers"
    time.sleep(3)  # the hang is reached
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    time.sleep(0.5)
    assert workers() == []


def science(result: RunResult) -> list:
    """Every measurement of a result but its timings."""
    timings = {"wall_time", "cpu_time", "init_time", "fit_time"}
    return [
        (b.dataset, b.id, side, {k: v for k, v in asdict(getattr(b, side)).items()
                                 if k not in timings})
        for b in result.blends
        for side in ("base", "head")
    ]  # fmt: skip


def test_three_shards_merged_give_the_science_of_one_run(setup, capsys):
    repo, base, head, dataset, out = setup
    assert run_cli(repo, head, base, dataset, out) == 0
    whole = RunResult.read(out / "result.json")
    parts = [out.parent / f"shard-{i}" for i in range(3)]
    for index, part in enumerate(parts):
        assert run_cli(repo, head, base, dataset, part, "--shard", f"{index}/3") == 0
        partial = RunResult.read(part / "result.json")
        assert partial.shard.count == 3 and partial.comparison is None
        assert len(partial.blends) == 2
    merged_dir = out.parent / "merged"
    assert main(["merge", "--out", str(merged_dir), *map(str, parts)]) == 0
    merged = RunResult.read(merged_dir / "result.json")
    jsonschema.validate(
        json.loads((merged_dir / "result.json").read_text()), json.loads(SCHEMA_FILE.read_text())
    )
    assert science(merged) == science(whole)
    assert merged.comparison.verdict == whole.comparison.verdict
    assert merged.shard is None
    for blend in merged.blends:
        if blend.head.arrays:
            assert (merged_dir / blend.head.arrays).is_file()
    capsys.readouterr()
    assert main(["merge", "--out", str(out.parent / "m2"), str(parts[0]), str(parts[2])]) == 2
    assert capsys.readouterr().err.strip() == "error: shard(s) 1/3 missing"


def test_shards_stored_by_cloud_run_tasks_merge_from_the_store(setup, monkeypatch):
    repo, base, head, dataset, out = setup
    store, private = out.parent / "store", out.parent / "private"
    publish = ["--store", str(store), "--private-store", str(private)]
    publish += ["--repository", "octo/scarlet", "--pr", "3"]
    for index in range(2):
        monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", str(index))
        monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "2")
        assert run_cli(repo, head, base, dataset, out.parent / f"task-{index}", *publish) == 0
    monkeypatch.delenv("CLOUD_RUN_TASK_COUNT")
    merged = out.parent / "merged"
    argv = ["merge", "--out", str(merged), "--sha", head, "--shards", "2", *publish]
    assert main(argv) == 0
    published = json.loads((merged / "published.json").read_text())
    assert published["prefix"] == f"runs/pr/octo/scarlet/3/{head}/"
    assert len(RunResult.read(merged / "result.json").blends) == 6
