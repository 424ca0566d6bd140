"""One run: resolve head and base, build their environments, deblend every blend with
both, measure each against truth and write the run result."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
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
from runner.deblend.environments import BuildError, Environment, build_environment
from runner.deblend.measure import MeasurementError, measure
from runner.deblend.pool import Outcome, Side, Task, run_tasks
from runner.deblend.sandbox import Isolation, isolation
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
    RevisionInfo,
    RunResult,
    Shard,
)

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
    repo: Path, sha: str, adapter: Adapter, cache: Path, sandbox: Isolation, trusted: bool = False
) -> Environment | BuildError:
    """The environment of ``sha``, or why it did not build; only a ``trusted`` revision's
    build writes the compiler cache (every build reads it)."""
    source = revisions.checkout(repo, sha, cache / "checkouts" / sha)
    compiler_cache = CompilerCache(cache / "ccache", writable=trusted)
    try:
        return build_environment(source, sha, adapter, cache, sandbox, compiler_cache)
    except BuildError as error:
        return error


def _revision_info(rev: str, sha: str, env: Environment | BuildError) -> RevisionInfo:
    if isinstance(env, BuildError):
        build = Build("failed", error=str(env), log_tail=env.log_tail)
        return RevisionInfo(rev, sha, build)
    build = Build("ok", env.build_seconds, env.reused, env.key, compiler_cache=env.compiler_cache)
    return RevisionInfo(
        rev,
        sha,
        build,
        env.deblender_version,
        env.numpy_version,
        env.python_version,
        env.packages,
    )


def compilation_cache(cache: Path, env: Environment) -> Path:
    """The persistent JAX compilation cache of ``env``'s workers: one per environment, so
    a revision's workers write only their own (and cannot poison base's). Nothing is lost:
    no entry one environment wrote serves another (two scarlet2 environments' caches
    held 539 entries each, none in common)."""
    return cache / "jax" / env.key


def deblender_variables(adapter: Adapter, compiled: Path) -> dict[str, str]:
    """Environment variables the adapter's workers need beyond the scrubbed basics;
    ``compiled`` is their compilation cache (``compilation_cache``)."""
    if adapter.name != "scarlet2":
        return {}
    # One XLA thread per worker (the pool gives each core a worker) and a persistent
    # compilation cache kept across runs, so only new blend shapes compile.
    return {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "JAX_COMPILATION_CACHE_DIR": str(compiled),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
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

    def execute(self) -> RunResult:
        """Do the run and return its result (also written to ``out/result.json``)."""
        config = self.config
        config.out.mkdir(parents=True, exist_ok=True)
        started = now()
        self.progress(Progress("resolving revisions"))
        try:
            repo = revisions.local_repository(config.repo, config.cache)
            revs = revisions.resolve_pair(repo, config.head, config.base)
            datasets = open_datasets(config.datasets)
            head_tree = revisions.checkout(repo, revs.head, config.cache / "checkouts" / revs.head)
            adapter = get_adapter(config.adapter) if config.adapter else detect_adapter(head_tree)
            compare_config, policy = load_policy(repo, revs, config.config_from)
            self.isolate(adapter)
            envs = self._environments(repo, revs, adapter)
        except (revisions.RevisionError, ValueError) as error:
            raise RunError(str(error)) from None
        if all(isinstance(env, BuildError) for env in envs.values()):
            raise RunError(f"neither revision builds: {envs['head']}")
        blends = self._deblend(datasets, envs, adapter)
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
                head=_revision_info(config.head, revs.head, envs["head"]),
                base=_revision_info(config.base, revs.base, envs["base"]),
                merge_base=revs.merge_base,
                datasets=[
                    DatasetInfo(d.name, str(d.path), d.content_hash, len(d.blends))
                    for d in datasets
                ],
                config={
                    **settings,
                    "comparison": compare_config.as_dict(),
                    "policy": dataclasses.asdict(policy),
                },
                runner_version=version("scarlet-regression"),
                isolation=self.described_isolation(),
                platform=platform.platform(),
                started=started,
                finished=now(),
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
    ) -> dict[str, Environment | BuildError]:
        """Base's and head's environments, each from the lock (cached). Base given as a
        branch is trusted to write the compiler cache: its merge-base with head is on a
        branch of the repository; head never is."""
        envs: dict[str, Environment | BuildError] = {}
        sandbox = self.isolation["build"]
        for side, sha in (("base", revs.base), ("head", revs.head)):
            self.progress(Progress(f"building {side} environment"))
            trusted = side == "base" and revs.merge_base is not None
            envs[side] = _environment(repo, sha, adapter, self.config.cache, sandbox, trusted)
        return envs

    def _deblend(
        self,
        datasets: list[Dataset],
        envs: dict[str, Environment | BuildError],
        adapter: Adapter,
    ) -> list[BlendResult]:
        config = self.config
        workdir = config.out / "logs"
        workdir.mkdir(parents=True, exist_ok=True)
        sides: dict[str, Side] = {}
        for name, env in envs.items():
            if isinstance(env, Environment):
                compiled = compilation_cache(config.cache, env)
                compiled.mkdir(parents=True, exist_ok=True)
                sides[name] = Side(
                    name,
                    env.python,
                    adapter.worker_file,
                    deblender_variables(adapter, compiled),
                    config.memory_limit,
                    self.isolation["workers"],
                    (compiled,),
                )
        loaded: dict[tuple[str, str], Blend | BlendError] = {}
        tasks = []
        for blend_file in self._blend_files(datasets):
            key = (blend_file.dataset, blend_file.id)
            try:
                loaded[key] = load_blend(blend_file.path)
            except BlendError as error:
                loaded[key] = error
                continue
            folder = config.out / "blends" / blend_file.dataset
            folder.mkdir(parents=True, exist_ok=True)
            for side in SIDES:
                if side in sides:
                    out = folder / f"{blend_file.id}.{side}.npz"
                    tasks.append(Task(side, blend_file.path, out, config.options))
        self.total = len(tasks)
        self.progress(Progress("deblending", 0, self.total))
        by_path = {b.path: b for d in datasets for b in d.blends}

        def on_outcome(outcome: Outcome) -> None:
            blend_file = by_path[outcome.task.blend]
            blend = loaded[(blend_file.dataset, blend_file.id)]
            self.outcomes[(blend_file.dataset, blend_file.id, outcome.task.side)] = self._measure(
                blend, outcome
            )
            self.done += 1
            self.progress(Progress("deblending", self.done, self.total))

        run_tasks(tasks, sides, workdir, config.workers, config.timeout, on_outcome)
        shutil.rmtree(workdir / "scratch", ignore_errors=True)
        return [
            self._blend_result(b, loaded[(b.dataset, b.id)], envs)
            for b in self._blend_files(datasets)
        ]

    def _blend_files(self, datasets: list[Dataset]) -> list[BlendFile]:
        """Every blend of the sets in order, or this run's shard of them."""
        files = [b for d in datasets for b in d.blends]
        shard = self.config.shard
        return files if shard is None else files[shard.index :: shard.count]

    def _measure(self, blend: Blend, outcome: Outcome) -> BlendRun:
        if outcome.error is not None:
            return BlendRun(status="errored", error=outcome.error, wall_time=outcome.wall)
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
        envs: dict[str, Environment | BuildError],
    ) -> BlendResult:
        runs = {}
        for side in SIDES:
            if isinstance(blend, BlendError):
                runs[side] = BlendRun("errored", f"bad blend file: {blend}")
            elif isinstance(envs[side], BuildError):
                runs[side] = BlendRun("errored", f"{side} revision did not build: {envs[side]}")
            else:
                runs[side] = self.outcomes[(blend_file.dataset, blend_file.id, side)]
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


def run(config: RunConfig, progress: Callable[[Progress], None] = lambda p: None) -> RunResult:
    """Do one run (see Run)."""
    return Run(config, progress).execute()
