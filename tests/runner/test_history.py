"""The run history: summary records of head's distributions, appended by runs that may
finish at the same moment."""

from __future__ import annotations

import argparse
import json
import threading

import numpy as np
import pytest

from runner.commands.options import utc_time
from runner.judge.compare import compare
from runner.judge.metrics import metrics
from runner.judge.policy import CompareConfig
from runner.publish.history import ALL_SETS, HistoryRecord, append_record, history_key, read_history
from runner.publish.summarise import head_values, summarise
from runner.store import GCSStore, LocalStore
from support import fast_retry, shift_head, synthetic_result

REPO = "octo/scarlet"


def record(sha: str, **fields) -> HistoryRecord:
    result = synthetic_result(blends=6)
    result.provenance.head.sha = sha
    result.comparison = compare(result, CompareConfig())
    return summarise(result, REPO, **fields)


def test_a_record_summarises_head_per_metric_and_set():
    result = shift_head(synthetic_result(), band=1, shift=0.05)
    result.comparison = compare(result, CompareConfig())
    summary = summarise(result, REPO, pr=7, branch="faster-init", report="https://r/7")
    r_band = summary.summaries["mag_error_r"]
    values = head_values(
        result.blends, next(m for m in metrics(result.bands) if m.name == "mag_error_r")
    )
    assert set(r_band) == {ALL_SETS, "set"}
    assert r_band[ALL_SETS].n == len(values) == 40 * 3
    assert r_band[ALL_SETS].median == pytest.approx(np.median(values), rel=1e-5)
    assert r_band[ALL_SETS].q1 == pytest.approx(np.percentile(values, 25), rel=1e-5)
    q1, q3 = np.percentile(values, [25, 75])
    inside = values[(values >= q1 - 1.5 * (q3 - q1)) & (values <= q3 + 1.5 * (q3 - q1))]
    assert r_band[ALL_SETS].low == pytest.approx(inside.min(), rel=1e-5)  # Tukey's whiskers
    assert r_band[ALL_SETS].high == pytest.approx(inside.max(), rel=1e-5)
    info = {m.name: m for m in summary.metrics}
    assert (info["mag_error_r"].band, info["mag_error_r"].family) == ("r", "mag_error")
    assert info["chi2_dof"].band is None
    assert (summary.kind, summary.pr, summary.branch, summary.verdict) == (
        "pr",
        7,
        "faster-init",
        "fail",
    )
    assert HistoryRecord.from_dict(json.loads(summary.to_line())) == summary


def test_records_append_in_order_and_unreadable_lines_are_skipped(tmp_path):
    store = LocalStore(tmp_path)
    append_record(store, record("a" * 40, branch="one"))
    path = tmp_path / history_key(REPO)
    with open(path, "ab") as f:
        f.write(b'{"schema": "scarlet-regression/history-record", "schema_ver')  # a crash
    append_record(store, record("b" * 40, branch="two"))
    assert [r.branch for r in read_history(store, REPO)] == ["one", "two"]
    assert read_history(store, "octo/elsewhere") == []


def test_runs_finishing_at_the_same_moment_all_land(gcs_emulator, gcs_bucket):
    """Eight writers append at once, each with its own client, as eight runners would."""
    writers = 8
    start = threading.Barrier(writers)
    errors = []

    def finish(index: int) -> None:
        store = GCSStore(gcs_bucket.name, client=gcs_emulator.client(), retry=fast_retry(5))
        line = record(f"{index:040x}", branch=f"branch-{index}")
        start.wait()
        try:
            append_record(store, line)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = GCSStore(gcs_bucket.name, client=gcs_emulator.client())
    landed = sorted(r.branch for r in read_history(store, REPO))
    assert landed == sorted(f"branch-{i}" for i in range(writers))
    assert store.stat(history_key(REPO)).content_type == "application/x-ndjson"


def test_merge_times_are_recorded_in_utc_so_that_they_sort():
    assert utc_time("2026-11-26T01:00:00-05:00") == "2026-11-26T06:00:00+00:00"
    assert utc_time("2026-11-26T05:30:00Z") == "2026-11-26T05:30:00+00:00"
    assert sorted(map(utc_time, ["2026-11-26T01:00:00-05:00", "2026-11-26T05:30:00Z"])) == [
        "2026-11-26T05:30:00+00:00",
        "2026-11-26T06:00:00+00:00",
    ]
    for bad in ("yesterday", "2026-11-26T01:00:00"):
        with pytest.raises(argparse.ArgumentTypeError):
            utc_time(bad)
