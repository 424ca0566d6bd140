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

Every file of an environment is its own copy: uv is told ``--link-mode=copy`` whatever
the caller's ``UV_LINK_MODE`` says, so no file a revision's build can write shares an
inode with uv's cache or another environment. Every build step and the import check has
a timeout (:data:`BUILD_LIMITS`); a build's log keeps its first bytes and its tail; what
the environment and the build's scratch hold on disk is watched while it builds, and an
environment larger than the limit is a build error (it would not be shared anyway).

A drift run also builds the *newest* environment: the lock and the revision as above,
then every package the revision requires (its ``Requires-Dist``, read from its installed
metadata) at the newest release its requirements allow, from the index uv is configured
with (``UV_INDEX_URL``, ``UV_FIND_LINKS``, ...). The runner resolves them (``uv pip
compile``, wheels only: no package's code runs) and fetches the wheels into a cache of
the build's own, outside the sandbox, with network; the sandbox then installs them from
that cache without network. It is never cached: what it resolves to changes with every
release.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement

from runner.deblend.adapters import Adapter
from runner.deblend.compilecache import CompilerCache
from runner.deblend.installed import InstalledError, record, site_packages
from runner.deblend.lockfile import normalise
from runner.deblend.logs import CappedLog, read_tail
from runner.deblend.sandbox import Isolation

# 3: copies, not links, of uv's cache; the allow-list sandbox; 4: compiled reproducibly
RECIPE_VERSION = 4
# Seconds since the epoch for anything a build stamps with a time (1980-01-01, the
# earliest a zip file can hold).
SOURCE_DATE_EPOCH = "315532800"
LOG_TAIL_LINES = 25
NOT_CONFLICTS = ("Using ", "Checked ", "Found ")  # uv pip check's lines around the conflicts
COMPLETE_MARKER = "environment.json"
SOURCE = ".source"  # the copy of the revision's tree, in its environment while it builds
BUILD_VARIABLES = (
    *("PATH", "HOME", "LANG", "TMPDIR"),
    *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"),
)
# uv's settings that name where packages come from: the newest environment's offline
# install needs them to find what the runner fetched (credentials taken out).
INDEX_VARIABLES = (
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_INDEX_STRATEGY",
)
DISK_CHECK_INTERVAL = 2.0  # seconds between looks at what a build holds on disk


@dataclass(frozen=True)
class BuildLimits:
    """Seconds a build step (``step``) and the import check may take; bytes of a build's
    log kept before only its tail is (``log``); bytes an environment and its build's
    scratch may hold on disk while it builds (``disk``) and the environment's files once
    built (``size``: more cannot be shared, see ``runner.deblend.shared``)."""

    step: float = 1800.0
    import_check: float = 300.0
    log: int = 4 * 2**20
    disk: int = 8 * 2**30
    size: int = 2 * 2**30


BUILD_LIMITS = BuildLimits()


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
    uv: str | None, env: Path, source: Path, adapter: Adapter
) -> tuple[list[list[str]], list[list[str]]]:
    """The trusted steps, run as the runner with network: create the environment, install
    exactly the lock (no resolution, copies of uv's cache), check that it is complete.
    Then the revision's own (its build runs its code), run behind the sandbox and with no
    cache (a revision could poison it): install the revision without build isolation,
    without dependencies and offline."""
    python = str(env / "bin" / "python")
    lock = str(adapter.lock)
    if uv:
        install = [uv, "pip", "install", "--python", python, "--no-progress", "--link-mode=copy"]
        trusted = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(env)],
            [*install, "--no-deps", "--requirement", lock],
            [uv, "pip", "check", "--python", python],
        ]
        own = [*install, "--no-cache", "--no-build-isolation", "--reinstall", "--no-deps"]
        return trusted, [[*own, "--offline", str(source)]]
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    trusted = [
        [sys.executable, "-m", "venv", str(env)],
        [*pip, "--no-deps", "--requirement", lock],
        [python, "-m", "pip", "check"],
    ]
    own = [*pip, "--no-cache-dir", "--no-build-isolation", "--no-deps", "--no-index"]
    return trusted, [[*own, str(source)]]


def _probe(
    env: Path,
    adapter: Adapter,
    sandbox: Isolation | None,
    scratch: Path,
    variables: dict[str, str],
    log: CappedLog,
) -> dict:
    """Import the deblender with the environment's interpreter behind ``sandbox`` (seeing
    the environment read-only, writing only ``scratch``), with the environment
    ``variables``, and check where it lives; RuntimeError if it does not import."""
    code = (
        "import importlib, importlib.metadata as md, json, platform, sys, numpy\n"
        f"m = importlib.import_module({adapter.module!r})\n"
        "packages = {d.metadata['Name']: d.version for d in md.distributions()}\n"
        "info = {'version': getattr(m, '__version__', 'unknown'), 'file': m.__file__,"
        " 'numpy': numpy.__version__, 'packages': packages,"
        " 'python': platform.python_version()}\n"
        "sys.__stdout__.write('\\n' + json.dumps(info) + '\\n')\n"
    )
    prefix = sandbox.prefix([scratch], [env], owner=f"build-{env.name}") if sandbox else ()
    with tempfile.TemporaryFile(dir=env.parent) as out:
        command = [str(env / "bin" / "python"), "-I", "-c", code]
        code_ = _supervise(
            [*prefix, *command], variables, env, log, [scratch], out, BUILD_LIMITS.import_check
        )
        if code_ != 0:
            reason = code_ if isinstance(code_, str) else f"exit {code_}"
            raise RuntimeError(f"import {adapter.module} failed ({reason})")
        out.seek(max(out.seek(0, os.SEEK_END) - 4 * 2**20, 0))
        lines = out.read().decode(errors="replace").splitlines()
    try:
        info = json.loads(lines[-1])
        if not Path(info["file"]).resolve().is_relative_to(env.resolve()):
            raise RuntimeError(f"{adapter.module} was imported from {info['file']}, outside {env}")
        return info
    except (ValueError, IndexError, KeyError, TypeError):
        raise RuntimeError(f"import {adapter.module}: no description came back") from None


def reproducible_variables(env: Path) -> dict[str, str]:
    """Variables that make the same source build to the same bytes in any environment
    ``env``: no debug information (it names the build's folder), the environment's path
    mapped to ``.`` wherever else the compiler would write it (``__FILE__``, assertions),
    and a fixed time for what a build stamps. Then a revision that changes no compiled
    source installs extension modules byte-identical to base's (``installed_hash``)."""
    flags = f"-g0 -ffile-prefix-map={env}=."
    return {"CFLAGS": flags, "CXXFLAGS": flags, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}


def requirement_conflicts(
    env: Path, variables: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> list[str]:
    """Every declared requirement the environment at ``env`` does not meet, one line each,
    as ``uv pip check`` (or ``pip check``) reports it, reading the metadata the build
    wrote. Both start the environment's interpreter, whose start-up runs the revision's
    ``.pth`` files: it runs behind ``prefix`` (a sandbox that sees ``env`` and uv)."""
    uv, python = uv_binary(), str(env / "bin" / "python")
    check = [uv, "pip", "check", "--no-cache", "--python", python]
    if not uv:
        check = [python, "-m", "pip", "check", "--disable-pip-version-check"]
    check = [*prefix, *check]
    result = subprocess.run(
        check, capture_output=True, text=True, env=variables, cwd=env, check=False
    )
    if result.returncode == 0:
        return []
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    found = [line for line in lines if line.startswith("The package ") or "requirement " in line]
    if found:
        return found
    what = "; ".join(line for line in lines if line and not line.startswith(NOT_CONFLICTS))
    return [f"the requirement check could not run: {what}"]


def _conflicts(env: Path, sandbox: Isolation | None, variables: dict[str, str] | None) -> list[str]:
    """``requirement_conflicts`` of ``env``, behind ``sandbox`` where there is one (the
    check starts the revision's interpreter), writing only a scratch folder of its own."""
    if sandbox is None:
        return requirement_conflicts(env, variables)
    with tempfile.TemporaryDirectory(dir=env.parent) as scratch:
        uv = uv_binary()
        readable = [env, *([Path(uv)] if uv else [])]
        prefix = sandbox.prefix([Path(scratch)], readable, owner=f"build-{env.name}")
        own = {**(variables or {}), "HOME": scratch, "TMPDIR": scratch}
        return requirement_conflicts(env, own, prefix)


def _tail(log: Path) -> str:
    return read_tail(log, LOG_TAIL_LINES)


def _remove(env: Path, seconds: float = 10.0) -> None:
    """Remove the folder ``env`` (a build that was killed left it half made) and wait until
    it is gone: a killed build's sandboxed processes may write into it for a moment more,
    and ``uv venv`` refuses a folder that exists. An OSError (the runner's, never the
    revision's failure) if it stays."""
    deadline = time.monotonic() + seconds
    while True:
        shutil.rmtree(env, ignore_errors=True)
        if not env.exists():
            return
        if time.monotonic() > deadline:
            raise OSError(f"{env} cannot be removed to build it afresh")
        time.sleep(0.1)


def _clear(path: Path) -> None:
    """Remove whatever a revision's build left at ``path``: a symbolic link there would
    send our write elsewhere."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _variables() -> tuple[dict[str, str], dict[str, str]]:
    """The trusted steps' variables (ours that builds need, uv's and pip's but its link
    mode), and the revision's own steps' (offline: none of uv's, pip's or the
    certificates')."""
    trusted = {
        key: value
        for key, value in os.environ.items()
        if (key in BUILD_VARIABLES or key.startswith(("UV_", "PIP_", "LC_")))
        and key != "UV_LINK_MODE"
    }
    trusted.update(PIP_NO_INPUT="1", MAX_JOBS=str(os.cpu_count() or 1))
    own = {k: v for k, v in trusted.items() if k in ("PATH", "LANG", "MAX_JOBS", "PIP_NO_INPUT")}
    own.update({k: v for k, v in trusted.items() if k.startswith("LC_")})
    return trusted, own


def _without_credentials(value: str) -> str:
    """A list of addresses with any user name and password taken out."""

    def plain(address: str) -> str:
        parts = urlsplit(address)
        if not parts.netloc or "@" not in parts.netloc:
            return address
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))

    return " ".join(plain(address) for address in value.split())


def _local_links(variables: dict[str, str]) -> list[Path]:
    """The local folders that ``UV_FIND_LINKS`` names (the offline install reads them)."""
    names = re.split(r"[\s,]+", variables.get("UV_FIND_LINKS", ""))
    found = [Path(name.removeprefix("file://")) for name in names if name]
    return [path.resolve() for path in found if path.is_absolute() and path.is_dir()]


def _build(
    env: Path,
    source: Path,
    adapter: Adapter,
    log_path: Path,
    sandbox: Isolation | None,
    compiler_cache: CompilerCache | None,
    newest: bool = False,
) -> dict:
    """Build ``env``: the trusted steps as the runner, then the revision's own behind
    ``sandbox``, from a copy of ``source`` in ``env`` (removed after), compiling through
    ``compiler_cache``, writing only the environment, a scratch folder and the compiler
    cache if this build may; for the ``newest`` environment, its requirements at their
    newest; finally the import check, there too (writing only the scratch). Returns what
    the import check found, and the compiler cache's summary."""
    uv = uv_binary()
    if newest and not uv:
        raise BuildError("the newest environment is built with uv, which is missing", "", log_path)
    trusted_env, own_env = _variables()
    owner = f"build-{env.name}"
    with (
        open(log_path, "wb") as stream,
        # Not named after the environment: ccache would count it in (CCACHE_BASEDIR is a
        # prefix of strings, not of paths).
        tempfile.TemporaryDirectory(prefix=f"build-{env.name}.", dir=env.parent) as folder,
        tempfile.TemporaryDirectory(prefix=f"runner-{env.name}.", dir=env.parent) as ours,
    ):
        log = CappedLog(stream, BUILD_LIMITS.log)
        scratch = Path(folder)
        own_env.update(HOME=str(scratch), TMPDIR=str(scratch), PIP_NO_INPUT="1")
        own_env.update(reproducible_variables(env))
        if compiler_cache:
            own_env.update(compiler_cache.variables(env, scratch))
        # The tree goes into the environment once it exists: then the paths of the headers
        # the environment holds, relative to the tree, are the same in every environment.
        tree = env / SOURCE
        trusted, own = _steps(uv, env, tree, adapter)
        for step in trusted:
            _run(step, (), trusted_env, None, log, log_path, [])
        watched = [env, scratch]
        readable = [Path(uv)] if uv else []
        if compiler_cache is not None:
            readable += compiler_cache.readable()
        counted = compiler_cache.counts() if compiler_cache else {}
        try:
            shutil.copytree(source, tree, symlinks=True)
            writable = [env, scratch, *(compiler_cache.binds() if compiler_cache else [])]
            for step in own:
                prefix = sandbox.prefix(writable, readable, owner) if sandbox else ()
                _run(step, prefix, own_env, scratch, log, log_path, watched)
            if newest:
                _install_newest(
                    env, adapter, uv, Path(ours), sandbox, trusted_env, own_env, log, log_path
                )
        finally:
            _clear(tree)  # before the import check, which must not find the package there
        size = _size(env)
        if size > BUILD_LIMITS.size:
            message = (
                f"the environment holds {size / 2**30:.2f} GiB, over the limit of"
                f" {BUILD_LIMITS.size / 2**30:g} GiB"
            )
            log.note(f"{message}\n")
            raise BuildError(message, _tail(log_path), log_path)
        try:
            info = _probe(env, adapter, sandbox, scratch, own_env, log)
        except RuntimeError as error:
            log.note(f"{error}\n")
            raise BuildError(str(error).splitlines()[0], _tail(log_path), log_path) from None
        info["compiler_cache"] = (
            compiler_cache.summary(scratch, counted) if compiler_cache else None
        )
        info["conflicts"] = _conflicts(env, sandbox, own_env if sandbox else trusted_env)
        log.note("".join(f"requirement not met: {line}\n" for line in info["conflicts"]))
        return info


def _install_newest(
    env: Path,
    adapter: Adapter,
    uv: str,
    ours: Path,
    sandbox: Isolation | None,
    trusted_env: dict[str, str],
    own_env: dict[str, str],
    log: CappedLog,
    log_path: Path,
) -> None:
    """Bring the revision's requirements in ``env`` to their newest releases: resolved and
    fetched by the runner (wheels only, into ``ours``, a folder of its own), installed
    behind ``sandbox`` without network from what was fetched, then checked there."""
    requirements = ours / "requirements.in"
    requirements.write_text("".join(f"{r}\n" for r in requires(env, adapter.module)))
    resolved, cache, staging = ours / "resolved.txt", ours / "uv-cache", ours / "staging"
    cache.mkdir()
    compile_ = [uv, "pip", "compile", "--quiet", "--no-header", "--no-build", "--no-progress"]
    compile_ += ["--python", sys.executable, "--output-file", str(resolved), str(requirements)]
    fetch = [uv, "pip", "install", "--quiet", "--no-deps", "--no-build", "--link-mode=copy"]
    fetch += ["--cache-dir", str(cache), "--python", str(staging / "bin" / "python")]
    for step in (
        compile_,
        [uv, "venv", "--quiet", "--python", sys.executable, str(staging)],
        [*fetch, "--requirement", str(resolved)],
    ):
        _run(step, (), trusted_env, None, log, log_path, [])
    shutil.rmtree(staging)
    python = str(env / "bin" / "python")
    install = [uv, "pip", "install", "--offline", "--no-deps", "--no-build", "--no-progress"]
    install += ["--link-mode=copy", "--cache-dir", str(cache), "--python", python]
    check = [uv, "pip", "check", "--offline", "--cache-dir", str(cache), "--python", python]
    # Where packages come from (credentials taken out), for uv to find what was fetched.
    index = {k: _without_credentials(v) for k, v in trusted_env.items() if k in INDEX_VARIABLES}
    readable = [Path(uv), resolved, *_local_links(index)]
    scratch = Path(own_env["HOME"])
    writable = [env, scratch, cache]
    for step in ([*install, "--requirement", str(resolved)], check):
        prefix = sandbox.prefix(writable, readable, f"build-{env.name}") if sandbox else ()
        _run(step, prefix, {**own_env, **index}, scratch, log, log_path, writable)


def requires(env: Path, module: str) -> list[str]:
    """The requirements (``Requires-Dist``) of the installed distribution holding
    ``module``, read from its metadata (at most its first MiB)."""
    root = site_packages(env)
    files = record(root, module)
    infos = {Path(p).parts[0] for p in files if Path(p).parts[0].endswith(".dist-info")}
    for info in sorted(infos):
        metadata = root / info / "METADATA"
        if metadata.is_file() and not metadata.is_symlink():
            with open(metadata, "rb") as stream:
                text = stream.read(2**20).decode(errors="replace")
            return HeaderParser().parsestr(text).get_all("Requires-Dist") or []
    raise InstalledError(f"no metadata of {module}'s distribution in {root}")


def _size(path: Path) -> int:
    """Bytes of the files under ``path`` (as a packed archive would hold them)."""
    return sum(stat.st_size for stat in _stats([path]))


def _disk(paths: list[Path]) -> int:
    """Bytes of disk the files under ``paths`` take."""
    return sum(stat.st_blocks * 512 for stat in _stats(paths))


def _stats(paths: list[Path]) -> Iterator[os.stat_result]:
    """The status of every file under ``paths`` (links themselves, not what they name)."""
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                with suppress(OSError):
                    yield os.lstat(os.path.join(root, name))


LIVE_BUILDS: set[subprocess.Popen] = set()  # build steps running, each in its own session


def kill_all_builds() -> None:
    """Kill every running build step's session: it would outlive the runner otherwise and
    go on writing into an environment another run then builds."""
    for process in list(LIVE_BUILDS):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _supervise(
    command: list[str],
    variables: dict[str, str],
    cwd: Path | None,
    log: CappedLog,
    watched: list[Path],
    stdout,
    timeout: float,
) -> int | str:
    """Run ``command``, its output (stdout too unless ``stdout`` is a file) into ``log``;
    its exit code, or why it was stopped: past ``timeout`` seconds, or the ``watched``
    folders holding more than the disk limit."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.STDOUT if stdout is None else subprocess.PIPE,
        env=variables,
        cwd=cwd,
        start_new_session=True,
    )
    LIVE_BUILDS.add(process)
    pipe = process.stdout if stdout is None else process.stderr
    copier = threading.Thread(target=lambda: _copy(pipe, log), daemon=True)
    copier.start()
    deadline = time.monotonic() + timeout
    stopped = None
    while stopped is None:
        try:
            process.wait(timeout=min(DISK_CHECK_INTERVAL, max(deadline - time.monotonic(), 0.01)))
            break
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            stopped = f"took longer than {timeout:g} s"
        elif watched and (used := _disk(watched)) > BUILD_LIMITS.disk:
            stopped = (
                f"wrote {used / 2**30:.1f} GiB, over the limit of {BUILD_LIMITS.disk / 2**30:g} GiB"
            )
    if stopped is not None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    LIVE_BUILDS.discard(process)
    copier.join()
    pipe.close()
    log.close_part()
    return stopped if stopped is not None else process.returncode


def _copy(pipe, log: CappedLog) -> None:
    for chunk in iter(lambda: pipe.read1(1 << 16), b""):
        log.write(chunk)


def _run(
    step: list[str],
    prefix: tuple[str, ...],
    variables: dict[str, str],
    cwd: Path | None,
    log: CappedLog,
    log_path: Path,
    watched: list[Path],
) -> None:
    """Run one build step behind ``prefix``, logging to ``log``; a BuildError if it fails
    or is stopped (past the step's timeout, over the disk limit)."""
    log.note(f"$ {' '.join(step)}\n")
    outcome = _supervise([*prefix, *step], variables, cwd, log, watched, None, BUILD_LIMITS.step)
    if outcome != 0:
        name = Path(step[0]).name + " " + " ".join(step[1:3])
        if isinstance(outcome, str):
            message = f"'{name}' {outcome}; stopped"
        elif outcome < 0 or outcome > 128:
            signal_number = -outcome if outcome < 0 else outcome - 128
            message = f"'{name}' was killed by signal {signal_number}" + _signal_reason(
                signal_number
            )
        else:
            message = f"'{name}' exited {outcome}"
        log.note(f"{message}\n")
        raise BuildError(message, _tail(log_path), log_path)


def _signal_reason(number: int) -> str:
    """Why the sandbox's limits would send signal ``number``."""
    return {25: " (a file over the size limit)", 9: ""}.get(number, "")


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
            _remove(env)
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
            info["conflicts"] = _conflicts(env, sandbox, _variables()[1] if sandbox else None)
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
