"""Timing a busy machine cannot fake (issue 26): the runner measures each request's CPU
time itself, base and head of a blend run on the same slot in alternating order, and a
timing regression fails only where a confirming re-timing agrees and the models are not
bit-identical."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.deblend.pool import Side, Task, run_tasks
from runner.result import SCHEMA_VERSION, RunResult
from runner.synth import write_synthetic_set
from support import FAULTY_ADAPTER, tiny_adapter, tiny_repository

SLEEPER = """
import time
exec(open({faulty!r}).read())
_deblend = deblend

def deblend(blend, options):
    time.sleep(0.3)  # waiting, not working: no CPU time
    return _deblend(blend, options)
"""


def test_base_and_head_of_a_blend_run_on_the_same_slot_in_alternating_order(
    synthetic_set, tmp_path
):
    sides = {name: Side(name, Path(sys.executable), FAULTY_ADAPTER) for name in ("base", "head")}
    blends = sorted(synthetic_set.glob("*.npz"))
    order = [("base", "head"), ("head", "base")]
    tasks = [
        Task(side, path, tmp_path / f"{path.stem}.{side}.npz", {})
        for index, path in enumerate(blends)
        for side in order[index % 2]
    ]
    outcomes = []
    run_tasks(tasks, sides, tmp_path, 2, 30.0, outcomes.append)
    assert len(outcomes) == 2 * len(blends) and all(o.error is None for o in outcomes)
    for index, path in enumerate(blends):
        pair = [o for o in outcomes if o.task.blend == path]
        assert pair[0].slot == pair[1].slot, "both sides of a blend on one slot"
        assert tuple(o.task.side for o in pair) == order[index % 2]
    assert {o.slot for o in outcomes} == {0, 1}


def test_the_runner_measures_cpu_time_itself_and_waiting_is_not_work(synthetic_set, tmp_path):
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER.format(faulty=str(FAULTY_ADAPTER)))
    sides = {
        "base": Side("base", Path(sys.executable), FAULTY_ADAPTER),  # works ~0.02 s of CPU
        "head": Side("head", Path(sys.executable), sleeper),  # and sleeps 0.3 s
    }
    blend = sorted(synthetic_set.glob("*.npz"))[0]
    tasks = [Task(side, blend, tmp_path / f"{side}.npz", {}) for side in ("base", "head")]
    outcomes = {}
    run_tasks(tasks, sides, tmp_path, 1, 30.0, lambda o: outcomes.setdefault(o.task.side, o))
    base, head = outcomes["base"], outcomes["head"]
    assert head.wall >= 0.3
    assert head.cpu is not None and base.cpu is not None
    assert abs(head.cpu - base.cpu) < 0.1, "sleeping costs no CPU time"


@pytest.fixture
def timed(tmp_path, monkeypatch):
    """A tiny repository and twenty synthetic blends; heads work WORK seconds per blend."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo, _ = tiny_repository(tmp_path / "repo")
    init = repo / "tinydeblender" / "__init__.py"
    init.write_text("__version__ = '1.0'\nWORK = 0.1\n")
    base = commit(repo, "base works 0.1 s per blend")
    dataset = tmp_path / "blends"
    write_synthetic_set(dataset, blends=20, seed=3)

    def head(text: str, message: str) -> RunResult:
        init.write_text(f"__version__ = '1.0'\n{text}")
        sha = commit(repo, message)
        out = tmp_path / message.replace(" ", "-")
        argv = ["run", "--repo", str(repo), "--head", sha, "--base", base, "--full",
                "--adapter", "tiny", "--dataset", str(dataset), "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        return RunResult.read(out / "result.json")

    return head


def test_a_head_doing_forty_percent_more_work_fails_once_a_re_timing_confirms_it(timed):
    # Models changed at round-off (GAIN 1 + 1e-6): the science is within every tolerance.
    result = timed("WORK = 0.14\nGAIN = 1.000001\n", "slower head")
    cpu = {m.name: m for m in result.comparison.metrics}["cpu_time_per_source"]
    assert cpu.delta == pytest.approx(1.4, rel=0.15)
    assert len(result.retiming) == 10 and all(len(r.base) == 3 for r in result.retiming)
    assert cpu.retimed.confirmed and cpu.retimed.pairs == 30 and cpu.status == "regressed"
    assert result.comparison.verdict == "fail"
    assert "regressed: CPU time per source" in result.comparison.reasons
    document = json.loads(result.to_json())
    assert document["retiming"][0]["base"] and document["schema_version"] == SCHEMA_VERSION


def test_the_same_work_with_bit_identical_models_never_fails_on_timing(timed):
    result = timed("WORK = 0.14\n", "slower head, same models")
    cpu = {m.name: m for m in result.comparison.metrics}["cpu_time_per_source"]
    assert result.comparison.models_bit_identical and not cpu.gating
    assert result.retiming == [], "no re-timing where timing cannot fail"
    assert result.comparison.verdict == "pass"
