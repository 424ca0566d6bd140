"""What the allow-list sandbox costs per blend, against the sandbox before it.

Prints, for the runner's code at this checkout ("allow-list") and at ``--baseline`` (the
deny-list sandbox it replaced: ``/`` bound read-only, secret folders covered), and for
no sandbox at all:
- start-up: seconds to run ``python -I -S -c pass`` behind each (median of ``--starts``);
- per blend: the worker pool's wall time over every blend of ``--dataset`` (HSC set1 by
  default) on one slot, divided by the number of blends, with the tiny test deblender
  (the overhead is then nearly all there is) or, with ``--python`` and ``--adapter-file``,
  a real one. The pool's own work per blend differs too: the allow-list pool writes the
  blend's inputs into the worker's scratch folder and reads ``/proc`` twice.
Rounds alternate the three, so that machine drift spreads evenly; medians are printed.

    python benchmarks/sandbox.py [--dataset DIR] [--baseline REV] [--rounds N]
        [--python ENV/bin/python --adapter-file runner/deblend/worker/adapter_scarlet1.py]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "support" / "adapters" / "faulty.py"

# Run in a checkout of the runner (first on sys.path): times the pool over the blends.
DRIVER = """
import json, os, shutil, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from runner.deblend import pool, sandbox
mode, python, adapter, out = sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
blends = [Path(p) for p in sys.argv[6:]]
if mode == "none":
    way = None
elif hasattr(sandbox, "LIMITS"):  # the allow-list
    way = sandbox.isolation(network=False)
else:  # the deny-list: what it must leave reachable, as its runs named it
    way = sandbox.isolation(os.environ, [out, adapter, *{b.parent for b in blends}], network=False)
scratch = out / "start"
scratch.mkdir(parents=True)
prefix = () if way is None else way.prefix([scratch])
starts = []
for _ in range(int(os.environ["STARTS"])):
    started = time.perf_counter()
    python_pass = [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"]
    subprocess.run([*prefix, *python_pass], check=True)
    starts.append(time.perf_counter() - started)
side = pool.Side("head", python, adapter, sandbox=way)
tasks = [pool.Task("head", b, out / f"{b.stem}.out.npz", {}) for b in blends]
outcomes = []
started = time.perf_counter()
pool.run_tasks(tasks, {"head": side}, out, 1, 600.0, outcomes.append)
total = time.perf_counter() - started
errors = [o.error for o in outcomes if o.error]
print(json.dumps({"starts": starts, "total": total, "blends": len(tasks), "errors": errors}))
"""


def checkout(rev: str, into: Path) -> Path:
    """The runner's code at ``rev`` (exported from git) in ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "runner"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(code: Path, mode: str, args: argparse.Namespace, out: Path, blends: list[Path]):
    """One round of one variant: start-ups and the pool's total."""
    command = [sys.executable, "-c", DRIVER, str(code), mode, args.python, str(args.adapter_file)]
    command += [str(out), *map(str, blends)]
    env = {"PATH": "/usr/bin:/bin", "STARTS": str(args.starts), "HOME": str(out)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} at {code} failed:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])
    if figures["errors"]:
        raise SystemExit(f"{mode} at {code}: {figures['errors'][:3]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "hsc" / "set1")
    parser.add_argument("--baseline", default="3556938", help="the runner before issue 23")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--python", default=sys.executable, help="the deblender's interpreter")
    parser.add_argument("--adapter-file", type=Path, default=TINY)
    args = parser.parse_args()
    blends = sorted(args.dataset.resolve().glob("*.npz"))
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as folder:
        root = Path(folder)
        (root / "baseline").mkdir()
        baseline = checkout(args.baseline, root / "baseline")
        codes = {"none": ROOT, "deny-list": baseline, "allow-list": ROOT}
        results: dict[str, list[dict]] = {name: [] for name in codes}
        for number in range(args.rounds):
            for name, code in codes.items():
                out = root / f"{name}-{number}"
                mode = "none" if name == "none" else "sandbox"
                results[name].append(measure(code, mode, args, out, blends))
    print(f"{len(blends)} blends of {args.dataset}, {args.adapter_file.name}, {args.rounds} rounds")
    print(f"{'':12} {'start-up (s)':>13} {'per blend (ms)':>15} {'vs none':>8}")
    per_blend = {}
    for name, rounds in results.items():
        start = statistics.median(s for r in rounds for s in r["starts"])
        per_blend[name] = statistics.median(r["total"] / r["blends"] for r in rounds)
        ratio = per_blend[name] / per_blend["none"]
        print(f"{name:12} {start:13.3f} {per_blend[name] * 1000:15.1f} {ratio:8.3f}")
    extra = (per_blend["allow-list"] - per_blend["deny-list"]) * 1000
    print(f"allow-list against deny-list: {extra:+.1f} ms per blend")


if __name__ == "__main__":
    main()
