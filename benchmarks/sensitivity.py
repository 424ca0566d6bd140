"""How often the verdict cries wolf, and how small a flux bias it catches.

    python benchmarks/sensitivity.py [--repo PATH --rev REV] [--runs 20] [--blends 12]
                                     [--changed HEAD BASE]

1. A/A: ``--runs`` real runs with the same revision as head and base on a synthetic set
   (timing noise included). Prints how many failed (goal: 0).
2. Sensitivity: a flux bias of b magnitudes is added to every injected source of head
   in one band; prints the smallest b whose verdict is fail, on the synthetic set and,
   when present, on ``../shared/data/hsc/set1``. With identical models the paired
   differences are exactly b, so this finds the tolerance. ``--changed HEAD BASE``
   repeats it on a real pair of revisions whose fits differ, where the change's own
   scatter competes with the bias.

Without --repo it uses the scarlet v1 clone at $SCARLET1_REPO (or the team's mirror) at
its HEAD when there is one, else the scarlet2 release from PyPI.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

from runner.compare import compare
from runner.config import CompareConfig
from runner.release import release_repository
from runner.result import RunResult
from runner.run import RunConfig, run
from runner.synth import write_synthetic_set

HSC_SET1 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hsc" / "set1"
MIRROR = Path(os.environ.get("SCARLET1_REPO", "/work/.mirror/pmelchior+scarlet/repo"))
BIASES = (0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05)
BAND = 1  # r


def biased(result: RunResult, bias: float) -> RunResult:
    """``result`` with head's fluxes in one band made ``bias`` magnitudes fainter."""
    changed = copy.deepcopy(result)
    for blend in changed.blends:
        if blend.head.status != "ok":
            continue
        blend.head.model_hash = f"biased-{blend.head.model_hash}"
        for source in blend.head.injected:
            if source.mag[BAND] is not None:
                source.mag[BAND] += bias
                source.mag_error[BAND] -= bias
    return changed


def smallest_flagged(result: RunResult) -> float | None:
    """The smallest bias (either sign) in BIASES whose verdict is fail."""
    for bias in BIASES:
        for signed in (bias, -bias):
            if compare(biased(result, signed), CompareConfig()).verdict == "fail":
                return signed
    return None


def one_run(repo: str, head: str, base: str, dataset: Path, out: Path) -> RunResult:
    return run(RunConfig(repo=repo, head=head, base=base, datasets=[dataset], out=out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--blends", type=int, default=12)
    parser.add_argument("--changed", nargs=2, metavar=("HEAD", "BASE"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, rev = args.repo, args.rev
        if repo is None and MIRROR.exists():
            repo = str(MIRROR)
        elif repo is None:
            repo = str(work / "scarlet2")
            rev = release_repository("scarlet2==0.5.1", Path(repo))
        synthetic = work / "synth"
        write_synthetic_set(synthetic, args.blends, seed=2)

        results, fails = [], 0
        for index in range(args.runs):
            result = one_run(repo, rev, rev, synthetic, work / f"aa{index}")
            results.append(result)
            verdict = result.comparison.verdict
            fails += verdict == "fail"
            flagged = [m.name for m in result.comparison.metrics if m.status != "unchanged"]
            print(f"A/A run {index + 1:2d}: {verdict:7s} {' '.join(flagged)}", flush=True)
        print(
            f"A/A: {args.runs} runs of {rev} on {args.blends} synthetic blends: "
            f"{fails} failed (goal 0)"
        )

        print(f"smallest flagged flux bias in r, synthetic set: {smallest_flagged(results[0])}")
        if HSC_SET1.is_dir():
            hsc = one_run(repo, rev, rev, HSC_SET1, work / "hsc")
            print(f"smallest flagged flux bias in r, HSC set1: {smallest_flagged(hsc)}")
        if args.changed:
            head, base = args.changed
            for name, dataset in (("synthetic set", synthetic), ("HSC set1", HSC_SET1)):
                if dataset.is_dir():
                    pair = one_run(repo, head, base, dataset, work / f"changed-{dataset.name}")
                    print(
                        f"smallest flagged flux bias in r on top of {head} vs {base}, "
                        f"{name}: {smallest_flagged(pair)} (verdict without bias: "
                        f"{pair.comparison.verdict})"
                    )


if __name__ == "__main__":
    main()
