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
from runner.deblend.compilecache import CompilerCache
from runner.deblend.environments import (
    BuildError,
    BuildRefused,
    Environment,
    build_environment,
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
from runner.deblend.measure import MeasurementError, measure
from runner.deblend.outcomes import Outcomes, Stored, outcome_key, spot_sample
from runner.deblend.pool import Outcome, Side, Task, run_tasks
from runner.deblend.sandbox import Isolation, isolation
from runner.deblend.shared import Wanted, open_sharing
from runner.judge.blends import measured
from runner.judge.compare import compare
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
    BlendResult,
    BlendRun,
    Build,
    DatasetInfo,
    Policy,
    Provenance,
    Reuse,
    RevisionInfo,
    RunResult,
    Shard,
    Skip,
)
from runner.store import ArtifactStore, LocalStore, StoreError, open_store

SIDES = ("base", "head")
DEFAULT_TIMEOUT = 600.0
DEFAULT_MEMORY_LIMIT = 6 * 2**30  # per worker: scarlet2 peaks near 3.5 GB on real blends
DEFAULT_TIMING_SAMPLE = 12
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
    """Everything a run needs to know. ``store``: where environments and measured outcomes
    are shared between tasks and runs (a ``--store`` spec; None: this machine's cache
    only). ``shortcuts``: skip work that cannot change the answer (a head that cannot
    change a model, base outcomes already measured); off, both sides are built and
    deblended in full. ``timing_sample``: blends timed on both sides in this run when base
    is reused (the timing metrics rest on them)."""

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
    entries in that of 7b93956 (the same code), 48 s of compilation down to 3. Only trusted
    workers write it (base given as a branch, see ``Run._sides``); the others read it
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
        self.trusted: set[str] = set()  # sides whose workers may write the shared caches
        self.identity = ""  # names this run in the outcomes it stores

    def isolate(self, adapter: Adapter) -> None:
        """Choose how the revisions' own builds and their workers run: without network,
        secrets hidden from them, what they need of ours still in reach (read-only)."""
        way = isolation(os.environ, self.needed(adapter), network=False)
        self.isolation = {"build": way, "workers": way}

    def needed(self, adapter: Adapter) -> list[Path]:
        """What the revisions' builds and workers must still reach of ours."""
        config = self.config
        return [config.cache, config.out, *config.datasets, adapter.worker_file, adapter.lock]

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
            revs = revisions.resolve_pair(repo, config.head, config.base)
            self.identity = f"the run of {revs.head[:12]} against {revs.base[:12]} at {started}"
            datasets = open_datasets(config.datasets)
            head_tree = revisions.checkout(repo, revs.head, config.cache / "checkouts" / revs.head)
            adapter = get_adapter(config.adapter) if config.adapter else detect_adapter(head_tree)
            compare_config, policy = load_policy(repo, revs, config.config_from)
            self.isolate(adapter)
            envs = self._environments(repo, revs, adapter)
        except (revisions.RevisionError, ValueError) as error:
            raise RunError(str(error)) from None
        if not any(isinstance(env, Environment) for env in envs.values()):
            raise RunError(f"neither revision builds: {envs['head']}")
        blends = self._deblend(datasets, envs, adapter, revs.head)
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
            ),
            bands=list(BANDS),
            blends=blends,
            shard=config.shard,
        )
        if config.shard is None:  # a shard's result is compared once the shards are merged
            self.progress(Progress("comparing"))
            result.comparison = compare(result, compare_config, policy)
        result.write(config.out / "result.json")
        self.progress(Progress("done", self.total, self.total))
        return result

    def _environments(
        self, repo: Path, revs: revisions.Revisions, adapter: Adapter
    ) -> dict[str, Environment | BuildError | None]:
        """Base's and head's environments, each from the lock: from this machine's cache,
        from the store (built once per run by one of its tasks) or built here; head's is
        not built (None) when no file that goes into the installed package changed. Base
        given as a branch is trusted to write the compiler cache (and, with a store, to
        share it): its merge-base with head is on a branch of the repository; head never
        is. ``--full`` compiles without the cache, as every run did before."""
        sandbox, cache = self.isolation["build"], self.config.cache
        shortcuts = self.config.shortcuts
        sharing = open_sharing(
            self.config.store,
            self.config.store_deadline,
            adapter,
            cache,
            lambda phase: self.progress(Progress(phase)),
        )

        def environment(side: str, sha: str, trusted: bool) -> Environment | BuildError:
            tree = revisions.checkout(repo, sha, cache / "checkouts" / sha)
            refused = refusal(tree, adapter)
            if refused is not None:  # not the revision's failure: never shared as one
                return refused
            compiler = CompilerCache(cache / "ccache", writable=trusted) if shortcuts else None
            local = functools.partial(_environment, repo, sha, adapter, cache, sandbox, compiler)
            return sharing.environment(Wanted(side, sha, local, compiler))

        if revs.merge_base is not None:
            self.trusted.add("base")
        base = environment("base", revs.base, trusted="base" in self.trusted)
        envs: dict[str, Environment | BuildError | None] = {"base": base, "head": None}
        installed = self._installed("base", base, adapter)
        skippable = shortcuts and revs.head != revs.base
        changed = changed_files(repo, revs.base, revs.head) if skippable else []
        if installed is not None and skippable and not reaching(changed, installed):
            self.skipped = Skip("no installed file changed", changed)
            return envs
        head = environment("head", revs.head, trusted=False)
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
        """Deblend and measure every blend with both sides, but what need not be: base's
        outcomes found in the store (spot-checked), head's where it cannot change a model."""
        config = self.config
        files = self._blend_files(datasets)
        loaded: dict[tuple[str, str], Blend | BlendError] = {}
        for blend_file in files:
            try:
                loaded[(blend_file.dataset, blend_file.id)] = load_blend(blend_file.path)
            except BlendError as error:
                loaded[(blend_file.dataset, blend_file.id)] = error
        good = [b for b in files if not isinstance(loaded[(b.dataset, b.id)], BlendError)]
        base_outcomes = self._outcomes(envs["base"], adapter)
        stored: dict[BlendFile, Stored] = {}
        if base_outcomes is not None and (config.shortcuts or self.skipped):
            self.progress(Progress("reading stored outcomes"))
            try:
                stored = base_outcomes.get_many(good)
            except StoreError as error:  # then base is deblended: only time is lost
                _warn(f"stored outcomes cannot be read, base is deblended: {error}")
        if self.skipped:
            if len(stored) < len(good):  # nothing to show but what cannot have changed
                return []
            for blend in good:
                run = self._place(blend, stored[blend], "base")
                self.outcomes[(blend.dataset, blend.id, "head")] = run
            return [self._blend_result(b, loaded[(b.dataset, b.id)], envs) for b in files]
        checked = spot_sample(list(stored), seed, config.timing_sample) if stored else []
        fresh = {b for b in good if b not in stored or b in checked}
        sides = self._sides(envs, adapter)
        # Largest blends first, so that no slot is left with a long one at the end.
        order = sorted(good, key=lambda b: _cost(loaded[(b.dataset, b.id)]), reverse=True)
        plan = [(b, side) for b in order for side in SIDES if side in sides]
        self._run([(b, side) for b, side in plan if side == "head" or b in fresh], sides, loaded)
        mismatched = [
            f"{b.dataset}/{b.id}"
            for b in checked
            if measured(self.outcomes[(b.dataset, b.id, "base")]) != measured(stored[b].run)
        ]
        if stored:
            reused = [b for b in stored if b not in fresh]
            if mismatched:  # the stored outcomes cannot be trusted: deblend them all again
                self._run([(b, "base") for b in order if b in reused], sides, loaded)
            else:
                for blend in reused:
                    self._place(blend, stored[blend], "base")
            runs = sorted({stored[b].measured_by for b in reused}) if not mismatched else []
            self.reuse = Reuse(
                "base",
                base_outcomes.key,
                runs,
                0 if mismatched else len(reused),
                [f"{b.dataset}/{b.id}" for b in checked],
                mismatched,
            )
        self._keep(good, envs, adapter)
        shutil.rmtree(config.out / "logs" / "scratch", ignore_errors=True)
        return [self._blend_result(b, loaded[(b.dataset, b.id)], envs) for b in files]

    def _sides(
        self, envs: dict[str, Environment | BuildError | None], adapter: Adapter
    ) -> dict[str, Side]:
        """How to start workers for each side whose environment built: a trusted side's
        may write the shared compilation cache, the others only read it."""
        config = self.config
        compiled = compilation_cache(config.cache, adapter)
        sides: dict[str, Side] = {}
        for name, env in envs.items():
            if isinstance(env, Environment):
                writes = name in self.trusted
                variables = deblender_variables(adapter, compiled, writes)
                if variables:
                    compiled.mkdir(parents=True, exist_ok=True)
                sides[name] = Side(
                    name,
                    env.python,
                    adapter.worker_file,
                    variables,
                    config.memory_limit,
                    self.isolation["workers"],
                    (compiled,) if variables and writes else (),
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
        """Deblend and measure ``plan``'s (blend, side) pairs, in order (so base and head
        of a blend interleave and machine drift cancels in their timings)."""
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
        """Store the outcomes deblended afresh without error, for later runs to reuse."""
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
        if outcome.error is not None:
            reply = outcome.reply or {}
            return BlendRun(
                status="errored",
                error=outcome.error,
                wall_time=outcome.wall,
                traceback=reply.get("traceback"),
                raised_in=reply.get("raised_in"),
            )
        relative = str(outcome.task.out.relative_to(self.config.out))
        try:
            with np.load(outcome.task.out, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            return measure(blend, arrays, outcome.reply or {}, relative)
        except (MeasurementError, OSError, ValueError, KeyError) as error:
            return BlendRun(status="errored", error=str(error), wall_time=outcome.wall)

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


def _cost(blend: Blend | BlendError) -> int:
    """Roughly how long a blend takes to deblend: its pixels times its sources."""
    return 0 if isinstance(blend, BlendError) else blend.images.size * len(blend.centers)


def run(config: RunConfig, progress: Callable[[Progress], None] = lambda p: None) -> RunResult:
    """Do one run (see Run)."""
    return Run(config, progress).execute()
