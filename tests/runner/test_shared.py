"""Environments built once per run and fetched by its other tasks through the store."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.deblend.compilecache import CompilerCache
from runner.deblend.environments import (
    COMPLETE_MARKER,
    BuildError,
    Environment,
    environment_key,
    environment_path,
)
from runner.deblend.shared import (
    CODECS,
    PATH_HEADER,
    RUN_VARIABLE,
    ArchiveError,
    Place,
    Sharing,
    Timing,
    Wanted,
    pack,
)
from runner.result import RunResult
from runner.store import GCSStore, LocalStore, StoreError
from support import fast_retry, tiny_adapter, tiny_repository

TINY_RUNNER = Path(__file__).parents[1] / "support" / "tiny_runner.py"
FAST = Timing(lease=2.0, poll=0.05, wait=60, failure=60)
SIDES = ("base", "head")


@pytest.fixture
def pair(tmp_path) -> tuple[Path, str, str]:
    """The tiny repository with a base and a head commit."""
    repo, base = tiny_repository(tmp_path / "repo")
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.1'\n")
    return repo, base, commit(repo, "1.1")


def own_tmp(cache: Path, common: Path) -> list[str]:
    """A command prefix giving a process a mount namespace where its own ``cache`` is at
    ``common``, as every Cloud Run task has a /tmp of its own at the same path."""
    prefix = ["bwrap", "--dev-bind", "/", "/", "--bind", str(cache), str(common)]
    if shutil.which("bwrap") is None or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("bwrap cannot give each task a cache of its own at one path")
    return prefix


def run_shards(pair, dataset: Path, tmp_path: Path, store: str, env: dict, count: int = 4):
    """``count`` shards of one run as concurrent processes, each with a cache of its own
    (a Cloud Run task's own /tmp) at one path, and one store; their results."""
    repo, base, head = pair
    common = tmp_path / "cache"
    common.mkdir()
    processes = []
    for index in range(count):
        own = tmp_path / f"cache-{index}"
        own.mkdir()
        argv = [*own_tmp(own, common), sys.executable, str(TINY_RUNNER), "run",
                "--repo", str(repo), "--head", head, "--base", base, "--dataset", str(dataset),
                "--out", str(tmp_path / f"out-{index}"), "--cache", str(common), "--workers", "1",
                "--shard", f"{index}/{count}", "--store", store, "--repository", "octo/scarlet",
                "--pr", "4"]  # fmt: skip
        log = (tmp_path / f"shard-{index}.log").open("wb")
        processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    for index, process in enumerate(processes):
        assert process.wait(timeout=600) == 0, (tmp_path / f"shard-{index}.log").read_text()
    return [RunResult.read(tmp_path / f"out-{i}" / "result.json") for i in range(count)]


def assert_built_once(results: list[RunResult]) -> None:
    for side in SIDES:
        builds = [getattr(r.provenance, side).build for r in results]
        assert all(b.status == "ok" for b in builds)
        assert len({b.environment for b in builds}) == 1
        built = [b for b in builds if b.fetched_from is None and not b.reused]
        assert len(built) == 1, f"{side} built {len(built)} times"
        fetched = [b.fetched_from for b in builds if b is not built[0]]
        assert len(set(fetched)) == 1 and fetched[0].endswith((".tar.zst", ".tar.gz"))
        assert built[0].environment in fetched[0]
    blends = [b for r in results for b in r.blends]
    assert blends and all(b.base.status == b.head.status == "ok" for b in blends)


def merged(pair, store: str, tmp_path: Path, count: int = 4) -> RunResult:
    argv = ["merge", "--out", str(tmp_path / "merged"), "--sha", pair[2], "--shards", str(count),
            "--store", store, "--repository", "octo/scarlet", "--pr", "4"]  # fmt: skip
    assert main(argv) == 0
    return RunResult.read(tmp_path / "merged" / "result.json")


def test_four_shards_build_each_environment_once(pair, synthetic_set, tmp_path):
    store = tmp_path / "store"
    results = run_shards(pair, synthetic_set, tmp_path, str(store), dict(os.environ))
    assert_built_once(results)
    archives = LocalStore(store).list("environments/")
    assert len(archives) == 2 and all(".tar." in key for key in archives), "no lease left"
    fetched = {getattr(r.provenance, side).build.fetched_from for r in results for side in SIDES}
    assert fetched - {None} <= {LocalStore(store).url(key) for key in archives}
    assert len(merged(pair, str(store), tmp_path).blends) == 6


def test_four_shards_on_gcs_build_each_environment_once(
    pair, synthetic_set, tmp_path, gcs_emulator, gcs_bucket, monkeypatch
):
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    store = f"gs://{gcs_bucket.name}/artifacts"
    results = run_shards(pair, synthetic_set, tmp_path, store, env)
    assert_built_once(results)
    names = [b.name for b in gcs_bucket.list_blobs(prefix="artifacts/environments/")]
    assert len(names) == 2 and all(".tar." in name for name in names)
    fetched = {getattr(r.provenance, side).build.fetched_from for r in results for side in SIDES}
    assert all(f.startswith(f"{store}/environments/") for f in fetched - {None})
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    assert len(merged(pair, store, tmp_path).blends) == 6


def test_an_environment_at_another_cache_path_is_built_there(
    pair, synthetic_set, tmp_path, monkeypatch
):
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo, base, head = pair
    store = tmp_path / "store"
    builds = []
    for index, cache in enumerate(["a", "a", "b"]):
        shutil.rmtree(tmp_path / cache, ignore_errors=True)  # a fresh machine
        out = tmp_path / f"out-{index}"
        argv = ["run", "--repo", str(repo), "--head", head, "--base", base, "--adapter", "tiny",
                "--dataset", str(synthetic_set), "--out", str(out), "--workers", "1",
                "--cache", str(tmp_path / cache), "--store", str(store),
                "--repository", "octo/scarlet"]  # fmt: skip
        assert main(argv) == 0
        builds.append(RunResult.read(out / "result.json").provenance.head.build)
    assert (builds[0].fetched_from, builds[0].reused) == (None, False)
    assert builds[1].fetched_from is not None, "the same path: fetched"
    assert (builds[2].fetched_from, builds[2].reused) == (None, False), "another path: built"
    assert len(LocalStore(store).list(f"environments/{builds[0].environment}/")) == 2


# The sharing itself, with builds that only make what the sharing looks at.


class Builds:
    """``local`` callables that count the builds they make in one cache."""

    def __init__(self, cache: Path, adapter, seconds=0.0, fail=False, extra=lambda env: None):
        self.cache, self.adapter, self.seconds, self.fail = cache, adapter, seconds, fail
        self.extra = extra
        self.count = 0

    def __call__(self, sha: str) -> Environment | BuildError:
        key = environment_key(sha, self.adapter)
        env = environment_path(self.cache, key)
        reused = (env / COMPLETE_MARKER).is_file()
        if not reused:
            self.count += 1
            time.sleep(self.seconds)
            if self.fail:
                return BuildError("'uv pip install' exited 1", "tail of the log", env / "log")
            (env / "bin").mkdir(parents=True)
            (env / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
            (env / "bin" / "python3").symlink_to("python")
            (env / "lib64").symlink_to("lib")
            (env / "lib").mkdir()
            (env / "lib" / "module.py").write_text("x = 1\n")
            (env / COMPLETE_MARKER).write_text("{}")
            self.extra(env)
        return Environment(
            key, env, env / "bin/python", sha, "tiny", "1", "2", "3", "", {}, 1.0, reused
        )


def want(builds: Builds, side: str = "head", sha: str = "a" * 40) -> Wanted:
    return Wanted(side, sha, lambda: builds(sha))


def sharing(store, builds: Builds, timing: Timing = FAST, codec=CODECS[0]) -> Sharing:
    return Sharing(store, builds.adapter, builds.cache, lambda phase: None, timing, codec)


def in_threads(*calls):
    results = [None] * len(calls)

    def call(index):
        results[index] = calls[index]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.fixture
def adapter(tmp_path):
    return tiny_adapter(tmp_path)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.suffix)
def test_a_task_fetches_the_whole_environment_another_built(tmp_path, store, adapter, codec):
    cache = tmp_path / "cache"
    first = Builds(cache, adapter)
    assert sharing(store, first, codec=codec).environments([want(first)])["head"].reused is False
    shutil.rmtree(cache)  # another task, on a machine of its own
    second = Builds(cache, adapter)
    env = sharing(store, second, codec=codec).environments([want(second)])["head"]
    assert (first.count, second.count) == (1, 0)
    (archive,) = store.list("environments/")
    assert archive.endswith(codec.suffix) and env.fetched_from.endswith(archive)
    assert env.reused is False
    assert (env.path / "lib" / "module.py").read_text() == "x = 1\n"
    assert os.readlink(env.path / "bin" / "python") == os.path.realpath(sys.executable)
    assert os.readlink(env.path / "lib64") == "lib"
    assert sorted(p.name for p in cache.joinpath("envs").iterdir()) == [env.key, f"{env.key}.lock"]


def test_base_and_head_are_built_side_by_side(tmp_path, adapter):
    store = LocalStore(tmp_path / "store")
    builds = [Builds(tmp_path / "cache", adapter, seconds=1.0) for _ in range(2)]
    in_threads(
        *[
            lambda b=b: sharing(store, b).environments([want(b, "base", "b" * 40), want(b)])
            for b in builds
        ]
    )
    assert [b.count for b in builds] == [1, 1], "each task built one side, at the same time"


def test_a_stale_lease_is_taken_over(tmp_path, adapter):
    store = LocalStore(tmp_path / "store")
    builds = Builds(tmp_path / "cache", adapter)
    key = environment_key("a" * 40, adapter)
    place = Place.of(key, environment_path(builds.cache, key))
    dead = {"holder": "a task that died", "expires": time.time() + 0.5}
    store.put(place.lease, json.dumps(dead).encode(), "application/json")
    started = time.monotonic()
    env = sharing(store, builds).environments([want(builds)])["head"]
    assert time.monotonic() - started >= 0.4, "waited for the lease to expire"
    assert builds.count == 1 and env.fetched_from is None
    assert not store.exists(place.lease), "released"


def test_a_lease_renewed_by_a_long_build_is_not_taken_over(tmp_path, adapter):
    store = LocalStore(tmp_path / "store")
    slow, waiting = Builds(tmp_path / "cache", adapter, 1.5), Builds(tmp_path / "cache", adapter)
    short = Timing(lease=0.4, poll=0.05)
    _, fetched = in_threads(
        lambda: sharing(store, slow, short).environments([want(slow)]),
        lambda: time.sleep(0.1) or sharing(store, waiting, short).environments([want(waiting)]),
    )
    assert (slow.count, waiting.count) == (1, 0), "a lease of 0.4 s, renewed"
    assert isinstance(fetched["head"], Environment)


def test_a_failed_build_is_reported_to_the_waiting_tasks(tmp_path, store, adapter):
    failing = Builds(tmp_path / "cache", adapter, seconds=0.5, fail=True)
    waiting = [Builds(tmp_path / "cache", adapter) for _ in range(2)]
    results = in_threads(
        lambda: sharing(store, failing).environments([want(failing)]),
        *[
            lambda b=b: time.sleep(0.1) or sharing(store, b).environments([want(b)])
            for b in waiting
        ],
    )
    assert failing.count == 1 and [b.count for b in waiting] == [0, 0]
    for result in results:
        assert isinstance(result["head"], BuildError)
        assert (str(result["head"]), result["head"].log_tail) == (
            "'uv pip install' exited 1",
            "tail of the log",
        )


class FinishingFirst(LocalStore):
    """A store where the task holding the lease records its failure and releases the lease
    just before this task claims it."""

    def create(self, key, data, content_type, cache_control="no-cache"):
        failed = key.removesuffix(".lease") + ".failed"
        if key.endswith(".lease") and not self.exists(failed):
            failure = {"error": "it failed", "log_tail": "tail", "run": None, "at": time.time()}
            self.put(failed, json.dumps(failure).encode(), "application/json")
        return super().create(key, data, content_type, cache_control)


def test_a_build_that_ends_just_before_the_claim_is_not_made_again(tmp_path, adapter):
    store = FinishingFirst(tmp_path / "store")
    builds = Builds(tmp_path / "cache", adapter)
    env = sharing(store, builds).environments([want(builds)])["head"]
    assert builds.count == 0 and isinstance(env, BuildError) and str(env) == "it failed"
    assert [key.rpartition(".")[2] for key in store.list("environments/")] == ["failed"]


def test_a_failure_holds_for_its_run_only(tmp_path, adapter, monkeypatch):
    store = LocalStore(tmp_path / "store")
    monkeypatch.setenv(RUN_VARIABLE, "execution-1")
    failing = Builds(tmp_path / "cache", adapter, fail=True)
    assert isinstance(sharing(store, failing).environments([want(failing)])["head"], BuildError)
    same_run = Builds(tmp_path / "cache", adapter)
    assert isinstance(sharing(store, same_run).environments([want(same_run)])["head"], BuildError)
    assert same_run.count == 0
    monkeypatch.setenv(RUN_VARIABLE, "execution-2")  # a re-run: built again, and shared
    rerun = Builds(tmp_path / "cache", adapter)
    assert isinstance(sharing(store, rerun).environments([want(rerun)])["head"], Environment)
    assert rerun.count == 1
    assert [k for k in store.list("environments/") if k.endswith(".failed")] == []


def test_a_failure_outside_cloud_run_expires(tmp_path, adapter, monkeypatch):
    monkeypatch.delenv(RUN_VARIABLE, raising=False)
    store = LocalStore(tmp_path / "store")
    failing = Builds(tmp_path / "cache", adapter, fail=True)
    sharing(store, failing).environments([want(failing)])
    later = Builds(tmp_path / "cache", adapter)
    expired = Timing(lease=0.4, poll=0.05, failure=0.0)
    assert isinstance(
        sharing(store, later, expired).environments([want(later)])["head"], Environment
    )
    assert later.count == 1


def test_an_environment_linking_outside_is_not_shared(tmp_path, adapter, capsys):
    store = LocalStore(tmp_path / "store")
    builds = Builds(
        tmp_path / "cache", adapter, extra=lambda env: (env / "lib/etc").symlink_to("/etc")
    )
    env = sharing(store, builds).environments([want(builds)])["head"]
    assert isinstance(env, Environment) and builds.count == 1
    assert store.list("environments/") == [], "nothing uploaded"
    assert "the link lib/etc -> /etc" in capsys.readouterr().err
    with pytest.raises(ArchiveError, match="lib/etc -> /etc"):
        pack(env.path, tmp_path / "env.tar.zst", CODECS[0])


def crafted(store, place: Place, members: list[tuple[tarfile.TarInfo, bytes]], path: Path):
    """Store a hand-made archive for ``place`` that says it was packed at ``path``."""
    raw = io.BytesIO()
    with tarfile.open(
        fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, pax_headers={PATH_HEADER: str(path)}
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    compressed = subprocess.run(
        CODECS[0].pack, input=raw.getvalue(), capture_output=True, check=True
    ).stdout
    archive = place.path.parent / "crafted.tar.zst"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(compressed)
    store.put_file(place.stem + CODECS[0].suffix, archive, "application/zstd")


def member(name: str, data=b"", link=None, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = kind, link
    elif kind == tarfile.CHRTYPE:
        info.type = kind
    else:
        info.size = len(data)
    return info, data


@pytest.mark.parametrize(
    "bad",
    [
        member("../escaped", b"x"),
        member("lib/etc", link="/etc"),
        member("bin/python", link="/bin/sh"),
        member("lib/up", link="../../.."),
        member("lib/passwd", link="/etc/passwd", kind=tarfile.LNKTYPE),
        member("lib/tty", kind=tarfile.CHRTYPE),
    ],
    ids=["dot-dot", "link-out", "other-interpreter", "link-up", "hard-link-out", "device"],
)
def test_an_archive_with_what_a_venv_does_not_hold_is_refused(tmp_path, adapter, bad, capsys):
    store = LocalStore(tmp_path / "store")
    builds = Builds(tmp_path / "cache", adapter)
    key = environment_key("a" * 40, adapter)
    place = Place.of(key, environment_path(builds.cache, key))
    crafted(store, place, [member(COMPLETE_MARKER, b"{}"), bad], place.path)
    env = sharing(store, builds).environments([want(builds)])["head"]
    assert builds.count == 1 and env.fetched_from is None, "built here instead"
    assert "not shared" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "envs" / "escaped").exists()


def test_an_archive_packed_at_another_path_is_refused(tmp_path, adapter, capsys):
    store = LocalStore(tmp_path / "store")
    builds = Builds(tmp_path / "cache", adapter)
    key = environment_key("a" * 40, adapter)
    place = Place.of(key, environment_path(builds.cache, key))
    crafted(store, place, [member(COMPLETE_MARKER, b"{}")], tmp_path / "elsewhere")
    env = sharing(store, builds).environments([want(builds)])["head"]
    assert builds.count == 1 and env.fetched_from is None
    assert f"packed at {tmp_path / 'elsewhere'}" in capsys.readouterr().err


def test_a_store_that_fails_is_given_up_and_the_task_builds(tmp_path, adapter, capsys):
    pytest.importorskip("google.cloud.storage")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with socket.socket() as sock:  # bound, never accepting: nothing answers
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = storage.Client(
            project="p",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
        store = GCSStore("bkt", client=client, retry=fast_retry(0.4), timeout=1)
        builds = Builds(tmp_path / "cache", adapter)
        envs = sharing(store, builds).environments([want(builds, "base", "b" * 40), want(builds)])
    assert builds.count == 2 and all(isinstance(env, Environment) for env in envs.values())
    assert capsys.readouterr().err.count("warning: environments not shared") == 1


class FailingUploads(LocalStore):
    """A local store whose file uploads fail, as a store going down mid-run."""

    def put_file(self, key, path, content_type, cache_control="no-cache", create_only=False):
        raise StoreError("put_file", key, self, "503 Service Unavailable")


def test_an_upload_that_fails_keeps_the_environment_and_releases_the_lease(
    tmp_path, adapter, capsys
):
    store = FailingUploads(tmp_path / "store")
    builds = Builds(tmp_path / "cache", adapter)
    envs = sharing(store, builds).environments([want(builds, "base", "b" * 40), want(builds)])
    assert builds.count == 2 and all(isinstance(env, Environment) for env in envs.values())
    assert store.list("environments/") == [], "the lease released, nothing else written"
    assert capsys.readouterr().err.count("warning: environments not shared") == 1


def compiling(store, cache: Path, adapter, sha: str, writable: bool) -> Environment:
    """Build ``sha`` in ``cache`` through its compiler cache, the build adding an object
    named after the SHA (even read-only: a sandbox that let it write) and saying so."""
    compiler = CompilerCache(cache / "ccache", writable)
    mode = "writable" if writable else "read-only"
    builds = Builds(cache, adapter, extra=lambda env: (compiler.path / sha).write_text(sha))

    def local() -> Environment:
        compiler.path.mkdir(parents=True, exist_ok=True)
        summary = f"ccache: 0 hits, 1 miss ({mode})"
        return dataclasses.replace(builds(sha), compiler_cache=summary)

    return sharing(store, builds).environment(Wanted("base", sha, local, compiler))


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_only_a_trusted_build_stores_the_compiler_cache(tmp_path, adapter):
    store = LocalStore(tmp_path / "store")
    compiling(store, tmp_path / "trusted", adapter, "a" * 40, writable=True)
    (key,) = store.list("ccache/")
    stored = store.stat(key).version, store.get(key)
    compiling(store, tmp_path / "untrusted", adapter, "b" * 40, writable=False)
    assert sorted(os.listdir(tmp_path / "untrusted" / "ccache")) == ["a" * 40, "b" * 40]
    assert (store.stat(key).version, store.get(key)) == stored, "the untrusted build's not stored"
    compiling(store, tmp_path / "trusted-again", adapter, "c" * 40, writable=True)
    assert store.stat(key).version != stored[0], "a trusted build's replaces it"


class FailingFetches(LocalStore):
    """A local store whose file downloads fail."""

    def get_file(self, key, path):
        raise StoreError("get_file", key, self, "503 Service Unavailable")


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_a_compiler_cache_that_cannot_be_fetched_is_built_without(tmp_path, adapter, capsys):
    compiling(LocalStore(tmp_path / "store"), tmp_path / "one", adapter, "a" * 40, writable=True)
    store = FailingFetches(tmp_path / "store")
    env = compiling(store, tmp_path / "two", adapter, "b" * 40, writable=False)
    assert isinstance(env, Environment) and env.fetched_from is None
    assert os.listdir(tmp_path / "two" / "ccache") == ["b" * 40], "built without it"
    assert "warning: compiler cache not fetched" in capsys.readouterr().err
    assert len(store.list("environments/")) == 2, "the environments still shared"
