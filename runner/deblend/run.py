"""One run: resolve head and base, build their environments, deblend every blend with
both, measure each against truth and write the run result."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

from runner.datasets import (
    BANDS,
    Blend,
    BlendError,
    BlendFile,
    Dataset,
    load_blend,
    open_datasets,
)
from runner.deblend import revisions
from runner.deblend.adapters import Adapter, detect_adapter, get_adapter
from runner.deblend.compilecache import CompilerCache, ref_folder
from runner.deblend.environments import (
    BuildError,
    BuildRefused,
    Environment,
    build_environment,
    environment_key,
    identity_key,
    refusal,
)
from runner.deblend.installed import (
    InstalledError,
    changed_files,
    installed_hash,
    reaching,
    record,
    site_packages,
)
from runner.deblend.machine import this_machine
from runner.deblend.measure import ARRAY_KEYS, MeasurementError, measure
from runner.deblend.outcomes import Outcomes, Stored, outcome_key, spot_sample
from runner.deblend.pool import Outcome, Side, Task, run_tasks
from runner.deblend.sandbox import Isolation, SandboxError, check_offline, isolation
from runner.deblend.shared import Wanted, open_sharing
from runner.judge.blends import measured
from runner.judge.compare import compare, needs_retiming
from runner.judge.metrics import metric_names
from runner.judge.policy import (
    CONFIG_PATH,
    CompareConfig,
    ConfigError,
    differences,
    parse_config,
    read_repository_config,
)
from runner.result import (
    Ancestor,
    BlendResult,
    BlendRun,
    Build,
    DatasetInfo,
    Policy,
    Provenance,
    RetimedBlend,
    Reuse,
    RevisionInfo,
    RunResult,
    Shard,
    Skip,
)
from runner.store import ArtifactStore, LocalStore, StoreError, open_store

SIDES = ("base", "head")
CLOUD_RUN_VARIABLE = "CLOUD_RUN_JOB"  # set in a Cloud Run job's tasks
DEFAULT_TIMEOUT = 600.0
DEFAULT_MEMORY_LIMIT = 6 * 2**30  # per worker: scarlet2 peaks near 3.5 GB on real blends
DEFAULT_TIMING_SAMPLE = 12
RETIME_BLENDS = 10  # blends timed again to confirm a timing regression ...
RETIME_REPEATS = 3  # ... each this many times per side, alternated
ANCESTOR_DEPTH = 50  # commits of base's history searched for a good stored run
BUILD_SPLIT = "environment and lock installed by the runner, with network; the revision's build: "


class RunError(RuntimeError):
    """The run could not happen at all (bad repository, revision or dataset)."""


@dataclass(frozen=True)
class Progress:
    """Where a run is: its phase and, while deblending, tasks done of total."""

    phase: str
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know. ``store``: where environments, measured outcomes
    and the compiler cache are shared between tasks and runs, the runner's own and never
    public (a ``--private-store`` spec; None: this machine's cache only). ``shortcuts``:
    skip work that cannot change the answer (a head that cannot change a model, outcomes
    of either side already measured); off, both sides are built and deblended in full
    (but nothing where head does not build). ``timing_sample``: blends deblended on both
    sides in this run when a side is reused (spot-checking the stored outcomes; the timing
    metrics rest on them). ``trusted_ref``: the protected branch whose own commits head
    and base are (a push or baseline run; checked): only such a run writes the shared
    compiler cache and stored outcomes. ``unsandboxed``: run the revisions' code
    unisolated where the sandbox cannot run (a developer's own machine; otherwise such a
    run is refused). ``base_sha``: the base branch's commit the pull request's event named
    (``base`` is then ``refs/heads/<name>``, checked to hold it)."""

    repo: str
    head: str
    base: str
    datasets: list[Path]
    out: Path
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    adapter: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    options: dict = field(default_factory=dict)
    cache: Path = field(default_factory=lambda: default_cache())
    shard: Shard | None = None
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT
    config_from: str = "base"
    store: str | None = None
    store_deadline: float | None = None
    shortcuts: bool = True
    timing_sample: int = DEFAULT_TIMING_SAMPLE
    trusted_ref: str | None = None
    unsandboxed: bool = False
    base_sha: str | None = None


def default_cache() -> Path:
    """``$SCARLET_REGRESSION_CACHE``, or ``~/.cache/scarlet-regression``."""
    root = os.environ.get("SCARLET_REGRESSION_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "scarlet-regression"


def load_compare_config(repo: Path, sha: str) -> CompareConfig:
    """The comparison settings the repository keeps at ``sha``, or the defaults."""
    text = read_repository_config(repo, sha)
    if text is None:
        return CompareConfig()
    try:
        return parse_config(text, metric_names(list(BANDS)))
    except ConfigError as error:
        raise ConfigError(f"{CONFIG_PATH} at {sha[:12]}: {error}") from None


def load_policy(repo: Path, revs: revisions.Revisions, side: str) -> tuple[CompareConfig, Policy]:
    """The settings to judge by, from the ``side`` ("base" or "head") revision's config
    (an invalid one is a ConfigError), and what the other revision's would change."""
    judged, other = (revs.base, revs.head) if side == "base" else (revs.head, revs.base)
    config = load_compare_config(repo, judged)
    policy = Policy(side, judged)
    if other != judged:
        try:
            policy.differences = differences(config, load_compare_config(repo, other))
        except ConfigError as error:
            policy.note = str(error)
    return config, policy


def now() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _environment(
    repo: Path,
    sha: str,
    adapter: Adapter,
    cache: Path,
    sandbox: Isolation,
    compiler_cache: CompilerCache | None,
) -> Environment | BuildError:
    """The environment of ``sha``, or why it did not build; it compiles through
    ``compiler_cache`` (None: without a cache)."""
    source = revisions.checkout(repo, sha, cache / "checkouts" / sha)
    refused = refusal(source, adapter)
    if refused is not None:
        return refused
    try:
        return build_environment(source, sha, adapter, cache, sandbox, compiler_cache)
    except BuildError as error:
        return error


def _revision_info(
    rev: str, sha: str, env: Environment | BuildError | None, installed: str | None
) -> RevisionInfo:
    if env is None:
        return RevisionInfo(rev, sha, Build("skipped"))
    if isinstance(env, BuildRefused):
        return RevisionInfo(rev, sha, Build("refused", error=str(env)))
    if isinstance(env, BuildError):
        build = Build("failed", error=str(env), log_tail=env.log_tail)
        return RevisionInfo(rev, sha, build)
    build = Build(
        "ok",
        env.build_seconds,
        env.reused,
        env.key,
        fetched_from=env.fetched_from,
        compiler_cache=env.compiler_cache,
        installed=installed,
        conflicts=list(env.conflicts),
    )
    return RevisionInfo(
        rev,
        sha,
        build,
        env.deblender_version,
        env.numpy_version,
        env.python_version,
        env.packages,
    )


def compilation_cache(cache: Path, adapter: Adapter) -> Path:
    """The persistent JAX compilation cache of the workers of every environment of
    ``adapter``'s lock (its jaxlib), this Python and this machine (XLA compiles for its
    CPU). Its entries are keyed by the compiled program (HLO), not by the revision, so what
    base compiled serves head wherever head computes the same: measured on HSC set1, a
    blend first deblended in the environment of scarlet2 e99243f hit every one of its 341
    entries in that of 7b93956 (the same code), 48 s of compilation down to 3. Only a
    trusted run's workers write it (``trusted_ref``, see ``Run._sides``); the others read it
    through the sandbox's read-only file system (JAX warns and goes on when it cannot
    write), so a pull request cannot poison the programs base loads."""
    identity = {
        "lock": adapter.lock_hash,
        "python": sys.version,
        "machine": dataclasses.asdict(this_machine()),
    }
    return cache / "jax" / identity_key(identity)


def deblender_variables(adapter: Adapter, compiled: Path, writes: bool = True) -> dict[str, str]:
    """Environment variables the adapter's workers need beyond the scrubbed basics;
    ``compiled`` is their compilation cache (``compilation_cache``), which they add to
    only if they ``writes`` (an untrusted side's read it: JAX writes no program that
    compiled in less than a billion seconds, and the sandbox keeps the folder read-only)."""
    if adapter.name != "scarlet2":
        return {}
    # One XLA thread per worker (the pool gives each core a worker) and a persistent
    # compilation cache kept across runs, so only new blend shapes compile.
    return {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "JAX_COMPILATION_CACHE_DIR": str(compiled),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0" if writes else "1e9",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


class Run:
    """The state of one run while its blends are being deblended and measured."""

    def __init__(self, config: RunConfig, progress: Callable[[Progress], None]):
        # Workers run elsewhere: every path they see must be absolute.
        self.config = dataclasses.replace(
            config,
            out=config.out.resolve(),
            datasets=[path.resolve() for path in config.datasets],
            cache=config.cache.resolve(),
        )
        self.progress = progress
        self.outcomes: dict[tuple[str, str, str], BlendRun] = {}
        self.done = 0
        self.total = 0
        self.isolation: dict[str, Isolation] = {}
        self.installed: dict[str, str] = {}
        self.skipped: Skip | None = None
        self.reuse: Reuse | None = None
        self.head_reuse: Reuse | None = None
        self.ancestor: Ancestor | None = None
        self.files: dict[tuple[str, str], BlendFile] = {}
        self.trusted: set[str] = set()  # sides whose workers may write the shared caches
        self.identity = ""  # names this run in the outcomes it stores

    def isolate(self) -> None:
        """Choose how the revisions' own builds and their workers run: behind the
        allow-list, without network; a RunError where that cannot be had (unless
        ``unsandboxed``). On Cloud Run, first prove from inside the sandbox that the
        metadata server and the internet are out of reach."""
        unsandboxed = self.config.unsandboxed
        try:
            if unsandboxed and os.environ.get(CLOUD_RUN_VARIABLE):
                raise SandboxError("--unsandboxed is refused on Cloud Run")
            way = isolation(network=False, unsandboxed=unsandboxed)
            if os.environ.get(CLOUD_RUN_VARIABLE):
                check_offline(way)
        except SandboxError as error:
            raise RunError(str(error)) from None
        self.isolation = {"build": way, "workers": way}

    def described_isolation(self) -> dict[str, str]:
        """``provenance.isolation``: how each kind of untrusted command ran."""
        return {
            name: (BUILD_SPLIT if name.endswith("build") else "") + way.describe()
            for name, way in self.isolation.items()
        }

    @functools.cached_property
    def store(self) -> ArtifactStore | None:
        """Where outcomes are shared: the run's store, or this machine's cache; None when
        it cannot be opened (then nothing is reused or kept: only time is lost)."""
        config = self.config
        if not config.store:
            return LocalStore(config.cache / "store")
        try:
            return open_store(config.store, deadline=config.store_deadline)
        except StoreError as error:
            _warn(f"the store cannot be opened, outcomes are neither reused nor kept: {error}")
            return None

    def execute(self) -> RunResult:
        """Do the run and return its result (also written to ``out/result.json``)."""
        config = self.config
        config.out.mkdir(parents=True, exist_ok=True)
        started = now()
        self.progress(Progress("resolving revisions"))
        try:
            repo = revisions.local_repository(config.repo, config.cache)
            revs = revisions.resolve_pair(repo, config.head, config.base, config.base_sha)
            self.identity = f"the run of {revs.head[:12]} against {revs.base[:12]} at {started}"
            datasets = open_datasets(config.datasets)
            head_tree = revisions.checkout(repo, revs.head, config.cache / "checkouts" / revs.head)
            adapter = get_adapter(config.adapter) if config.adapter else detect_adapter(head_tree)
            compare_config, policy = load_policy(repo, revs, config.config_from)
            if config.trusted_ref is not None:
                revisions.check_on_branch(repo, config.trusted_ref, [revs.head, revs.base])
            self.isolate()
            envs = self._environments(repo, revs, adapter)
        except (revisions.RevisionError, ValueError) as error:
            raise RunError(str(error)) from None
        if not any(isinstance(env, Environment) for env in envs.values()):
            raise RunError(f"neither revision builds: {envs['head']}")
        blends = self._deblend(datasets, envs, adapter, revs.head)
        if blends and self.store is not None:
            self._compare_with_ancestor(repo, revs.base, blends, adapter)
        settings = {
            "workers": config.workers,
            "timeout": config.timeout,
            "memory_limit": config.memory_limit,
            **config.options,
        }
        result = RunResult(
            provenance=Provenance(
                repository=config.repo,
                adapter=adapter.name,
                lock=adapter.lock_hash,
                head=_revision_info(
                    config.head, revs.head, envs["head"], self.installed.get("head")
                ),
                base=_revision_info(
                    config.base, revs.base, envs["base"], self.installed.get("base")
                ),
                merge_base=revs.merge_base,
                datasets=[
                    DatasetInfo(d.name, str(d.path), d.content_hash, len(d.blends))
                    for d in datasets
                ],
                config={
                    **settings,
                    "timing_sample": config.timing_sample,
                    "shortcuts": config.shortcuts,
                    "comparison": compare_config.as_dict(),
                    "policy": dataclasses.asdict(policy),
                },
                runner_version=version("scarlet-regression"),
                isolation=self.described_isolation(),
                platform=platform.platform(),
                started=started,
                finished=now(),
                machine=this_machine(),
                skipped=self.skipped,
                reuse=self.reuse,
                sandboxed=all(way.tool == "bwrap" for way in self.isolation.values()),
                trusted_ref=config.trusted_ref,
                head_reuse=self.head_reuse,
                ancestor=self.ancestor,
            ),
            bands=list(BANDS),
            blends=blends,
            shard=config.shard,
        )
        if config.shard is None:  # a shard's result is compared once the shards are merged
            self.progress(Progress("comparing"))
            result.comparison = compare(result, compare_config, policy)
            if needs_retiming(result.comparison):
                result.retiming = self._retime(result, envs, adapter, revs.head)
                result.comparison = compare(result, compare_config, policy)
        result.write(config.out / "result.json")
        self.progress(Progress("done", self.total, self.total))
        return result

    def _environments(
        self, repo: Path, revs: revisions.Revisions, adapter: Adapter
    ) -> dict[str, Environment | BuildError | None]:
        """Base's and head's environments, each from the lock: from this machine's cache,
        from the store (built once per run by one of its tasks) or built here; head's is
        not built (None) when no file that goes into the installed package changed. Both
        compile through the compiler cache of the run's trusted ref, or of the branch base
        was given as; only a trusted run (``trusted_ref``) writes it. ``--full``
        compiles without the cache, as every run did before."""
        sandbox, cache = self.isolation["build"], self.config.cache
        shortcuts = self.config.shortcuts
        sharing = open_sharing(
            self.config.store,
            self.config.store_deadline,
            adapter,
            cache,
            lambda phase: self.progress(Progress(phase)),
        )
        trusted = self.config.trusted_ref is not None
        ref = self.config.trusted_ref or (revs.base_rev if revs.merge_base is not None else None)

        if trusted:  # a trusted run's revisions are the protected branch's: both sides
            self.trusted.update(("base", "head"))

        def environment(side: str, sha: str) -> Environment | BuildError:
            tree = revisions.checkout(repo, sha, cache / "checkouts" / sha)
            refused = refusal(tree, adapter)
            if refused is not None:  # not the revision's failure: never shared as one
                return refused
            compiler = None
            if shortcuts and ref is not None:
                compiler = CompilerCache(cache / "ccache" / ref_folder(ref), trusted, ref)
            local = functools.partial(_environment, repo, sha, adapter, cache, sandbox, compiler)
            return sharing.environment(Wanted(side, sha, local, compiler))

        base = environment("base", revs.base)
        envs: dict[str, Environment | BuildError | None] = {"base": base, "head": None}
        installed = self._installed("base", base, adapter)
        skippable = shortcuts and revs.head != revs.base
        changed = changed_files(repo, revs.base, revs.head) if skippable else []
        if installed is not None and skippable and not reaching(changed, installed):
            self.skipped = Skip("no installed file changed", changed)
            return envs
        head = environment("head", revs.head)
        envs["head"] = head
        self._installed("head", head, adapter)
        same = "head" in self.installed and self.installed["head"] == self.installed.get("base")
        if skippable and same:
            self.skipped = Skip("identical build", changed)
        return envs

    def _installed(
        self, side: str, env: Environment | BuildError, adapter: Adapter
    ) -> list[str] | None:
        """The files ``env`` installed for the deblender (recording their hash as
        ``side``'s), None where that cannot be told."""
        if not isinstance(env, Environment):
            return None
        try:
            files = record(site_packages(env.path), adapter.module)
            self.installed[side] = installed_hash(env.path, adapter.module)
        except (InstalledError, OSError):
            return None
        return files

    def _outcomes(self, env: Environment | BuildError | None, adapter: Adapter) -> Outcomes | None:
        """Where an environment's outcomes are kept (None for one not kept: not built, or
        the drift run's newest, which is never the same twice)."""
        if not isinstance(env, Environment) or env.key.startswith("newest-") or self.store is None:
            return None
        key = outcome_key(env.key, self.config.options, this_machine(), adapter)
        return Outcomes(self.store, key)

    def _deblend(
        self,
        datasets: list[Dataset],
        envs: dict[str, Environment | BuildError | None],
        adapter: Adapter,
        seed: str,
    ) -> list[BlendResult]:
        """Deblend and measure every blend with both sides, but what need not be: a side's
        outcomes found in the store (spot-checked, whichever side measured them before),
        head's where it cannot change a model, nothing where head does not build."""
        config = self.config
        files = self._blend_files(datasets)
        loaded: dict[tuple[str, str], Blend | BlendError] = {}
        for blend_file in files:
            try:
                loaded[(blend_file.dataset, blend_file.id)] = load_blend(blend_file.path)
            except BlendError as error:
                loaded[(blend_file.dataset, blend_file.id)] = error
        good = [b for b in files if not isinstance(loaded[(b.dataset, b.id)], BlendError)]
        self.files = {(b.dataset, b.id): b for b in good}
        if isinstance(envs["head"], BuildError):  # the verdict is known: nothing to deblend
            return []
        kept = {side: self._outcomes(envs[side], adapter) for side in SIDES}
        stored: dict[str, dict[BlendFile, Stored]] = {side: {} for side in SIDES}
        if config.shortcuts or self.skipped:
            stored["base"] = self._stored(kept["base"], good)
        if self.skipped:
            if len(stored["base"]) < len(good):  # nothing to show but what cannot have changed
                return []
            for blend in good:
                run = self._place(blend, stored["base"][blend], "base")
                self.outcomes[(blend.dataset, blend.id, "head")] = run
            return [self._blend_result(b, loaded[(b.dataset, b.id)], envs) for b in files]
        if config.shortcuts:
            stored["head"] = self._stored(kept["head"], good)
        either = [b for b in good if b in stored["base"] or b in stored["head"]]
        checked = spot_sample(either, seed, config.timing_sample) if either else []
        fresh = {side: {b for b in good if b not in stored[side] or b in checked} for side in SIDES}
        sides = self._sides(envs, adapter)
        # Largest blends first, so that no slot is left with a long one at the end.
        order = sorted(good, key=lambda b: _cost(loaded[(b.dataset, b.id)]), reverse=True)
        self._run(_alternated(order, fresh, sides), sides, loaded)
        for side in SIDES:
            if stored[side] and kept[side] is not None:
                self._reuse(side, kept[side].key, stored[side], checked, order, sides, loaded)
        self._keep(good, envs, adapter)
        shutil.rmtree(config.out / "logs" / "scratch", ignore_errors=True)
        return [self._blend_result(b, loaded[(b.dataset, b.id)], envs) for b in files]

    def _stored(self, outcomes: Outcomes | None, good: list[BlendFile]) -> dict[BlendFile, Stored]:
        """The ``outcomes`` of ``good`` found in the store (none where it cannot be read)."""
        if outcomes is None:
            return {}
        self.progress(Progress("reading stored outcomes"))
        try:
            return outcomes.get_many(good)
        except StoreError as error:  # then the side is deblended: only time is lost
            _warn(f"stored outcomes cannot be read, they are deblended again: {error}")
            return {}

    def _reuse(
        self,
        side: str,
        key: str,
        stored: dict[BlendFile, Stored],
        checked: list[BlendFile],
        order: list[BlendFile],
        sides: dict[str, Side],
        loaded: dict[tuple[str, str], Blend | BlendError],
    ) -> None:
        """Use ``side``'s stored outcomes where the blends deblended afresh match them bit
        for bit; where one does not, deblend all of that side's blends again."""
        mismatched = [
            f"{b.dataset}/{b.id}"
            for b in checked
            if b in stored
            and measured(self.outcomes[(b.dataset, b.id, side)]) != measured(stored[b].run)
        ]
        reused = [b for b in stored if b not in checked]
        if mismatched:  # the stored outcomes cannot be trusted: deblend them all again
            self._run([(b, side) for b in order if b in reused], sides, loaded)
        else:
            for blend in reused:
                self._place(blend, stored[blend], side)
        runs = sorted({stored[b].measured_by for b in reused}) if not mismatched else []
        record = Reuse(
            side,  # type: ignore[arg-type]
            key,
            runs,
            0 if mismatched else len(reused),
            [f"{b.dataset}/{b.id}" for b in checked if b in stored],
            mismatched,
        )
        if side == "base":
            self.reuse = record
        else:
            self.head_reuse = record

    def _compare_with_ancestor(
        self, repo: Path, base: str, blends: list[BlendResult], adapter: Adapter
    ) -> None:
        """Where base does not build or errors on blends: find base's nearest ancestor on
        the default branch whose stored outcomes cover every such blend, and put those
        outcomes beside head's (``BlendResult.ancestor``, ``Provenance.ancestor``)."""
        needed = [
            b for b in blends if b.base.status == "errored" and (b.dataset, b.id) in self.files
        ]
        if not needed or self.store is None:
            return
        built = not any("revision did not build" in (b.base.error or "") for b in needed)
        reason = f"base errors on {len(needed)} blends" if built else "base does not build"
        files = [self.files[(b.dataset, b.id)] for b in needed]
        self.progress(Progress("looking for a good ancestor of base"))
        try:
            candidates = revisions.mainline_ancestors(repo, base, ANCESTOR_DEPTH)
        except revisions.RevisionError:
            return
        machine = this_machine()
        for distance, sha in enumerate(candidates, 1):
            key = outcome_key(environment_key(sha, adapter), self.config.options, machine, adapter)
            outcomes = Outcomes(self.store, key)
            try:
                if outcomes.get(files[0]) is None:
                    continue
                found = outcomes.get_many(files)
            except StoreError as error:
                _warn(f"stored outcomes of base's ancestors cannot be read: {error}")
                return
            if len(found) < len(files):
                continue
            for blend, blend_file in zip(needed, files, strict=True):
                blend.ancestor = dataclasses.replace(
                    found[blend_file].run, arrays=None, reused_from=found[blend_file].measured_by
                )
            runs = sorted({stored.measured_by for stored in found.values()})
            self.ancestor = Ancestor(sha, reason, distance, key, runs)
            return

    def _retime(
        self,
        result: RunResult,
        envs: dict[str, Environment | BuildError | None],
        adapter: Adapter,
        seed: str,
    ) -> list[RetimedBlend]:
        """Time a sample of the blends again, base and head alternated on one slot each
        blend, ``RETIME_REPEATS`` times: a timing regression stands only where this agrees."""
        self.progress(Progress("re-timing to confirm a timing regression"))
        timed = {(b.dataset, b.id): b for b in result.blends if b.timed_in_run}
        files = [f for key, f in self.files.items() if key in timed]
        chosen = spot_sample(files, f"retime:{seed}", RETIME_BLENDS)
        folder = self.config.out / "logs" / "retime"
        folder.mkdir(parents=True, exist_ok=True)
        tasks = [
            Task(side, b.path, folder / f"{b.dataset}.{b.id}.{side}.{k}.npz", self.config.options)
            for b in chosen
            for k in range(RETIME_REPEATS)
            for side in (SIDES if k % 2 == 0 else SIDES[::-1])
        ]
        times: dict[tuple[str, str], dict[str, list[float | None]]] = {}

        def on_outcome(outcome: Outcome) -> None:
            blend = next(b for b in chosen if b.path == outcome.task.blend)
            side_times = times.setdefault((blend.dataset, blend.id), {s: [] for s in SIDES})
            side_times[outcome.task.side].append(outcome.cpu if outcome.error is None else None)

        sides = self._sides(envs, adapter)
        run_tasks(tasks, sides, folder, self.config.workers, self.config.timeout, on_outcome)
        shutil.rmtree(folder, ignore_errors=True)
        retimed = []
        for (dataset, blend_id), found in times.items():
            pairs = [
                (b, h)
                for b, h in zip(found["base"], found["head"], strict=False)
                if b is not None and h is not None
            ]
            if pairs:
                n_sources = timed[(dataset, blend_id)].n_sources
                base, head = (list(values) for values in zip(*pairs, strict=True))
                retimed.append(RetimedBlend(dataset, blend_id, n_sources, base, head))
        return sorted(retimed, key=lambda r: (r.dataset, r.id))

    def _sides(
        self, envs: dict[str, Environment | BuildError | None], adapter: Adapter
    ) -> dict[str, Side]:
        """How to start workers for each side whose environment built. One trusted side
        writes the shared compilation cache (head where both are: a root runner hands the
        folder to the one sandbox user that writes it); the others read it."""
        config = self.config
        compiled = compilation_cache(config.cache, adapter)
        writer = next((s for s in ("head", "base") if s in self.trusted), None)
        sides: dict[str, Side] = {}
        for name, env in envs.items():
            if isinstance(env, Environment):
                writes = name == writer
                variables = deblender_variables(adapter, compiled, writes)
                if variables:
                    compiled.mkdir(parents=True, exist_ok=True)
                shared = (compiled,) if variables else ()
                sides[name] = Side(
                    name,
                    env.python,
                    adapter.worker_file,
                    variables,
                    config.memory_limit,
                    self.isolation["workers"],
                    writable=shared if writes else (),
                    readable=() if writes else shared,
                )
        return sides

    def _arrays(self, blend: BlendFile, side: str) -> Path:
        folder = self.config.out / "blends" / blend.dataset
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{blend.id}.{side}.npz"

    def _place(self, blend: BlendFile, stored: Stored, side: str) -> BlendRun:
        """Put a stored outcome in this run as ``side``'s, its arrays where a fresh one's go."""
        out = self._arrays(blend, side)
        out.write_bytes(stored.arrays)
        run = dataclasses.replace(
            stored.run,
            arrays=str(out.relative_to(self.config.out)),
            reused_from=stored.measured_by,
        )
        self.outcomes[(blend.dataset, blend.id, side)] = run
        return run

    def _run(
        self,
        plan: list[tuple[BlendFile, str]],
        sides: dict[str, Side],
        loaded: dict[tuple[str, str], Blend | BlendError],
    ) -> None:
        """Deblend and measure ``plan``'s (blend, side) pairs, in order: both sides of a
        blend next to each other run on the same slot (``pool.TaskQueue``), so that the
        same load meets both in their timings."""
        config = self.config
        workdir = config.out / "logs"
        workdir.mkdir(parents=True, exist_ok=True)
        tasks = [Task(side, b.path, self._arrays(b, side), config.options) for b, side in plan]
        by_path = {b.path: b for b, _ in plan}
        self.total += len(tasks)
        self.progress(Progress("deblending", self.done, self.total))

        def on_outcome(outcome: Outcome) -> None:
            blend_file = by_path[outcome.task.blend]
            blend = loaded[(blend_file.dataset, blend_file.id)]
            self.outcomes[(blend_file.dataset, blend_file.id, outcome.task.side)] = self._measure(
                blend, outcome
            )
            self.done += 1
            self.progress(Progress("deblending", self.done, self.total))

        if tasks:
            run_tasks(tasks, sides, workdir, config.workers, config.timeout, on_outcome)

    def _keep(
        self,
        good: list[BlendFile],
        envs: dict[str, Environment | BuildError | None],
        adapter: Adapter,
    ) -> None:
        """Store the outcomes deblended afresh without error, for later runs to reuse: by a
        trusted run only (``trusted_ref``), whose revisions are the protected branch's."""
        if self.config.trusted_ref is None:
            return
        self.progress(Progress("storing outcomes"))
        for side in SIDES:
            outcomes = self._outcomes(envs[side], adapter)
            fresh = [(b, self.outcomes.get((b.dataset, b.id, side))) for b in good]
            items = [
                (b, run, self.config.out / run.arrays)
                for b, run in fresh
                if run and run.status == "ok" and run.reused_from is None and run.arrays
            ]
            if outcomes is not None and items:
                try:
                    outcomes.put_many(items, self.identity)
                except StoreError as error:  # the run stands; later runs deblend these again
                    _warn(f"outcomes cannot be stored for later runs: {error}")

    def _blend_files(self, datasets: list[Dataset]) -> list[BlendFile]:
        """Every blend of the sets in order, or this run's shard of them."""
        files = [b for d in datasets for b in d.blends]
        shard = self.config.shard
        return files if shard is None else files[shard.index :: shard.count]

    def _measure(self, blend: Blend, outcome: Outcome) -> BlendRun:
        """One side's outcome on a blend, measured, its timings the runner's own."""
        times = {"wall_time": round(outcome.wall, 3), "cpu_time": outcome.cpu}
        if outcome.error is not None:
            reply = outcome.reply or {}
            trace, where = reply.get("traceback"), reply.get("raised_in")
            whose = reply.get("raised_by")
            return BlendRun(
                status="errored",
                error=outcome.error,
                traceback=trace if isinstance(trace, str) else None,
                raised_in=where if isinstance(where, str) else None,
                raised_by=whose if whose in ("adapter", "deblender") else None,
                **times,
            )
        relative = str(outcome.task.out.relative_to(self.config.out))
        try:
            with np.load(outcome.task.out, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in ARRAY_KEYS if key in archive.files}
            reply = outcome.reply or {}
            return measure(blend, arrays, reply, relative, outcome.wall, outcome.cpu)
        except (MeasurementError, OSError, ValueError, KeyError) as error:
            return BlendRun(status="errored", error=str(error), **times)

    def _blend_result(
        self,
        blend_file: BlendFile,
        blend: Blend | BlendError,
        envs: dict[str, Environment | BuildError | None],
    ) -> BlendResult:
        runs = {}
        for side in SIDES:
            key = (blend_file.dataset, blend_file.id, side)
            if isinstance(blend, BlendError):
                runs[side] = BlendRun("errored", f"bad blend file: {blend}")
            elif key in self.outcomes:
                runs[side] = self.outcomes[key]
            else:
                runs[side] = BlendRun("errored", f"{side} revision did not build: {envs[side]}")
        bad = isinstance(blend, BlendError)
        n_sources = 0 if bad else len(blend.centers)
        shape = [] if bad else list(blend.images.shape[1:])
        pixels = 0 if bad else int(np.broadcast_to(blend.inside, blend.images.shape).sum())
        return BlendResult(
            blend_file.dataset,
            blend_file.id,
            blend_file.sha256,
            n_sources,
            shape,
            runs["base"],
            runs["head"],
            pixels,
        )


def _warn(message: str) -> None:
    """One line on stderr."""
    print(f"warning: {message}".splitlines()[0], file=sys.stderr)


def _alternated(
    order: list[BlendFile], fresh: dict[str, set[BlendFile]], sides: dict[str, Side]
) -> list[tuple[BlendFile, str]]:
    """The (blend, side) pairs to deblend, both sides of a blend next to each other (so
    that they run on the same slot) and which goes first alternating from blend to blend
    (so that neither side always meets a warm or a cold cache)."""
    plan = []
    for index, blend in enumerate(order):
        pair = SIDES if index % 2 == 0 else SIDES[::-1]
        plan += [(blend, side) for side in pair if side in sides and blend in fresh[side]]
    return plan


def _cost(blend: Blend | BlendError) -> int:
    """Roughly how long a blend takes to deblend: its pixels times its sources."""
    return 0 if isinstance(blend, BlendError) else blend.images.size * len(blend.centers)


def run(config: RunConfig, progress: Callable[[Progress], None] = lambda p: None) -> RunResult:
    """Do one run (see Run)."""
    return Run(config, progress).execute()
