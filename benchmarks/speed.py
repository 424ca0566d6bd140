"""Work not done: how long a run takes for kinds of pull request, over today's full run.

On real scarlet v1 commits made on ``--base`` in a local clone, with HSC set1 + set3, in
one invocation (so the machine's load is shared by every figure):

- the full run (``--full``: head new, base's environment cached, everything built and
  deblended on both sides, as every run did before work was skipped), head a
  Python-only commit; it leaves base's outcomes in the store;
- a second Python-only commit (goal <= 0.50: the compile cached, head's deblending, the
  timing sample and spot-check on base);
- a docs-only commit (goal <= 0.10: nothing built, nothing deblended);
- a C++ change (goal <= 1.05: compiled, head deblended, base reused).

Each line gives the run's seconds, its ratio to the full run, the verdict and what was
done. Base is given as a branch, so its build is trusted (it writes the compiler cache).

    python benchmarks/speed.py [--repo PATH] [--base REV] [--workers N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.commands.release_repo import commit
from runner.deblend.revisions import git
from runner.result import RunResult

ROOT = Path(__file__).resolve().parent.parent
SETS = [ROOT / "data" / "hsc" / "set1", ROOT / "data" / "hsc" / "set3"]
MIRROR = os.environ.get("SCARLET1_REPO", "/work/.mirror/pmelchior+scarlet/repo")
GOALS = {"python": 0.50, "docs": 0.10, "c++": 1.05}


def edit(clone: Path, base: str, branch: str, path: str, old: str, new: str) -> str:
    """A commit on ``base`` replacing ``old`` (found once) by ``new`` in ``path``."""
    git(clone, "checkout", "--quiet", "-B", branch, base)
    file = clone / path
    text = file.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{path} at {base} does not read as expected ({old!r})")
    file.write_text(text.replace(old, new))
    return commit(clone, f"{branch}: {path}")


def timed(args: list[str]) -> float:
    """Seconds one ``python -m runner`` call takes (its output kept quiet)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def done(result: RunResult) -> str:
    """What a run did, in a few words."""
    p = result.provenance
    if p.skipped is not None:
        return f"skipped: {p.skipped.reason}"
    build = p.head.build
    parts = [f"head built in {build.seconds:.0f} s" if not build.reused else "head env cached"]
    if build.compiler_cache:
        parts.append(build.compiler_cache)
    if p.reuse is not None:
        parts.append(f"base reused on {p.reuse.blends} blends, {len(p.reuse.checked)} checked")
    fresh = sum(b.base.reused_from is None for b in result.blends)
    parts.append(f"{fresh + len(result.blends)} deblends of {2 * len(result.blends)}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=MIRROR, help="a clone of pmelchior/scarlet")
    parser.add_argument("--base", default="45187fd", help="the base revision")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, help="runner cache (default: a fresh one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="speed-"))
    cache = args.cache or work / "cache"
    clone = work / "scarlet"
    subprocess.run(["git", "clone", "--quiet", args.repo, str(clone)], check=True)
    git(clone, "branch", "--force", "trunk", args.base)
    base = git(clone, "rev-parse", "trunk")
    line = "class Blend(CombinedComponent):\n"
    heads = {
        "full": edit(clone, base, "py-a", "scarlet/blend.py", line, line[:-1] + "  # a\n"),
        "python": edit(clone, base, "py-b", "scarlet/blend.py", line, line[:-1] + "  # b\n"),
        "docs": edit(clone, base, "docs", "README.md", "# Scarlet", "# scarlet"),
        "c++": edit(
            clone, base, "cpp", "scarlet/operators_pybind11.cc", "namespace py = pybind11;\n",
            "namespace py = pybind11;\nstatic int unused_probe() { return 1; }\n",
        ),
    }  # fmt: skip
    common = ["--repo", str(clone), "--base", "trunk", "--cache", str(cache)]
    common += ["--workers", str(args.workers)] + [f"--dataset={s}" for s in SETS]
    one = work / "one"  # one blend: the preparation builds base's environment
    one.mkdir()
    first = sorted(SETS[0].glob("*.npz"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    print(f"preparing: base {base[:12]}'s environment (untimed)", flush=True)
    timed(["run", "--repo", str(clone), "--head", "trunk", "--base", "trunk", "--cache",
           str(cache), "--dataset", str(one), "--out", str(work / "prep")])  # fmt: skip
    seconds: dict[str, float] = {}
    for name, head in heads.items():
        extra = ["--full"] if name == "full" else []
        seconds[name] = timed(["run", *common, "--head", head, "--out", str(work / name), *extra])
        result = RunResult.read(work / name / "result.json")
        ratio = seconds[name] / seconds["full"]
        goal = f" (goal <= {GOALS[name]:.2f})" if name in GOALS else ""
        print(
            f"{name:>7}: {seconds[name]:6.1f} s  {ratio:5.2f} of the full run{goal}  "
            f"{result.comparison.verdict}  [{done(result)}]",
            flush=True,
        )


if __name__ == "__main__":
    main()
