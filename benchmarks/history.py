"""The verdict on scarlet v1's real history: is it right on every real commit, on a busy
machine?

    python benchmarks/history.py [--repo PATH] [--work DIR] [--set set1] [--workers 2]
                                 [--only N ...] [--no-hog] [--no-full]

Replays pairs of real scarlet v1 commits (base → head) on HSC ``--set`` with the real
runner, built in a scratch clone of the scarlet v1 repository at ``--repo`` (default
$SCARLET1_REPO or the team's mirror), one cache and one store shared by every pair (as
the service keeps them; a pair of master's own commits runs as a trusted push run, whose
outcomes later runs reuse), and prints each verdict against the class argued for it,
the wall time per pair and the confusion table. Three heads are made here, on top of
45187fd, in the scratch clone only: a comment in a Python module, a comment in a C++
module (both must build to base's install and not be deblended) and a fit that does
40 % more work (the same computation, then as much again of CPU time spent on nothing,
its models changed at round-off level by a relative 1e-6).

Then (unless ``--no-hog``) the pairs whose models are bit-identical are replayed in full
(``--full``: nothing reused) while a CPU hog keeps every core busy, with the 40 % head
beside them: no identical pair may fail, the 40 % head must. Finally (unless
``--no-full``) the README/LICENSE/CITATION pair is timed against a full run of it.

Classes: ``fail``; ``not fail`` (pass or neutral); ``neutral``; ``pass, identical``
(deblended, everything measured bit-identical); ``pass, not deblended`` (head cannot
change a model, or builds to base's install). A pair may also name words its verdict's
reasons must hold.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from runner.deblend.revisions import git, resolve
from runner.deblend.run import RunConfig, run
from runner.result import RunResult

ROOT = Path(__file__).resolve().parent.parent
HSC = ROOT / "data" / "hsc"
MIRROR = Path(os.environ.get("SCARLET1_REPO", "/work/.mirror/pmelchior+scarlet/repo"))
MAIN = "master"  # scarlet v1's default branch
CLASSES = ("fail", "not fail", "neutral", "pass, identical", "pass, not deblended")
# Commits made in the scratch clone are dated, so their SHAs are the same on every replay.
FIXED_DATE = "2024-06-01T00:00:00+00:00"


@dataclass(frozen=True)
class Pair:
    """A base → head pair of scarlet v1 commits and the answer argued for it."""

    base: str
    head: str
    expected: str
    what: str
    says: str = ""  # words the verdict's reasons must hold


PAIRS = [
    Pair("134fac6", "79daa16", "pass, identical", "merge of scarlet.lite: fit path untouched"),
    Pair("79daa16", "8300d19", "fail", "version.py gets an unterminated string", "SyntaxError"),
    Pair(
        "8300d19",
        "fa2a32d",
        "not fail",
        "fixes the build of a base that does not build",
        "nearest good ancestor",
    ),
    Pair("405434a", "d1bda26", "not fail", "fixes get_pixel_spectrum's PSF-peak correction"),
    Pair(
        "85928d6",
        "06d63fe",
        "not fail",
        "fixes Box.contains, which made every blend error",
        "fixed",
    ),
    Pair("93e2547", "1161477", "pass, not deblended", "adds a CI workflow (sphinx.yml)"),
    Pair("d1bda26", "56a2bc4", "pass, not deblended", "README, LICENSE, CITATION"),
    Pair("5b0b5e0", "45187fd", "pass, identical", "next_fast_len from scipy.fft"),
    Pair("45187fd", "2d1f022", "neutral", "init fixes (#284)"),
    Pair("56a2bc4", "7eb3fe0", "neutral", "detection image added to obs[0] (#270)"),
    Pair("45187fd", "bench/comment-py", "pass, not deblended", "a comment in scarlet/blend.py"),
    Pair(
        "45187fd",
        "bench/comment-cc",
        "pass, not deblended",
        "a comment in scarlet/operators_pybind11.cc",
    ),
]
HOGGED = [
    Pair("134fac6", "79daa16", "pass, identical", "bit-identical models, every core hogged"),
    Pair("5b0b5e0", "45187fd", "pass, identical", "bit-identical models, every core hogged"),
    Pair(
        "45187fd",
        "bench/slower",
        "fail",
        "the fit does 40 % more work, every core hogged",
        "CPU time per source",
    ),
]

SLOWER = """

# Added by scarlet-regression's benchmarks/history.py: the same fit, then 40 % more CPU
# time spent on nothing, the models changed at round-off level.
import time as _time

_fit = Blend.fit


def _slower_fit(self, *args, **kwargs):
    started = _time.process_time()
    result = _fit(self, *args, **kwargs)
    until = _time.process_time() + 0.4 * (_time.process_time() - started)
    while _time.process_time() < until:
        np.fft.fft(np.ones(4096))
    for parameter in self.parameters:
        parameter[:] = parameter * (1 + 1e-6)
    return result


Blend.fit = _slower_fit
"""


def scratch_clone(source: Path, work: Path) -> Path:
    """A full clone of ``source`` in ``work`` (tags included: scarlet's version needs
    them), with the benchmark's own heads as branches ``bench/...`` on top of 45187fd."""
    clone = work / "scarlet"
    if not clone.exists():
        subprocess.run(["git", "clone", "--quiet", str(source), str(clone)], check=True)
    heads = {
        "bench/comment-py": ("scarlet/blend.py", lambda text: _insert_comment(text, "#")),
        "bench/comment-cc": (
            "scarlet/operators_pybind11.cc",
            lambda text: text + "// a comment added by the history benchmark\n",
        ),
        "bench/slower": ("scarlet/blend.py", lambda text: text + SLOWER),
    }
    for branch, (path, change) in heads.items():
        if git(clone, "branch", "--list", branch):
            continue
        git(clone, "checkout", "--quiet", "-B", branch, "45187fd")
        file = clone / path
        file.write_text(change(file.read_text()))
        environ = {
            **os.environ,
            "GIT_AUTHOR_NAME": "history benchmark",
            "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_AUTHOR_DATE": FIXED_DATE,
            "GIT_COMMITTER_NAME": "history benchmark",
            "GIT_COMMITTER_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_DATE": FIXED_DATE,
        }
        subprocess.run(
            ["git", "-C", str(clone), "commit", "--quiet", "-am", branch], check=True, env=environ
        )
    git(clone, "checkout", "--quiet", MAIN)
    return clone


def _insert_comment(text: str, mark: str) -> str:
    """``text`` with a comment line after its first line (every later line moves down)."""
    first, rest = text.split("\n", 1)
    return f"{first}\n{mark} a comment added by the history benchmark\n{rest}"


def on_branch(clone: Path, branch: str, revs: tuple[str, ...]) -> bool:
    """Whether every one of ``revs`` is a commit of ``branch``."""
    return all(
        subprocess.run(
            ["git", "-C", str(clone), "merge-base", "--is-ancestor", rev, branch],
            capture_output=True,
            check=False,
        ).returncode
        == 0
        for rev in revs
    )


def classify(result: RunResult) -> str:
    """The class a verdict falls in (see the module docstring)."""
    comparison = result.comparison
    if comparison.verdict == "pass":
        if result.provenance.skipped is not None:
            return "pass, not deblended"
        return "pass, identical" if comparison.identical_models else "pass"
    return comparison.verdict


def right(pair: Pair, result: RunResult) -> bool:
    """Whether the verdict is the answer argued for the pair."""
    found = classify(result)
    says = not pair.says or pair.says in " ".join(result.comparison.reasons)
    if pair.expected == "not fail":
        return found != "fail" and says
    return found == pair.expected and says


def replay(pair: Pair, clone: Path, work: Path, args, *, full: bool) -> tuple[RunResult, float]:
    """Run one pair with the real runner; its result and wall time."""
    name = f"{pair.base}-{pair.head}".replace("/", "_") + ("-full" if full else "")
    out = work / "runs" / name
    config = RunConfig(
        repo=str(clone),
        head=pair.head,
        base=pair.base,
        datasets=[HSC / args.set],
        out=out,
        workers=args.workers,
        cache=work / "cache",
        shortcuts=not full,
        # As the service runs them: a pair of the default branch's own commits is a
        # trusted (push) run, whose outcomes later runs reuse; the benchmark's heads not.
        trusted_ref=MAIN if on_branch(clone, MAIN, (pair.base, pair.head)) else None,
    )
    started = time.perf_counter()
    result = run(config)
    return result, time.perf_counter() - started


def row(pair: Pair, result: RunResult, seconds: float) -> str:
    comparison = result.comparison
    mark = "right" if right(pair, result) else "WRONG"
    reasons = "; ".join(comparison.reasons) or "(no reasons)"
    return (
        f"| {pair.base[:7]} → {pair.head[:16]} | {pair.what} | {pair.expected} |"
        f" {comparison.verdict} | {mark} | {seconds:6.0f} s | {reasons} |"
    )


def confusion(found: list[tuple[Pair, RunResult]]) -> str:
    """Expected class against verdict, counted over the pairs."""
    counts = Counter((pair.expected, result.comparison.verdict) for pair, result in found)
    lines = ["| expected \\ verdict | fail | neutral | pass |", "|---|---:|---:|---:|"]
    for expected in CLASSES:
        cells = [counts[(expected, v)] for v in ("fail", "neutral", "pass")]
        if any(cells):
            lines.append(f"| {expected} | " + " | ".join(map(str, cells)) + " |")
    wrong = sum(not right(pair, result) for pair, result in found)
    lines.append(f"\n{len(found) - wrong} of {len(found)} verdicts right.")
    return "\n".join(lines)


def table(title: str, pairs: list[Pair], clone: Path, work: Path, args, full: bool) -> list:
    print(f"\n## {title}\n", flush=True)
    print("| base → head | what the commit does | expected | verdict | right? | wall | reasons |")
    print("|---|---|---|---|---|---:|---|", flush=True)
    found = []
    for pair in pairs:
        result, seconds = replay(pair, clone, work, args, full=full)
        found.append((pair, result))
        print(row(pair, result, seconds), flush=True)
    print("\n" + confusion(found), flush=True)
    return found


def hog(cores: int) -> list[subprocess.Popen]:
    """One busy process per core."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=MIRROR, help="a scarlet v1 repository")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scarlet-regression-history"))
    parser.add_argument("--set", default="set1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", type=int, nargs="*", help="replay only these pairs (0-based)")
    parser.add_argument("--no-hog", action="store_true", help="skip the CPU-hog replay")
    parser.add_argument("--no-full", action="store_true", help="skip timing a full run")
    args = parser.parse_args()
    # Terminated, it still ends its CPU hogs (the finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    if not args.repo.exists():
        sys.exit(f"no scarlet v1 repository at {args.repo} (set SCARLET1_REPO)")
    args.work.mkdir(parents=True, exist_ok=True)
    clone = scratch_clone(args.repo, args.work)
    pairs = [p for i, p in enumerate(PAIRS) if args.only is None or i in args.only]
    print(f"scarlet v1 history on HSC {args.set}, {args.workers} workers, clone {clone}")
    found = table("Real history", pairs, clone, args.work, args, full=False)
    if not args.no_hog:
        hogs = hog(os.cpu_count() or 1)
        try:
            found += table(
                f"Every core busy with a CPU hog ({len(hogs)} processes), in full",
                HOGGED,
                clone,
                args.work,
                args,
                full=True,
            )
        finally:
            for process in hogs:
                process.kill()
                process.wait()
    if not args.no_full:
        docs = next(p for p in PAIRS if p.head == "56a2bc4")
        _, quick = replay(docs, clone, args.work, args, full=False)
        _, slow = replay(docs, clone, args.work, args, full=True)
        print(
            f"\n{docs.base} → {docs.head} ({docs.what}): {quick:.1f} s, a full run of it"
            f" {slow:.1f} s (environments cached): {quick / slow:.3f} of a full run"
        )
    heads = {p.head for p, _ in found}
    shas = ", ".join(f"{h} = {resolve(clone, h)[:10]}" for h in sorted(heads) if "/" in h)
    print(f"\nbenchmark heads: {shas}")


if __name__ == "__main__":
    main()
