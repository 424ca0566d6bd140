"""Environments built once per run: one task builds each, the run's other tasks fetch it.

Every task of a sharded run on Cloud Run starts with an empty cache (its own ``/tmp``), so
without this each would build both environments (scarlet v1 ~100 s; scarlet2 with JAX
~64 s and ~920 MB). With a store (``--private-store``) an environment missing from this machine's
cache is looked for in the store first, under content-addressed keys
``environments/<key>/<place>.*``: ``<key>`` is :func:`environment_key` (SHA, adapter, lock,
Python, machine, recipe) and ``<place>`` a digest of the environment's absolute path. A
venv is not relocatable (``pyvenv.cfg``, the scripts' shebangs and the interpreter's link
hold absolute paths): every task runs the same image with the same cache path, and an
environment at another path is another environment.

- ``.tar.zst`` (``.tar.gz`` without ``zstd``): the environment, packed by the task that
  built it and uploaded create-only, so it appears only complete and only once. It records
  the path it was packed at, which must be the path it is unpacked at.
- ``.lease``: the task building it, created create-only (one creator wins) and renewed
  while it builds and uploads. A lease not renewed for ``Timing.lease`` seconds was left by
  a task that died and is taken over (rewritten under the version read: one taker wins).
- ``.failed``: a build that failed, with its log's tail, which the run's other tasks
  report as their own instead of each building again; it holds within one Cloud Run
  execution (``CLOUD_RUN_EXECUTION``), elsewhere for ``Timing.failure`` seconds, so a
  transient failure never poisons a SHA.

The other tasks poll until the archive or the failure is there, then unpack the archive
beside their cache and move it into place (an environment is used only complete). Leases
only save work: two tasks that both build (one took over the lease of a task that was
slow, not dead) both upload create-only and one archive stays.

Trust: only the trusted runner writes the store, and only after the build; the revision's
own code (its build, behind the sandbox) cannot reach the store's credentials. The key
includes the SHA, so a pull request can only ever produce its own SHA's environment. Its
build wrote that environment, so packing and unpacking let through only what a venv
holds (:func:`check_member`). A store that fails is given up for the run: the task then
builds for itself, as without a store.

Nothing larger than :data:`ARCHIVE_LIMIT` (the files' bytes, before compression) is
packed: a build that fills its environment (copies of whatever it could read, a sparse
file of gigabytes) is refused before anything is compressed or uploaded.

The compiler cache (``runner.deblend.compilecache``) travels the same way, as every task's
starts empty: before a task builds, it fetches ``ccache/<ref>/<key>.*`` (``<ref>`` the
trusted ref that wrote it, the key covering what makes an object reusable: lock, Python,
machine, compilers) into a ``<cache>/ccache/<ref>`` it has none of, so that even a pull
request's read-only build hits what a trusted build of another task or run compiled;
after a trusted build that, by the runner's count, compiled something, it stores its
cache over the one it saw (created where there was none; a build that got there first
wins). A store that fails only leaves the build without the fetched cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from runner.deblend.adapters import Adapter
from runner.deblend.compilecache import CompilerCache, added, ccache, compilers, ref_folder
from runner.deblend.environments import (
    COMPLETE_MARKER,
    BuildError,
    Environment,
    environment_key,
    environment_lock,
    environment_path,
    identity_key,
)
from runner.store import ArtifactStore, KeyNotFound, StoreError, open_store

PREFIX = "environments/"
COMPILER_PREFIX = "ccache/"
PATH_HEADER = "scarlet-regression.path"
RUN_VARIABLE = "CLOUD_RUN_EXECUTION"
ARCHIVE_LIMIT = 2 * 2**30  # bytes of files an archive may hold (scarlet2's ~0.9 GB)
_INTERPRETER_LINK = re.compile(r"bin/python(3(\.\d+)?)?")


class ArchiveError(RuntimeError):
    """A folder that cannot be packed, or an archive that cannot be unpacked here."""


@dataclass(frozen=True)
class Timing:
    """Seconds: a lease's life unless renewed (every quarter of it), between two looks of a
    waiting task, a task's wait before it builds for itself, a failure's life outside Cloud
    Run."""

    lease: float = 120.0
    poll: float = 2.0
    wait: float = 1800.0
    failure: float = 900.0


@dataclass(frozen=True)
class Codec:
    """A compressor (``pack``, stdin to stdout) and its decompressor (``unpack`` FILE)."""

    suffix: str
    content_type: str
    pack: tuple[str, ...]
    unpack: tuple[str, ...]


# Measured (benchmarks/shared_environments.py) on a scarlet v1 environment, 332 MB in 7,600
# files: zstd -3 packs it in 2.5 s to 91 MB and unpacks it in 3-4 s, gzip -1 takes 6 s to
# 111 MB and 5-6 s; scarlet2's, 795 MB: zstd 6 s to 194 MB and 9 s, gzip 19 s and 15 s.
CODECS = (
    Codec(".tar.zst", "application/zstd", ("zstd", "-q", "-3", "-T0", "-c"), ("zstd", "-qdc")),
    Codec(".tar.gz", "application/gzip", ("gzip", "-1", "-c"), ("gzip", "-dc")),
)


def best_codec() -> Codec:
    """zstd where its command is installed, gzip otherwise."""
    return next((c for c in CODECS if shutil.which(c.pack[0])), CODECS[-1])


@dataclass(frozen=True)
class Wanted:
    """An environment a run needs: for which ``side`` and ``sha``, and ``local``, which
    gives it from this machine's cache (reused, or built here through ``compiler``: a
    BuildError if not)."""

    side: str
    sha: str
    local: Callable[[], Environment | BuildError]
    compiler: CompilerCache | None = None


@dataclass(frozen=True)
class Place:
    """Where one environment lives: ``path`` on this machine, its keys in the store."""

    key: str
    path: Path
    stem: str

    @classmethod
    def of(cls, key: str, path: Path) -> Place:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return cls(key, path, f"{PREFIX}{key}/{digest}")

    @property
    def lease(self) -> str:
        return self.stem + ".lease"

    @property
    def failure(self) -> str:
        return self.stem + ".failed"


def check_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """``member`` as it may be packed from or unpacked into the environment at ``dest``:
    what tarfile's ``data`` filter allows (regular files, directories, links that stay
    inside), and the interpreter's link (``bin/python``) to this machine's base
    interpreter, which a venv points outside; owners are dropped. ArchiveError otherwise."""
    if not member.issym():
        try:
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError as error:
            raise ArchiveError(f"not shared: {error}") from None
    # The data filter follows links already on disk: ``python3 -> python`` would count as
    # leaving through ``python -> /usr/...``. Links are judged by what they name instead.
    parent = os.path.realpath(os.path.join(dest, os.path.dirname(member.name)))
    target = member.linkname
    if os.path.isabs(target):
        interpreter = os.path.realpath(sys.executable)
        allowed = (
            _INTERPRETER_LINK.fullmatch(member.name) and os.path.realpath(target) == interpreter
        )
    else:
        allowed = _inside(os.path.normpath(os.path.join(parent, target)), dest)
    if not (allowed and _inside(parent, dest) and ".." not in member.name.split("/")):
        raise ArchiveError(f"not shared: the link {member.name} -> {target}")
    return member.replace(uid=None, gid=None, uname=None, gname=None, deep=False)


def _inside(path: str, dest: str) -> bool:
    dest = os.path.realpath(dest)
    return os.path.commonpath([path, dest]) == dest


def pack(env: Path, archive: Path, codec: Codec, limit: int | None = None) -> None:
    """Pack the environment (or compiler cache) at ``env`` into ``archive``, recording
    ``env``'s path; what a task could not unpack (:func:`check_member`) is refused here
    already, and so is a folder whose files hold more than ``limit`` bytes (default:
    :data:`ARCHIVE_LIMIT`), before anything is packed."""
    limit = ARCHIVE_LIMIT if limit is None else limit
    size = _size(env)
    if size > limit:
        raise ArchiveError(
            f"not shared: it holds {size / 2**30:.2f} GiB, over the limit of {limit / 2**30:g} GiB"
        )

    def checked(member: tarfile.TarInfo) -> tarfile.TarInfo:
        check_member(member, str(env))
        return member

    headers = {PATH_HEADER: str(env)}
    with open(archive, "wb") as out:
        compressor = subprocess.Popen(codec.pack, stdin=subprocess.PIPE, stdout=out)
        try:
            with tarfile.open(
                fileobj=compressor.stdin, mode="w|", format=tarfile.PAX_FORMAT, pax_headers=headers
            ) as tar:
                for child in sorted(env.iterdir()):
                    tar.add(child, child.name, filter=checked)
        finally:
            compressor.stdin.close()
            code = compressor.wait()
    if code != 0:
        raise ArchiveError(f"{codec.pack[0]} exited {code}")


def _size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def unpack(archive: Path, into: Path, env: Path | None, codec: Codec) -> None:
    """Unpack ``archive`` into the new folder ``into``, to be moved to ``env``: the path it
    was packed at (None: any), or ArchiveError."""
    decompressor = subprocess.Popen([*codec.unpack, str(archive)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=decompressor.stdout, mode="r|") as tar:
            packed = tar.pax_headers.get(PATH_HEADER)
            if env is not None and packed != str(env):
                raise ArchiveError(f"packed at {packed}, not {env}")
            tar.extractall(into, filter=check_member)
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"cannot unpack {archive.name}: {error}") from None
    finally:
        decompressor.stdout.close()
        code = decompressor.wait()
    if code != 0:
        raise ArchiveError(f"{codec.unpack[0]} exited {code}")


class Sharing:
    """The environments of one task, shared with the other tasks of its run through
    ``store`` (None: built here, as without a store)."""

    def __init__(
        self,
        store: ArtifactStore | None,
        adapter: Adapter,
        cache: Path,
        progress: Callable[[str], None],
        timing: Timing = Timing(),
        codec: Codec | None = None,
    ):
        self.store = store
        self.adapter = adapter
        self.cache = cache
        self.progress = progress
        self.timing = timing
        self.codec = codec or best_codec()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def environments(self, wanted: list[Wanted]) -> dict[str, Environment | BuildError]:
        """Every wanted environment by side: from this machine's cache, fetched, built here
        (a lease won) or the failure of the build another task made. A side whose build
        another task holds waits while the others go ahead, so two tasks can build base and
        head side by side."""
        done: dict[str, Environment | BuildError] = {}
        since: dict[str, float] = {}
        while len(done) < len(wanted):
            for want in wanted:
                if want.side not in done:
                    outcome = self._attempt(want, since)
                    if outcome is not None:
                        done[want.side] = outcome
            if len(done) < len(wanted):
                time.sleep(self.timing.poll)
        return {want.side: done[want.side] for want in wanted}

    def environment(self, want: Wanted) -> Environment | BuildError:
        """One wanted environment (see :meth:`environments`)."""
        return self.environments([want])[want.side]

    def _attempt(self, want: Wanted, since: dict[str, float]) -> Environment | BuildError | None:
        """The environment, or None while another task builds it."""
        key = environment_key(want.sha, self.adapter)
        place = Place.of(key, environment_path(self.cache, key))
        if self.store is None or (place.path / COMPLETE_MARKER).is_file():
            return self._local(want)
        try:
            found = self._found(want, place)
            if found is None and self._claim(place):
                with self._holding(place):
                    # The last holder may have finished between the first look and the claim.
                    found = self._found(want, place)
                    return self._build(want, place) if found is None else found
        except StoreError as error:
            self._give_up(error)
            return self._local(want)
        if found is not None:
            return found
        if want.side not in since:
            since[want.side] = time.monotonic()
            self.progress(f"waiting for the {want.side} environment (another task builds it)")
        elif time.monotonic() - since[want.side] > self.timing.wait:
            return self._build(want, place)
        return None

    def _found(self, want: Wanted, place: Place) -> Environment | BuildError | None:
        """The environment fetched from the store, the failure recorded there, or None."""
        if self.store.exists(self._archive(place)):
            return self._fetch(want, place)
        return self._failure(place)

    def _local(self, want: Wanted) -> Environment | BuildError:
        self.progress(f"building {want.side} environment")
        return want.local()

    def _archive(self, place: Place) -> str:
        return place.stem + self.codec.suffix

    def _fetch(self, want: Wanted, place: Place) -> Environment | BuildError:
        """Unpack the stored archive into this machine's cache, then take it from there."""
        self.progress(f"fetching the {want.side} environment")
        try:
            self._unpack(place)
        except ArchiveError as error:
            print(f"warning: {error}; building it here", file=sys.stderr)
            return self._build(want, place)
        env = want.local()
        if isinstance(env, Environment) and env.reused:
            address = f"{str(self.store).rstrip('/')}/{self._archive(place)}"
            return dataclasses.replace(env, reused=False, fetched_from=address)
        return env

    def _unpack(self, place: Place) -> None:
        with environment_lock(place.path):
            if (place.path / COMPLETE_MARKER).is_file():
                return
            with tempfile.TemporaryDirectory(
                prefix=f"{place.key}.fetch-", dir=place.path.parent
            ) as folder:
                archive = Path(folder) / f"environment{self.codec.suffix}"
                self.store.get_file(self._archive(place), archive)
                tree = Path(folder) / "tree"
                unpack(archive, tree, place.path, self.codec)
                if not (tree / COMPLETE_MARKER).is_file():
                    raise ArchiveError(f"no {COMPLETE_MARKER} in {archive.name}")
                shutil.rmtree(place.path, ignore_errors=True)  # what a broken build left
                tree.rename(place.path)

    def _build(self, want: Wanted, place: Place) -> Environment | BuildError:
        """Build here through the stored compiler cache, then share the environment or the
        failure, and the compiler cache the build added to."""
        version = self._fetch_compiler_cache(want.compiler)
        env = self._local(want)
        try:
            if isinstance(env, BuildError):
                self._record(place, env)
            else:
                self._upload(want, place, env)
                self._share_compiler_cache(want.compiler, env, version)
        except StoreError as error:
            self._give_up(error)
        return env

    def _compiler_archive(self, compiler: CompilerCache) -> str:
        """The key of the compiler cache of ``compiler``'s trusted ref that serves the
        adapter's builds on this machine."""
        identity = {
            "lock": self.adapter.lock_hash,
            "python": sys.version,
            "implementation": sys.implementation.name,
            "machine": platform.machine(),
            "compilers": compilers(),
        }
        folder = ref_folder(compiler.ref)
        return f"{COMPILER_PREFIX}{folder}/{identity_key(identity)}{self.codec.suffix}"

    def _fetch_compiler_cache(self, compiler: CompilerCache | None) -> str | None:
        """Before a build through ``compiler``: the version of the stored compiler cache
        (None: none stored, or the store failing), unpacked into ``compiler``'s folder if
        that is missing or empty here. Run as the runner, before the sandboxed build, which
        then reads it (or, if trusted, adds to it); the store failing, it builds without."""
        if compiler is None or ccache() is None:
            return None
        key, version = self._compiler_archive(compiler), None
        try:
            version = self.store.stat(key).version
            if compiler.path.is_dir() and any(compiler.path.iterdir()):
                return version
            self.progress("fetching the compiler cache")
            compiler.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(
                prefix="ccache.fetch-", dir=compiler.path.parent
            ) as folder:
                archive = Path(folder) / f"ccache{self.codec.suffix}"
                self.store.get_file(key, archive)
                tree = Path(folder) / "tree"
                unpack(archive, tree, None, self.codec)
                with suppress(OSError):  # filled meanwhile by another build here: keep that
                    tree.rename(compiler.path)
        except KeyNotFound:
            return None
        except (StoreError, ArchiveError) as error:
            _warn(f"compiler cache not fetched: {error}")
        return version

    def _share_compiler_cache(
        self, compiler: CompilerCache | None, env: Environment, version: str | None
    ) -> None:
        """Store the compiler cache of a trusted build that added to it, over ``version``
        (the stored one seen before the build; None: created), unless another build
        replaced that since. An untrusted build never uploads: it reads the cache through the
        read-only file system, so its cache is unchanged anyway."""
        if compiler is None or not compiler.writable or env.reused or not added(env.compiler_cache):
            return
        self.progress("sharing the compiler cache")
        key = self._compiler_archive(compiler)
        with tempfile.TemporaryDirectory(prefix="ccache.pack-", dir=compiler.path.parent) as tmp:
            archive = Path(tmp) / f"ccache{self.codec.suffix}"
            try:
                pack(compiler.path, archive, self.codec)
                data, kind = archive.read_bytes(), self.codec.content_type
                if version is None:
                    self.store.create(key, data, kind)
                else:
                    self.store.replace(key, data, kind, version)
            except (StoreError, ArchiveError) as error:
                _warn(f"compiler cache not shared: {error}")

    def _upload(self, want: Wanted, place: Place, env: Environment) -> None:
        if self.store.exists(self._archive(place)):
            return
        self.progress(f"sharing the {want.side} environment")
        with tempfile.TemporaryDirectory(prefix=f"{place.key}.pack-", dir=env.path.parent) as tmp:
            archive = Path(tmp) / f"environment{self.codec.suffix}"
            try:
                pack(env.path, archive, self.codec)
            except ArchiveError as error:
                print(f"warning: the {want.side} environment is {error}", file=sys.stderr)
                return
            self.store.put_file(
                self._archive(place), archive, self.codec.content_type, create_only=True
            )
        self.store.delete(place.failure)  # an earlier run's, now superseded

    def _record(self, place: Place, error: BuildError) -> None:
        failure = {
            "error": str(error),
            "log_tail": error.log_tail,
            "run": os.environ.get(RUN_VARIABLE),
            "at": time.time(),
        }
        self.store.put(place.failure, json.dumps(failure).encode(), "application/json")

    def _failure(self, place: Place) -> BuildError | None:
        """The failure another task of this run recorded, as a BuildError of our own."""
        try:
            failure = json.loads(self.store.get(place.failure))
            run = os.environ.get(RUN_VARIABLE)
            if run or failure["run"]:
                applies = failure["run"] == run
            else:
                applies = time.time() - float(failure["at"]) < self.timing.failure
            error, tail = str(failure["error"]), str(failure["log_tail"])
        except KeyNotFound:
            return None
        except (ValueError, KeyError, TypeError):  # not one of ours: build
            return None
        if not applies:
            return None
        log = place.path.parent / f"{place.key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(tail + "\n")
        return BuildError(error, tail, log)

    def _lease(self) -> bytes:
        expires = time.time() + self.timing.lease
        return json.dumps({"holder": self.holder, "expires": expires}).encode()

    def _claim(self, place: Place) -> bool:
        """Whether this task now holds the lease: created, or taken over from a task that
        stopped renewing it."""
        if self.store.create(place.lease, self._lease(), "application/json"):
            return True
        try:
            version = self.store.stat(place.lease).version
            held = json.loads(self.store.get(place.lease))
            holder, expires = held["holder"], float(held["expires"])
        except KeyNotFound:
            return False  # released this moment: the archive or the failure is there
        except (ValueError, KeyError, TypeError):
            holder, expires = None, 0.0
        if holder == self.holder:
            return True  # our own create, retried after it had landed
        if expires > time.time():
            return False
        return self.store.replace(place.lease, self._lease(), "application/json", version)

    @contextmanager
    def _holding(self, place: Place) -> Iterator[None]:
        """Renew the lease until the block is done, then release it (in the store it was
        taken in, even if the block gave the store up)."""
        store, stop = self.store, threading.Event()

        def renew() -> None:
            while not stop.wait(self.timing.lease / 4):
                # A renewal that fails: the next may land; past expiry another task builds too.
                with suppress(StoreError):
                    store.put(place.lease, self._lease(), "application/json")

        renewing = threading.Thread(target=renew, daemon=True)
        renewing.start()
        try:
            yield
        finally:
            stop.set()
            renewing.join()
            with suppress(StoreError):  # it expires
                store.delete(place.lease)

    def _give_up(self, error: StoreError) -> None:
        if self.store is not None:
            print(f"warning: environments not shared: {error}".splitlines()[0], file=sys.stderr)
        self.store = None


def _warn(message: str) -> None:
    print(f"warning: {message}".splitlines()[0], file=sys.stderr)


def open_sharing(
    spec: str | None,
    deadline: float | None,
    adapter: Adapter,
    cache: Path,
    progress: Callable[[str], None],
) -> Sharing:
    """The sharing of a task's environments through the store ``spec`` (a ``--private-store``;
    None, or a store that cannot be opened: built here)."""
    store = None
    if spec is not None:
        try:
            store = open_store(spec, deadline=deadline)
        except (StoreError, ValueError) as error:
            print(f"warning: environments not shared: {error}".splitlines()[0], file=sys.stderr)
    return Sharing(store, adapter, cache, progress)
