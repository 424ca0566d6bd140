"""Harness overhead and parallel efficiency of ``python -m runner run``.

Prints, for the same blends and one revision used as both base and head:
- overhead = wall time of the whole run on one worker / wall time of the bare
  deblender doing the same work: two processes (base and head) that each import the
  adapter and deblend every blend once (goal <= 1.10);
- parallel efficiency = run on one worker / (N x run on N workers), N = all cores
  (goal >= 0.85).
Environments are built (and the JAX compilation cache filled) by a warm-up run first.

    python benchmarks/runner_overhead.py [--repo PATH --rev REV] [--dataset DIR] [--blends N]

Without --repo it uses the scarlet2 release from PyPI; without --dataset a synthetic set.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.commands.release_repo import release_repository
from runner.deblend import revisions
from runner.deblend.adapters import detect_adapter
from runner.deblend.environments import build_environment
from runner.deblend.pool import Side, worker_environment
from runner.deblend.run import RunConfig, compilation_cache, deblender_variables, default_cache, run
from runner.synth import write_synthetic_set

BARE_LOOP = """
import sys
import numpy as np
spec = __import__("importlib.util").util.spec_from_file_location("adapter", sys.argv[1])
adapter = __import__("importlib.util").util.module_from_spec(spec)
spec.loader.exec_module(adapter)
for path in sys.argv[2:]:
    with np.load(path) as archive:
        blend = {k: archive[k] for k in ("images", "variance", "footprint", "psfs", "centers")}
    adapter.deblend(blend, {})
"""


def timed_run(repo: str, rev: str, dataset: Path, out: Path, workers: int) -> float:
    """Wall time of one whole run (resolve, environments from cache, deblend, measure)."""
    started = time.perf_counter()
    run(RunConfig(repo=repo, head=rev, base=rev, datasets=[dataset], out=out, workers=workers))
    return time.perf_counter() - started


def bare_deblender(python: Path, side: Side, blends: list[Path], home: Path) -> float:
    """Wall time of two processes, one after the other, each deblending every blend once."""
    command = [str(python), "-I", "-c", BARE_LOOP, str(side.adapter_file), *map(str, blends)]
    env = worker_environment(side, home)
    started = time.perf_counter()
    for _ in ("base", "head"):
        subprocess.run(command, check=True, env=env, cwd=home, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="scarlet repository (default: scarlet2 from PyPI)")
    parser.add_argument("--rev", help="revision to run as base and head")
    parser.add_argument("--dataset", type=Path, help="blend set (default: synthetic)")
    parser.add_argument("--blends", type=int, default=12, help="blends of the synthetic set")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, rev = args.repo, args.rev
        if repo is None:
            repo = str(work / "scarlet2")
            rev = release_repository("scarlet2==0.5.1", Path(repo))
        dataset = args.dataset
        if dataset is None:
            dataset = work / "synth"
            write_synthetic_set(dataset, args.blends, seed=1)
        blends = sorted(dataset.glob("*.npz"))
        cache = default_cache()
        local = revisions.local_repository(repo, cache)
        sha = revisions.resolve(local, rev or "HEAD")
        source = revisions.checkout(local, sha, cache / "checkouts" / sha)
        adapter = detect_adapter(source)
        env = build_environment(source, sha, adapter, cache)
        variables = deblender_variables(adapter, compilation_cache(cache, adapter))
        side = Side("bench", env.python, adapter.worker_file, variables)
        print(f"{adapter.name} {env.deblender_version}, {len(blends)} blends, {cores} cores")

        timed_run(repo, sha, dataset, work / "warmup", cores)
        bare = bare_deblender(env.python, side, blends, work)
        serial = timed_run(repo, sha, dataset, work / "serial", 1)
        parallel = timed_run(repo, sha, dataset, work / "parallel", cores)
    print(f"bare deblender (2 processes):           {bare:8.2f} s")
    print(f"harness, 1 worker:                      {serial:8.2f} s")
    print(f"harness, {cores} workers:                     {parallel:8.2f} s")
    print(f"overhead (harness / bare):              {serial / bare:8.3f}  (goal <= 1.10)")
    efficiency = serial / (cores * parallel)
    print(f"parallel efficiency on {cores} cores:         {efficiency:8.3f}  (goal >= 0.85)")


if __name__ == "__main__":
    sys.exit(main())
