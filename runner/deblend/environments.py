"""One isolated Python environment per revision, cached by everything that shapes it.

The key covers the SHA, the interpreter, the adapter's lock (its exact third-party
versions, which include the build requirements) and this recipe's version, so a
second run at the same SHA reuses the environment and spends seconds on setup.
Environments are built with uv when it is available, with venv and pip otherwise.

The build is split by trust: the runner creates the environment and installs the lock
itself, with network; the revision, whose build runs its own code (``setup.py``), is then
installed behind the sandbox (``runner.deblend.sandbox``) without network, without dependencies
and without uv's or pip's cache, from a copy of its tree in its environment, able to write
only the environment and a scratch folder. Its C and C++ code compiles through the compiler
cache (``runner.deblend.compilecache``), which only a trusted revision's build may write.

A drift run also builds the *newest* environment: the lock, then the revision installed
with dependency resolution and upgrades, so every package the revision requires comes
at the newest release its requirements allow (from the index uv or pip is configured
with: ``UV_INDEX_URL``, ``UV_FIND_LINKS``, ``PIP_INDEX_URL``, ...). It is never cached:
what it resolves to changes with every release. Resolving needs the index, so there the
revision is installed behind a sandbox with network.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packaging.requirements import InvalidRequirement, Requirement

from runner.deblend.adapters import Adapter
from runner.deblend.compilecache import CompilerCache
from runner.deblend.lockfile import normalise
from runner.deblend.sandbox import Isolation

RECIPE_VERSION = 2  # 2: the revision built offline behind the read-only sandbox
LOG_TAIL_LINES = 25
NOT_CONFLICTS = ("Using ", "Checked ", "Found ")  # uv pip check's lines around the conflicts
COMPLETE_MARKER = "environment.json"
SOURCE = ".source"  # the copy of the revision's tree, in its environment while it builds
BUILD_VARIABLES = (
    *("PATH", "HOME", "LANG", "TMPDIR"),
    *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"),
)


class BuildError(RuntimeError):
    """A revision that could not be installed; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, log_tail: str, log_path: Path):
        super().__init__(message)
        self.log_tail = log_tail
        self.log_path = log_path


class BuildRefused(BuildError):
    """A revision the adapter cannot build with its lock (a tool failure, never the
    revision's): why, in one line."""

    def __init__(self, message: str):
        super().__init__(message, "", Path())


def refusal(tree: Path, adapter: Adapter) -> BuildRefused | None:
    """Why ``adapter`` cannot build the revision whose tree is ``tree``: a build
    requirement in its ``pyproject.toml`` that the lock (which the build uses, without
    isolation) does not satisfy, such as scarlet_lite's ``setuptools<65`` before 8fd276d
    (2024-10), whose ``setup.py`` imports ``numpy.distutils``; None when there is none."""
    try:
        declared = tomllib.loads((tree / "pyproject.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    locked = {
        normalise(name): version
        for name, _, version in (line.partition("==") for line in adapter.lock_requirements())
    }
    for text in declared.get("build-system", {}).get("requires", []):
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        version = locked.get(normalise(requirement.name))
        applies = requirement.marker is None or requirement.marker.evaluate()
        if version and applies and not requirement.specifier.contains(version, prereleases=True):
            return BuildRefused(
                f"its build requires {requirement}, the {adapter.name} lock has"
                f" {requirement.name} {version}: not built"
            )
    return None


@dataclass(frozen=True)
class Environment:
    """A built environment: where its interpreter is and what it holds; ``reused`` from
    this machine's cache, or ``fetched_from`` the store (``runner.deblend.shared``)."""

    key: str
    path: Path
    python: Path
    sha: str
    adapter: str
    deblender_version: str
    numpy_version: str
    python_version: str
    lock_hash: str
    packages: dict[str, str]
    build_seconds: float
    reused: bool
    fetched_from: str | None = None
    compiler_cache: str | None = None
    conflicts: tuple[str, ...] = ()


def build_files(environ: dict[str, str] | os._Environ) -> list[Path]:
    """Files the build reads by name from the variables it gets (uv's or pip's settings)."""
    return [
        Path(value)
        for key, value in environ.items()
        if key.startswith(("UV_", "PIP_")) and key.endswith("_FILE") and value
    ]


def uv_binary() -> str | None:
    """The uv executable from the ``uv`` package or PATH, if there is one."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def environment_key(sha: str, adapter: Adapter) -> str:
    """The cache key of the environment for ``sha``."""
    identity = {
        "sha": sha,
        "adapter": adapter.name,
        "lock": adapter.lock_hash,
        "python": sys.version,
        "implementation": sys.implementation.name,
        "machine": platform.machine(),
        "recipe": RECIPE_VERSION,
    }
    return identity_key(identity)


def identity_key(identity: dict) -> str:
    """A cache key for what ``identity`` holds (JSON values)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def environment_path(cache: Path, key: str) -> Path:
    """Where the environment of ``key`` lives in the cache."""
    return cache / "envs" / key


@contextmanager
def environment_lock(env: Path) -> Iterator[None]:
    """Hold the file lock of the environment at ``env`` (its build or its unpacking)."""
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _steps(
    uv: str | None, env: Path, source: Path, adapter: Adapter, newest: bool = False
) -> tuple[list[list[str]], list[list[str]]]:
    """The trusted steps, run as the runner with network: create the environment, install
    exactly the lock (no resolution), check that it is complete. Then the revision's own
    (its build runs its code), run behind the sandbox and with no cache (a revision could
    poison it): install the revision without build isolation, without dependencies and
    offline; or (``newest``) resolving and upgrading its dependencies, then check again."""
    python = str(env / "bin" / "python")
    lock = str(adapter.lock)
    if uv:
        install = [uv, "pip", "install", "--python", python, "--no-progress"]
        check = [uv, "pip", "check", "--python", python]
        revision = [*install, "--no-cache", "--no-build-isolation", "--reinstall", str(source)]
        trusted = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(env)],
            [*install, "--no-deps", "--requirement", lock],
            check,
        ]
        if newest:
            return trusted, [[*revision, "--upgrade"], [*check, "--no-cache"]]
        return trusted, [[*revision, "--no-deps", "--offline"]]
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    check = [python, "-m", "pip", "check"]
    revision = [*pip, "--no-cache-dir", "--no-build-isolation", str(source)]
    upgrade = ["--upgrade", "--upgrade-strategy", "eager"]
    trusted = [
        [sys.executable, "-m", "venv", str(env)],
        [*pip, "--no-deps", "--requirement", lock],
        check,
    ]
    if newest:
        return trusted, [[*revision, *upgrade], check]
    return trusted, [[*revision, "--no-deps", "--no-index"]]


def _probe(env: Path, adapter: Adapter, prefix: tuple[str, ...], variables: dict[str, str]) -> dict:
    """Import the deblender with the environment's interpreter behind ``prefix``, with the
    environment ``variables``, and check where it lives."""
    code = (
        "import importlib, importlib.metadata as md, json, platform, numpy\n"
        f"m = importlib.import_module({adapter.module!r})\n"
        "packages = {d.metadata['Name']: d.version for d in md.distributions()}\n"
        "print(json.dumps({'version': getattr(m, '__version__', 'unknown'),"
        " 'file': m.__file__, 'numpy': numpy.__version__, 'packages': packages,"
        " 'python': platform.python_version()}))\n"
    )
    result = subprocess.run(
        [*prefix, str(env / "bin" / "python"), "-I", "-c", code],
        capture_output=True,
        text=True,
        env=variables,
        cwd=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"import {adapter.module} failed:\n{result.stderr}")
    info = json.loads(result.stdout.splitlines()[-1])
    if not Path(info["file"]).resolve().is_relative_to(env.resolve()):
        raise RuntimeError(f"{adapter.module} was imported from {info['file']}, outside {env}")
    return info


def requirement_conflicts(env: Path, variables: dict[str, str] | None = None) -> list[str]:
    """Every declared requirement the environment at ``env`` does not meet, one line each,
    as ``uv pip check`` (or ``pip check``) reports it. The runner's own tool, reading the
    metadata the build wrote as the runner reads the installed files (no code of the
    revision runs)."""
    uv, python = uv_binary(), str(env / "bin" / "python")
    check = [uv, "pip", "check", "--no-cache", "--python", python]
    if not uv:
        check = [python, "-m", "pip", "check", "--disable-pip-version-check"]
    result = subprocess.run(check, capture_output=True, text=True, env=variables, check=False)
    if result.returncode == 0:
        return []
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    found = [line for line in lines if line.startswith("The package ") or "requirement " in line]
    if found:
        return found
    what = "; ".join(line for line in lines if line and not line.startswith(NOT_CONFLICTS))
    return [f"the requirement check could not run: {what}"]


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _clear(path: Path) -> None:
    """Remove whatever a revision's build left at ``path``: a symbolic link there would
    send our write elsewhere."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _build(
    env: Path,
    source: Path,
    adapter: Adapter,
    log: Path,
    sandbox: Isolation | None,
    compiler_cache: CompilerCache | None,
    newest: bool = False,
) -> dict:
    """Build ``env``: the trusted steps as the runner, then the revision's own behind
    ``sandbox``, from a copy of ``source`` in ``env`` (removed after), compiling through
    ``compiler_cache``, writing only the environment, a scratch folder and the compiler
    cache if this build may; finally the import check, there too (writing only the
    scratch). Returns what the import check found, and the compiler cache's summary."""
    uv = uv_binary()
    # None of our variables reach the build; the revision's steps get uv's and pip's only
    # where they need an index (``newest``): those may hold an index's credentials.
    trusted_env = {
        key: value
        for key, value in os.environ.items()
        if key in BUILD_VARIABLES or key.startswith(("UV_", "PIP_", "LC_"))
    }
    trusted_env.update(PIP_NO_INPUT="1", MAX_JOBS=str(os.cpu_count() or 1))
    own_env = {k: v for k, v in trusted_env.items() if newest or not k.startswith(("UV_", "PIP_"))}
    with (
        open(log, "w") as stream,
        # Not named after the environment: ccache would count it in (CCACHE_BASEDIR is a
        # prefix of strings, not of paths).
        tempfile.TemporaryDirectory(prefix=f"build-{env.name}.", dir=env.parent) as folder,
    ):
        scratch = Path(folder)
        own_env.update(HOME=str(scratch), TMPDIR=str(scratch), PIP_NO_INPUT="1")
        if compiler_cache:
            own_env.update(compiler_cache.variables(env, scratch))
        # The tree goes into the environment once it exists: then the paths of the headers
        # the environment holds, relative to the tree, are the same in every environment.
        tree = env / SOURCE
        trusted, own = _steps(uv, env, tree, adapter, newest)
        for step in trusted:
            _run(step, (), trusted_env, None, stream, log)
        try:
            shutil.copytree(source, tree, symlinks=True)
            writable = [env, scratch, *(compiler_cache.binds() if compiler_cache else [])]
            prefix = sandbox.prefix(writable) if sandbox else ()
            for step in own:
                _run(step, prefix, own_env, scratch, stream, log)
        finally:
            _clear(tree)  # before the import check, which must not find the package there
        prefix = sandbox.prefix([scratch]) if sandbox else ()
        try:
            info = _probe(env, adapter, prefix, own_env)
        except RuntimeError as error:
            stream.write(f"{error}\n")
            stream.flush()
            raise BuildError(str(error).splitlines()[0], _tail(log), log) from None
        info["compiler_cache"] = compiler_cache.summary(scratch) if compiler_cache else None
        info["conflicts"] = requirement_conflicts(env, trusted_env)
        stream.write("".join(f"requirement not met: {line}\n" for line in info["conflicts"]))
        return info


def _run(
    step: list[str],
    prefix: tuple[str, ...],
    variables: dict[str, str],
    cwd: Path | None,
    stream: IO[str],
    log: Path,
) -> None:
    """Run one build step behind ``prefix``, logging to ``stream``; a BuildError if it fails."""
    stream.write(f"$ {' '.join(step)}\n")
    stream.flush()
    result = subprocess.run(
        [*prefix, *step],
        stdin=subprocess.DEVNULL,
        stdout=stream,
        stderr=subprocess.STDOUT,
        env=variables,
        cwd=cwd,
        check=False,
    )
    if result.returncode != 0:
        name = Path(step[0]).name + " " + " ".join(step[1:3])
        raise BuildError(f"'{name}' exited {result.returncode}", _tail(log), log)


def build_environment(
    source: Path,
    sha: str,
    adapter: Adapter,
    cache: Path,
    sandbox: Isolation | None = None,
    compiler_cache: CompilerCache | None = None,
) -> Environment:
    """The environment for ``sha`` built from the work tree ``source``, reused if cached;
    the revision's own code (its build, the import check) runs behind ``sandbox`` and
    compiles through ``compiler_cache`` (none: without a cache)."""
    key = environment_key(sha, adapter)
    env = environment_path(cache, key)
    with environment_lock(env):
        marker = env / COMPLETE_MARKER
        reused = marker.exists()
        if not reused:
            shutil.rmtree(env, ignore_errors=True)
            log = env.parent / f"{key}.log"
            started = time.perf_counter()
            try:
                info = _build(env, source, adapter, log, sandbox, compiler_cache)
            except BuildError:
                shutil.rmtree(env, ignore_errors=True)
                raise
            info["build_seconds"] = round(time.perf_counter() - started, 1)
            _clear(env / "build.log")
            shutil.move(log, env / "build.log")
            _clear(marker)
            marker.write_text(json.dumps(info, indent=2))
        info = json.loads(marker.read_text())
        if "conflicts" not in info:  # built before the check was recorded
            info["conflicts"] = requirement_conflicts(env)
    return _environment(key, env, sha, adapter, info, reused)


def _environment(
    key: str, path: Path, sha: str, adapter: Adapter, info: dict, reused: bool
) -> Environment:
    """The environment built at ``path``, as its import check described it (``info``)."""
    return Environment(
        key=key,
        path=path,
        python=path / "bin" / "python",
        sha=sha,
        adapter=adapter.name,
        deblender_version=info["version"],
        numpy_version=info["numpy"],
        python_version=info["python"],
        lock_hash=adapter.lock_hash,
        packages=dict(sorted(info["packages"].items())),
        build_seconds=float(info["build_seconds"]),
        reused=reused,
        compiler_cache=info.get("compiler_cache"),
        conflicts=tuple(info.get("conflicts") or ()),
    )


def build_newest_environment(
    source: Path,
    sha: str,
    adapter: Adapter,
    into: Path,
    sandbox: Isolation | None = None,
    compiler_cache: CompilerCache | None = None,
) -> Environment:
    """The environment for ``sha`` with the newest releases its requirements allow, built
    afresh in ``into`` behind ``sandbox``, compiling through ``compiler_cache`` (never
    cached: its key is the hash of what it resolved to)."""
    shutil.rmtree(into, ignore_errors=True)
    into.parent.mkdir(parents=True, exist_ok=True)
    log = into.parent / f"{into.name}.log"
    started = time.perf_counter()
    try:
        info = _build(into, source, adapter, log, sandbox, compiler_cache, newest=True)
    except BuildError:
        shutil.rmtree(into, ignore_errors=True)
        raise
    _clear(into / "build.log")
    shutil.move(log, into / "build.log")
    info["build_seconds"] = round(time.perf_counter() - started, 1)
    resolved = json.dumps(info["packages"], sort_keys=True).encode()
    key = "newest-" + hashlib.sha256(resolved).hexdigest()[:24]
    return _environment(key, into, sha, adapter, info, reused=False)
