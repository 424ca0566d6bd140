"""The run result: the one contract between the runner and everything that reports it.

Plain dataclasses serialised to JSON (no numpy, so the bot can read it too). The JSON
Schema in ``runner/schema/run-result.schema.json`` documents every field; bump
``SCHEMA_VERSION`` on any incompatible change. Floats that are not finite are
written as ``null``. Bands are listed once in ``RunResult.bands``; every per-band
list follows that order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA = "scarlet-regression/run-result"
# 4: runner-measured times, sandboxed, trusted_ref; 5: the verdict on real history;
# 6: today's deblenders (tool failures, requirement conflicts, native measurements)
SCHEMA_VERSION = 6
SCHEMA_FILE = Path(__file__).parent / "schema" / "run-result.schema.json"


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None when it is missing or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class InjectedSource:
    """One injected source measured against its truth; ``snr``: per band, the S/N its
    true flux has against the blend's noise (empty where not measured: every band counts)."""

    index: int
    y: float
    x: float
    mag_true: list[float]
    mag: list[float | None]
    mag_error: list[float | None]
    centroid_offset: float | None
    snr: list[float | None] = field(default_factory=list)


@dataclass
class SourceModel:
    """What the deblender made of one detected source (a row of ``centers``)."""

    flux: list[float | None]
    centroid: list[float | None]


@dataclass
class BlendRun:
    """One revision's outcome on one blend; ``reused_from``: the run that measured it,
    when it was read from the store instead of deblended in this run (its timings then
    belong to that run's job and are not paired with the other side's). ``sources`` are
    measured by the runner from the deblender's source models; ``native`` is the
    deblender's own measurement of them, where it has one (not judged: a change of it
    alone is reported as a change of the revision's measurement code).

    Timings: ``wall_time`` and ``cpu_time`` are measured by the runner, never reported by
    the revision's code: the seconds between sending the request to the worker and its
    reply, and the CPU seconds (user and system) the kernel counted for the worker's
    processes meanwhile (``/proc/<pid>/stat`` before and after). ``init_time`` and
    ``fit_time`` are what the deblender itself reported (its code could claim anything).
    An errored run keeps the worker's ``traceback`` (its last frames), ``raised_in`` the
    function that raised it and ``raised_by`` whose code that is ("adapter", the tool's
    own code, or "deblender")."""

    status: Literal["ok", "errored"]
    error: str | None = None
    wall_time: float | None = None
    cpu_time: float | None = None
    traceback: str | None = None
    raised_in: str | None = None
    init_time: float | None = None
    fit_time: float | None = None
    iterations: int | None = None
    logL: float | None = None
    init_logL: float | None = None
    chi2_dof: float | None = None
    converged: bool | None = None
    model_hash: str | None = None
    arrays: str | None = None
    sources: list[SourceModel] = field(default_factory=list)
    injected: list[InjectedSource] = field(default_factory=list)
    reused_from: str | None = None
    native: list[SourceModel] = field(default_factory=list)
    raised_by: Literal["adapter", "deblender"] | None = None


@dataclass
class BlendResult:
    """A blend and both revisions' outcomes on it; ``pixels``: the pixels inside its
    footprint, summed over bands (the degrees of freedom of its χ²); ``ancestor``: the
    stored outcome of base's nearest good ancestor (``Provenance.ancestor``), if any."""

    dataset: str
    id: str
    sha256: str
    n_sources: int
    shape: list[int]
    base: BlendRun
    head: BlendRun
    pixels: int = 0
    ancestor: BlendRun | None = None

    @property
    def timed_in_run(self) -> bool:
        """Whether both sides deblended this blend without error in this run (neither
        read from the store): only such blends' timings are compared."""
        base, head = self.base, self.head
        return base.status == head.status == "ok" and not (base.reused_from or head.reused_from)


@dataclass
class Build:
    """How the revision's environment came about ("skipped": not built, as it cannot
    change a model, see ``Provenance.skipped``; "refused": the adapter cannot build this
    revision, ``error`` says why): ``reused`` from this machine's cache,
    ``fetched_from`` the store (built by another task or run), or built here;
    ``compiler_cache`` how its compiled code came about (hits and misses of the compiler
    cache, and whether this build could write it); ``installed`` the hash of the files
    installed for the deblender, version files and metadata aside; ``conflicts`` every
    requirement the revision declares that the locked environment does not meet (``uv pip
    check``), one line each."""

    status: Literal["ok", "failed", "skipped", "refused"]
    seconds: float | None = None
    reused: bool = False
    environment: str | None = None
    log_tail: str | None = None
    error: str | None = None
    fetched_from: str | None = None
    compiler_cache: str | None = None
    installed: str | None = None
    conflicts: list[str] = field(default_factory=list)


@dataclass
class RevisionInfo:
    """A revision under test and the software it ran with."""

    rev: str
    sha: str
    build: Build
    deblender_version: str | None = None
    numpy_version: str | None = None
    python_version: str | None = None
    packages: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """A blend set and the content hash that identifies it."""

    name: str
    path: str
    content_hash: str
    blends: int


@dataclass
class PackageChange:
    """A third-party package whose version differs between the lock and the newest
    environment (``None``: absent from that side)."""

    name: str
    locked: str | None
    newest: str | None


@dataclass
class Drift:
    """A drift run: base is the revision in the locked environment, head the same
    revision with the newest releases its requirements allow."""

    rev: str
    sha: str
    packages: list[PackageChange]


@dataclass
class Machine:
    """The kind of machine a run's timings and results come from: CPU model, a hash of
    its feature flags, and cores."""

    cpu: str
    features: str
    cores: int


@dataclass
class Skip:
    """Why head was not deblended: "no installed file changed" (decided from the git diff
    and base's installed files, before building head) or "identical build" (head's
    installed files hash as base's); ``changed``: the files changed between base and head."""

    reason: Literal["no installed file changed", "identical build"]
    changed: list[str]


@dataclass
class Reuse:
    """One side's outcomes read from the store instead of deblended again: ``key`` what they
    were stored under (environment, blend-set contents, options, machine), ``runs`` the
    runs that measured them, ``blends`` how many were reused; ``checked`` the blends
    deblended afresh to compare with the stored outcomes bit for bit, ``mismatched``
    those that differed (then nothing was reused and base was deblended in full)."""

    side: Literal["base", "head"]
    key: str
    runs: list[str]
    blends: int
    checked: list[str]
    mismatched: list[str]


@dataclass
class Ancestor:
    """What head is compared with where base does not build or errors on blends: base's
    nearest ancestor on the default branch whose stored outcomes are complete, ``distance``
    commits back; ``key`` the outcomes' key and ``runs`` the runs that measured them."""

    sha: str
    reason: str
    distance: int
    key: str
    runs: list[str]


@dataclass
class Provenance:
    """Where the numbers come from; ``drift`` is set on a drift run only; ``skipped`` when
    head was not deblended, ``reuse`` when base's outcomes came from the store.
    ``isolation``: how each kind of untrusted command ran (one line each); ``sandboxed``
    False when it ran unisolated (``--unsandboxed``); ``trusted_ref`` the protected branch
    whose own commits this run built (``--trusted-ref``: only such a run writes the shared
    compiler cache and stored outcomes), None for any other run. ``ancestor`` when head is
    also compared with base's nearest good ancestor; ``head_reuse`` when head's outcomes
    were read from the store."""

    repository: str
    adapter: str
    lock: str
    head: RevisionInfo
    base: RevisionInfo
    merge_base: str | None
    datasets: list[DatasetInfo]
    config: dict[str, Any]
    runner_version: str
    platform: str
    started: str
    finished: str
    drift: Drift | None = None
    isolation: dict[str, str] = field(default_factory=dict)
    machine: Machine | None = None
    skipped: Skip | None = None
    reuse: Reuse | None = None
    sandboxed: bool = True
    trusted_ref: str | None = None
    ancestor: Ancestor | None = None
    head_reuse: Reuse | None = None


Status = Literal["improved", "unchanged", "regressed", "changed", "inconclusive"]
Verdict = Literal["pass", "fail", "neutral"]


@dataclass
class MetricComparison:
    """Head against base on one metric, paired blend by blend or source by source.

    ``statistic`` is what is compared: the paired "median" (the median of the paired
    differences head - base; for timings and iterations the median head/base ratio), or
    a tail quantile such as "p90" (head's quantile minus base's, on the same pairs).
    ``delta`` is that change with its bootstrap confidence interval ``ci``; ``p`` its
    paired test (signed-rank, exact for small n; bootstrap for quantiles) and
    ``p_adjusted`` after the correction across metrics. ``change`` is how much worse head
    is in the metric's own direction (negative: better); for a metric whose goal is zero
    it is ``|b + delta| - |b|`` at base's median b, whose interval ``base_ci`` decides the
    direction. ``mde``: the smallest change the run could have detected (at ``alpha`` with
    the configured power); None where no change could be. ``unit``: "mag", "px",
    "per pixel", "s", "s per source", "ratio" (×) or "relative" (%), "count".
    ``base`` and ``head`` are each side's own median (or quantile), not paired.
    ``gating``: whether this metric's status can move the verdict (an inconclusive metric
    the run cannot resolve, or an unconfirmed timing, is only reported), ``note`` why
    not; ``retimed``: a timing's confirming re-timing, where one was made.
    """

    name: str
    label: str
    unit: str
    kind: Literal["science", "timing", "errors"]
    direction: Literal["lower", "zero"]
    statistic: str
    n: int
    base: float | None
    head: float | None
    delta: float | None
    ci: list[float | None]
    p: float | None
    p_adjusted: float | None
    change: float | None
    tolerance: float
    mde: float | None
    status: Status
    base_ci: list[float | None] = field(default_factory=lambda: [None, None])
    gating: bool = True
    note: str | None = None
    retimed: Retimed | None = None


@dataclass
class Retimed:
    """A timing regression timed again: ``pairs`` base and head CPU times alternated on
    one slot, their paired change ``delta`` (a factor) with its interval ``ci``;
    ``confirmed`` when that interval too lies wholly beyond the tolerance."""

    pairs: int
    delta: float | None
    ci: list[float | None]
    confirmed: bool


@dataclass
class BlendChange:
    """How one blend changed between base and head, judged against the per-blend
    tolerances: ``worse`` and ``better`` list the reasons (empty: within tolerance);
    ``chi2_dof`` is base's and head's χ² per pixel, ``mag_error_delta`` the largest growth
    of an injected source's |mag error| in any band where it is measured (negative: every
    one shrank); ``mixed`` when the blend is clearly worse in one respect and clearly
    better in another (both lists then hold reasons)."""

    dataset: str
    id: str
    identical: bool
    chi2_dof: list[float | None]
    mag_error_delta: float | None
    worse: list[str]
    better: list[str]
    score: float
    mixed: bool = False


@dataclass
class BlendTally:
    """Blend by blend: how many of the ``blends`` both deblended changed at all, and how
    many got worse or better beyond the per-blend tolerances (``mixed``: both at once,
    counted in neither). ``allowed`` worse blends pass; ``p`` is the exact binomial test
    of worse against better."""

    blends: int
    changed: int
    worse: int
    better: int
    allowed: int
    p: float | None
    status: Status
    mixed: int = 0


@dataclass
class Policy:
    """Where the settings the run was judged by come from: the "base" or "head" revision's
    ``.github/scarlet-regression.toml`` (or the defaults where it has none), a "file"
    given on the command line, or the "result" being compared again. ``differences``:
    what the other revision's file would change, one "key: judged → other" line each;
    ``note``: why the other revision's file could not be read, if so."""

    source: str
    sha: str | None = None
    differences: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class Failure:
    """What broke on one side, once per distinct error: the ``side``'s "build" (``summary``
    the error read off its log, ``detail`` the log's tail) or its "deblend" of ``blends``
    of ``of`` blends with the same error (``summary`` its type and where it was raised,
    ``detail`` the last frames of one traceback, ``examples`` the first blends)."""

    side: Literal["base", "head"]
    stage: Literal["build", "deblend"]
    summary: str
    detail: str
    blends: int = 0
    of: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """The failure in a line: "head does not build: SyntaxError: ..." or "head errors
        on 100 of 100 blends: ValueError in Box.contains"."""
        if self.stage == "build":
            return f"{self.side} does not build: {self.summary}"
        return f"{self.side} errors on {self.blends} of {self.of} blends: {self.summary}"


@dataclass
class AncestorComparison:
    """Head against base's nearest good ancestor (``Provenance.ancestor``)."""

    sha: str
    verdict: Verdict
    reasons: list[str]
    tally: BlendTally


@dataclass
class ToolFailure:
    """The adapter, not the revision, failed: an exception raised in the adapter's own
    code, the same failure on both sides on every blend, or a revision the adapter
    refuses to build. ``headline`` says so in a line ("the scarlet2 adapter cannot drive
    this revision: ..."); ``error`` and ``traceback`` (its last frames) are the first such
    failure's; ``sides`` where it happened, ``blends`` how many blends it hit."""

    adapter: str
    kind: Literal["adapter code", "same failure on both sides", "refused"]
    headline: str
    error: str
    traceback: str | None
    sides: list[str]
    blends: int


@dataclass
class NativeChange:
    """The deblender's own measurement (its ``measure`` functions) differs from base's on
    ``blends`` whose models and runner measurements are identical: a change of the
    revision's measurement code, reported, not judged. ``flux`` is the largest relative
    flux difference, ``centroid`` the largest centroid shift in pixels."""

    blends: list[str]
    flux: float | None
    centroid: float | None


@dataclass
class Comparison:
    """The verdict on head against base, metric by metric and blend by blend, and why.

    ``identical_models`` holds when base and head agree bit for bit on everything measured
    (models, fluxes, centroids, iterations, logL; timings aside) on every blend.
    ``excluded``: blends that errored on both sides and injected sources neither side
    measured ("set/id" or "set/id source k"), left out of the statistics.
    ``unconverged``: per side, the fits that stopped at their iteration cap.
    ``models_bit_identical``: every model bit-identical (hashes), whatever the measurements;
    ``measurement_change`` then says what moved ("r fluxes ×1.020 on all 105 sources").
    ``fixed``: blends that errored on base and deblend on head ("set/id");
    ``failures``: what broke on either side, once per distinct error; ``ancestor``: head
    against base's nearest good ancestor, where base is broken.
    ``tool_failure``: the adapter could not drive a revision (then the verdict is
    neutral); ``native``: the revision's own measurement changed where nothing judged did.
    """

    verdict: Verdict
    reasons: list[str]
    identical_models: bool
    metrics: list[MetricComparison]
    blends: list[BlendChange]
    tally: BlendTally
    excluded: list[str]
    unconverged: dict[str, int]
    policy: Policy
    config: dict[str, Any]
    models_bit_identical: bool = False
    measurement_change: str | None = None
    fixed: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ancestor: AncestorComparison | None = None
    tool_failure: ToolFailure | None = None
    native: NativeChange | None = None


@dataclass
class RetimedBlend:
    """A blend timed again to confirm a timing regression: base's and head's CPU seconds,
    alternated on one slot (``base[k]`` and ``head[k]`` one pair)."""

    dataset: str
    id: str
    n_sources: int
    base: list[float]
    head: list[float]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (from 0): every count-th blend of the sets in order."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as a shard; ValueError unless 0 <= I < N."""
        index, _, count = text.partition("/")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise ValueError(f"a shard is I/N with 0 <= I < N, got {text!r}")
        return shard


@dataclass
class RunResult:
    """Everything one run measured, for base and head, blend by blend; a shard's result
    holds only its blends and no comparison until the shards are merged. ``retiming``:
    blends timed again to confirm a timing regression."""

    provenance: Provenance
    bands: list[str]
    blends: list[BlendResult]
    comparison: Comparison | None = None
    shard: Shard | None = None
    retiming: list[RetimedBlend] = field(default_factory=list)
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """The result as compact JSON text."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), allow_nan=False)

    def write(self, path: Path) -> None:
        """Write the result to ``path`` atomically."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """Read a result; raise ValueError for another schema or version."""
        data = json.loads(text)
        if data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
            found = f"{data.get('schema')} v{data.get('schema_version')}"
            raise ValueError(f"not a {SCHEMA} v{SCHEMA_VERSION} document (found {found})")
        return plain_to(cls, data)

    @classmethod
    def read(cls, path: Path) -> RunResult:
        """Read a result file."""
        return cls.from_json(Path(path).read_text())


def plain_to(kind: Any, value: Any) -> Any:
    """Rebuild typed dataclasses from the plain values ``asdict`` produced."""
    if value is None:
        return None
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: plain_to(hints[k], v) for k, v in value.items() if k in names})
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        return [plain_to(item, v) for v in value]
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return plain_to(options[0], value) if len(options) == 1 else value
    return value
