"""How often the verdict cries wolf, and what it catches, on real HSC blends.

    python benchmarks/sensitivity.py [--result RESULT.json] [--trials 50] [--set set1]
                                     [--repo PATH --rev REV] [--pair RESULT.json]

The starting point is a real run: scarlet v1 deblending HSC set1 (``--result``, or an A/A
run of ``--rev`` of the scarlet v1 clone at $SCARLET1_REPO or the team's mirror, made
here). Its base side is the base of every trial. Each trial makes a head from it the way
a pull request would, plus an equivalent-fit perturbation that differs from trial to
trial: every injected source's magnitudes jittered by N(0, s) per band with s drawn
from 0.001-0.02 mag, χ² per pixel by N(0, s / 20) relative (and logL with it), centroid
offsets by N(0, s) px, timings by 5 % machine noise. The scenarios, 50 trials each:

- A/A: the perturbation only (goal: 0 fail, at most 2 neutral);
- a 0.01 mag bias in r away from base's own median error (goal: >= 48 fail), and towards
  it (goal: never fail);
- the same bias with 0.05 mag per-source scatter added: the rate and the minimum
  detectable effect;
- 5 % of the blends 0.2 mag worse, every injected source in them (goal: 50 fail);
- a measurement-only bias: r fluxes 2 % off away from base's error, models, χ², logL and
  iterations bit-identical (goal: 50 fail), and towards it (goal: 0 pass: a calibration
  change with untouched models is never a silent green);
- removing a real bias: base 0.03 mag further from zero in every band than head
  (goal: 0 fail, the magnitude errors reported improved).

``--pair`` also prints the verdict on a real run result as it is (e.g. a real pair of
revisions).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runner.deblend.run import RunConfig, run
from runner.judge.compare import compare
from runner.judge.policy import CompareConfig
from runner.result import RunResult

ROOT = Path(__file__).resolve().parent.parent
HSC = ROOT / "data" / "hsc"
MIRROR = Path(os.environ.get("SCARLET1_REPO", "/work/.mirror/pmelchior+scarlet/repo"))
R = 1  # the r band of g r i z y


def shift_source(source, band: int, shift: float) -> None:
    """Move one injected source's model magnitude in ``band`` by ``shift`` (fainter > 0)."""
    if source.mag[band] is not None:
        source.mag[band] += shift
        source.mag_error[band] -= shift


def jitter(result: RunResult, rng: np.random.Generator, *, models: bool = True) -> float:
    """Head made an equivalent fit of base's (see the module docstring); returns s.
    With ``models=False`` only the measured fluxes move: models stay bit-identical."""
    scale = rng.uniform(0.001, 0.02)
    for blend in result.blends:
        head = blend.head
        for source in head.injected:
            for band, noise in enumerate(rng.normal(0, scale, len(source.mag))):
                shift_source(source, band, noise)
        if not models:
            continue
        for source in head.injected:
            if source.centroid_offset is not None:
                source.centroid_offset = abs(source.centroid_offset + rng.normal(0, scale))
        head.model_hash = f"jittered-{head.model_hash}"
        chi2 = head.chi2_dof * (1 + rng.normal(0, scale / 20))
        head.logL -= (chi2 - head.chi2_dof) * blend.pixels / 2
        head.chi2_dof = chi2
        noise = math.exp(rng.normal(0, 0.05))
        head.init_time *= noise
        head.fit_time *= noise
        if head.cpu_time is not None:
            head.cpu_time *= noise
    return scale


def base_sign(result: RunResult, band: int) -> float:
    """The sign of base's median magnitude error in ``band``."""
    errors = [s.mag_error[band] for b in result.blends for s in b.base.injected]
    return float(np.sign(np.median([e for e in errors if e is not None])))


def bias(result: RunResult, band: int, shift: float) -> None:
    """Every head error in ``band`` moved by ``shift`` (error = truth - model)."""
    for blend in result.blends:
        for source in blend.head.injected:
            shift_source(source, band, -shift)


def scatter(result: RunResult, band: int, sigma: float, rng: np.random.Generator) -> None:
    for blend in result.blends:
        for source in blend.head.injected:
            shift_source(source, band, rng.normal(0, sigma))


def worse_blends(result: RunResult, fraction: float, amount: float, rng) -> None:
    """``fraction`` of the blends: every injected source ``amount`` further from its truth
    in every band."""
    chosen = rng.choice(len(result.blends), round(fraction * len(result.blends)), replace=False)
    for index in chosen:
        for source in result.blends[index].head.injected:
            for band, error in enumerate(source.mag_error):
                if error is not None:
                    shift_source(source, band, -amount * (1 if error >= 0 else -1))


def fixed_bias(result: RunResult, amount: float) -> None:
    """Base ``amount`` further from zero than head in every band (head: the fix)."""
    signs = [base_sign(result, band) or 1.0 for band in range(len(result.bands))]
    for blend in result.blends:
        for source in blend.base.injected:
            for band, sign in enumerate(signs):
                shift_source(source, band, -amount * sign)
        blend.base.model_hash = f"biased-{blend.base.model_hash}"


Scenario = Callable[[RunResult, np.random.Generator], None]


def trials(start: RunResult, scenario: Scenario, count: int, *, models: bool = True):
    """The comparisons of ``count`` trials of ``scenario`` on top of the perturbation."""
    for seed in range(count):
        rng = np.random.default_rng(seed)
        result = copy.deepcopy(start)
        for blend in result.blends:
            blend.head = copy.deepcopy(blend.base)
        jitter(result, rng, models=models)
        scenario(result, rng)
        yield compare(result, CompareConfig())


def report(name: str, comparisons: list, goal: str, names: tuple[str, ...] = ()) -> None:
    """One line of verdicts, then per metric in ``names`` its statuses and median MDE."""
    verdicts = Counter(c.verdict for c in comparisons)
    line = f"{name:58s} fail {verdicts['fail']:2d} neutral {verdicts['neutral']:2d}"
    line += f" pass {verdicts['pass']:2d} of {len(comparisons)}  (goal: {goal})"
    for metric in names:
        rows = [next(m for m in c.metrics if m.name == metric) for c in comparisons]
        statuses = Counter(m.status for m in rows)
        mdes = [m.mde for m in rows if m.mde is not None]
        line += f"\n{'':58s} {metric}: " + ", ".join(f"{k} {v}" for k, v in statuses.items())
        if mdes:
            line += f"; median MDE {np.median(mdes):.4f} mag"
    tallies = Counter(c.tally.status for c in comparisons)
    line += f"\n{'':58s} blend tally: " + ", ".join(f"{k} {v}" for k, v in tallies.items())
    inconclusive = Counter(
        (m.name, m.gating) for c in comparisons for m in c.metrics if m.status == "inconclusive"
    )
    if inconclusive:
        shown = ", ".join(
            f"{name} {count}{'' if gating else ' (reported only)'}"
            for (name, gating), count in sorted(inconclusive.items())
        )
        line += f"\n{'':58s} inconclusive: {shown}"
    print(line, flush=True)


def starting_point(args, work: Path) -> RunResult:
    if args.result:
        result = RunResult.read(args.result)
    else:
        if not MIRROR.exists():
            sys.exit(f"no --result and no scarlet v1 clone at {MIRROR} (set SCARLET1_REPO)")
        config = RunConfig(
            repo=str(args.repo or MIRROR),
            head=args.rev,
            base=args.rev,
            datasets=[HSC / args.set],
            out=work / "aa",
        )
        result = run(config)
        print(f"real A/A run of {args.rev} on HSC {args.set}: {result.comparison.verdict}")
    result.blends = [b for b in result.blends if b.dataset == args.set and b.base.status == "ok"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, help="a real run result to start from")
    parser.add_argument("--repo", help="scarlet v1 repository (default: the mirror)")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--set", default="set1")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--pair", type=Path, help="a real result to judge as it is")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = starting_point(args, Path(tmp))
    n = args.trials
    sources = sum(len(b.base.injected) for b in start.blends)
    sign = base_sign(start, R)
    print(
        f"start: {len(start.blends)} blends of HSC {args.set}, {sources} injected sources;"
        f" base's median r error has sign {sign:+.0f}"
    )

    def run_scenario(name, scenario, goal, names=(), models=True):
        report(name, list(trials(start, scenario, n, models=models)), goal, names)

    run_scenario("A/A, equivalent fits", lambda r, g: None, "0 fail, <= 2 neutral")
    run_scenario(
        "0.01 mag bias in r, away from base's error",
        lambda r, g: bias(r, R, 0.01 * sign),
        ">= 48 fail",
        ("mag_error_r",),
    )
    run_scenario(
        "0.01 mag bias in r, towards base's error",
        lambda r, g: bias(r, R, -0.01 * sign),
        "0 fail",
        ("mag_error_r",),
    )

    def scattered(r, g):
        bias(r, R, 0.01 * sign)
        scatter(r, R, 0.05, g)

    run_scenario(
        "0.01 mag bias in r away, 0.05 mag per-source scatter", scattered, "rate", ("mag_error_r",)
    )
    run_scenario(
        "5 % of blends 0.2 mag worse", lambda r, g: worse_blends(r, 0.05, 0.2, g), "50 fail"
    )
    run_scenario(
        "measurement only: r fluxes 2 % off, away from base's error",
        lambda r, g: bias(r, R, 2.5 * math.log10(1.02) * sign),
        "50 fail",
        ("mag_error_r",),
        models=False,
    )
    run_scenario(
        "measurement only: r fluxes 2 % off, towards base's error",
        lambda r, g: bias(r, R, -2.5 * math.log10(1.02) * sign),
        "0 pass",
        ("mag_error_r",),
        models=False,
    )
    run_scenario(
        "removing a real 0.03 mag bias in every band",
        lambda r, g: fixed_bias(r, 0.03),
        "0 fail, improved",
        tuple(f"mag_error_{band}" for band in start.bands),
    )
    if args.pair:
        pair = RunResult.read(args.pair)
        comparison = compare(pair, CompareConfig())
        tally = comparison.tally
        print(
            f"real pair {pair.provenance.head.sha[:7]} vs {pair.provenance.base.sha[:7]}:"
            f" {comparison.verdict} ({'; '.join(comparison.reasons)}); {tally.changed} of"
            f" {tally.blends} blends changed, {tally.worse} worse, {tally.better} better"
        )


if __name__ == "__main__":
    main()
