"""What one revision of a deblender costs on a blend set, as the runner's workers run it.

    python benchmarks/deblenders.py --adapter scarlet2 --repo REPO --rev REV \
        [--dataset data/hsc/set1] [--blends N] [--workers 2] [--cache DIR] [--passes 2]

Builds (or reuses) the revision's environment as a run does, then deblends every blend of
the set with one side's workers (``--workers`` slots, as a run's pool), ``--passes`` times:
the first pass with an empty JAX compilation cache (cold: every blend shape compiles), the
later ones with what the earlier wrote (warm: a later run of the same environment, or
head's where it computes as base did). Prints, per pass: wall time, the sum of the
adapter's fit and init times, the rest of the workers' time (compilation, the untimed
warm-up, start-up), the ratio of the pool's busy time (wall × workers) to the fit time, and
the peak resident memory of one worker; and the environment's build time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.deblend.adapters import get_adapter  # noqa: E402
from runner.deblend.environments import build_environment  # noqa: E402
from runner.deblend.pool import LIVE_WORKERS, Side, Task, resident_memory, run_tasks  # noqa: E402
from runner.deblend.revisions import checkout, local_repository, resolve  # noqa: E402
from runner.deblend.run import deblender_variables, default_cache  # noqa: E402
from runner.deblend.sandbox import isolation  # noqa: E402


class PeakMemory:
    """Samples the resident memory of every live worker; keeps the largest."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self.stop = every, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(self.every):
            for worker in list(LIVE_WORKERS):
                if worker.process is not None:
                    self.peak = max(self.peak, resident_memory(worker.process.pid) or 0)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join()


def deblend_all(side: Side, blends: list[Path], workers: int, out: Path) -> dict:
    """One pass over ``blends``: wall time, summed timings, errors, peak worker memory."""
    out.mkdir(parents=True)
    tasks = [Task(side.name, b, out / b.name, {}) for b in blends]
    replies, errors = [], []

    def collect(outcome) -> None:
        if outcome.error is None:
            replies.append({**outcome.reply, "wall": outcome.wall})
        else:
            errors.append(f"{outcome.task.blend.name}: {outcome.error.splitlines()[0]}")

    started = time.perf_counter()
    with PeakMemory() as memory:
        run_tasks(tasks, {side.name: side}, out, workers, 3600.0, collect)
    wall = time.perf_counter() - started
    fit = sum(r["fit_time"] for r in replies)
    init = sum(r["init_time"] for r in replies)
    return {
        "wall": wall,
        "fit": fit,
        "init": init,
        "rest": sum(r["wall"] for r in replies) - fit - init,
        "errors": errors,
        "peak": memory.peak,
        "iterations": sorted(r["iterations"] for r in replies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rev", required=True)
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "hsc" / "set1")
    parser.add_argument("--blends", type=int, default=0, help="the first N blends (0: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=default_cache())
    args = parser.parse_args()

    adapter, cache = get_adapter(args.adapter), args.cache.resolve()
    repo = local_repository(args.repo, cache)
    sha = resolve(repo, args.rev)
    sandbox = isolation(network=False)
    started = time.perf_counter()
    env = build_environment(
        checkout(repo, sha, cache / "checkouts" / sha), sha, adapter, cache, sandbox
    )
    built = time.perf_counter() - started
    blends = sorted(args.dataset.resolve().glob("*.npz"))
    blends = blends[: args.blends] if args.blends else blends
    print(f"{adapter.name} {env.deblender_version} ({sha[:10]}): {len(blends)} blends of")
    print(f"  {args.dataset}, {args.workers} worker(s)")
    how = "reused" if env.reused else "built"
    print(f"  environment {how} in {built:.0f} s (its build took {env.build_seconds:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="deblenders-") as folder:
        compiled = Path(folder) / "jax"
        compiled.mkdir()
        variables = deblender_variables(adapter, compiled)
        writable = (compiled,) if variables else ()
        side = Side("bench", env.python, adapter.worker_file, variables, None, sandbox, writable)
        for number in range(args.passes):
            one = deblend_all(side, blends, args.workers, Path(folder) / f"pass{number}")
            state = "cold" if number == 0 else "warm"
            busy = one["wall"] * args.workers
            its = one["iterations"]
            print(
                f"  pass {number + 1} ({state} compilation cache): wall {one['wall']:.0f} s,"
                f" fits {one['fit']:.0f} s, inits {one['init']:.0f} s, the rest"
                f" {one['rest']:.0f} s; wall × workers / fits {busy / max(one['fit'], 1e-9):.2f};"
                f" peak worker memory {one['peak'] / 2**20:.0f} MiB; iterations median"
                f" {its[len(its) // 2] if its else '–'}, max {its[-1] if its else '–'};"
                f" {len(one['errors'])} errored"
            )
            for error in one["errors"][:5]:
                print(f"    {error}")
        shutil.rmtree(compiled, ignore_errors=True)


if __name__ == "__main__":
    main()
