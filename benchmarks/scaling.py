"""Wall time and efficiency of sharded runs here, and a model for Cloud Run.

    python benchmarks/scaling.py --repo PATH --rev REV --dataset DIR [--max-shards N]

Runs the same blends (one revision as base and head, environments warmed first) as 1,
2, … shards at once, one worker each, as Cloud Run tasks would, then merges them, and
prints wall time and efficiency = T(1) / (N × T(N)). From the measured deblending time
per blend and the fixed cost per task (start-up, environment, merge) it models wall time
and cost for 1,000 and 10,000 blends on Cloud Run Jobs.

Here environments come from a warm cache; a Cloud Run task starts cold and builds the
two revisions' environments first, which ``--task-startup`` adds to every task (default
120 s: scarlet v1 builds in ~50 s a revision, scarlet2 installs in about a minute).

The model: a task of c vCPUs deblends its share of the 2 × B deblends (base and head)
in parallel, so wall ≈ startup + 2 B t / (tasks × c) + merge(B); cost = (vCPU-seconds ×
CPU price + GiB-seconds × memory price) summed over tasks, at Cloud Run's list prices
for jobs (CPU_PRICE, MEMORY_PRICE below; check them for your region). Container start
and image pull are folded into the measured start-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.result import RunResult

CPU_PRICE = 0.000018  # USD per vCPU-second, Cloud Run jobs
MEMORY_PRICE = 0.000002  # USD per GiB-second
TASK_CPUS = 4  # as deploy/runner-job.yaml
TASK_MEMORY_GIB = 16  # scarlet2 needs up to ~3.5 GB per worker
MODEL_TASKS = (1, 10, 100, 1000)


def run_shards(args, shards: int, work: Path) -> float:
    """Wall time of ``shards`` concurrent shard runs and their merge."""
    started = time.perf_counter()
    processes = []
    for index in range(shards):
        out = work / f"{shards}-{index}"
        command = [sys.executable, "-m", "runner", "run", "--repo", args.repo, "--head",
                   args.rev, "--base", args.rev, "--dataset", str(args.dataset), "--out",
                   str(out), "--workers", "1", "--shard", f"{index}/{shards}"]  # fmt: skip
        processes.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    if any(process.wait() for process in processes):
        raise SystemExit(f"a shard of {shards} failed")
    parts = [str(work / f"{shards}-{index}") for index in range(shards)]
    merged = work / f"{shards}-merged"
    merge = [sys.executable, "-m", "runner", "merge", "--out", str(merged), *parts]
    subprocess.run(merge, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def deblend_seconds(result: RunResult) -> float:
    """Total init and fit time of every deblend (base and head) of a run."""
    return sum(
        (run.init_time or 0) + (run.fit_time or 0)
        for blend in result.blends
        for run in (blend.base, blend.head)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rev", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--max-shards", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--task-startup", type=float, default=120.0, help="seconds per task")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_shards(args, 1, work / "warmup")  # environments built and cached
        walls = {n: run_shards(args, n, work) for n in range(1, args.max_shards + 1)}
        merged = RunResult.read(work / "1-merged" / "result.json")
    blends = len(merged.blends)
    per_deblend = deblend_seconds(merged) / (2 * blends)
    overhead = walls[1] - deblend_seconds(merged)
    print(f"{blends} blends, {per_deblend:.2f} s per deblend, {overhead:.1f} s fixed per run")
    print("shards  wall [s]  efficiency")
    for shards, wall in walls.items():
        print(f"{shards:6d}  {wall:8.1f}  {walls[1] / (shards * wall):10.3f}")
    startup = overhead + args.task_startup
    print(
        f"\nmodel for Cloud Run ({TASK_CPUS} vCPU, {TASK_MEMORY_GIB} GiB per task, "
        f"{startup:.0f} s start-up per task):"
    )
    print("  blends  tasks  wall [min]  cost [USD]")
    for total in (1_000, 10_000):
        for tasks in MODEL_TASKS:
            if tasks > total:
                continue
            wall = startup + 2 * total * per_deblend / (tasks * TASK_CPUS)
            seconds = tasks * wall
            cost = seconds * (TASK_CPUS * CPU_PRICE + TASK_MEMORY_GIB * MEMORY_PRICE)
            print(f"  {total:6d}  {tasks:5d}  {wall / 60:10.1f}  {cost:10.2f}")


if __name__ == "__main__":
    main()
