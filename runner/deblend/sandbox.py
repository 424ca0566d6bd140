"""Running untrusted code (a revision's build, its import check, its deblender) on an
allow-list, or not at all.

Where bubblewrap (``bwrap``) runs, such a command starts in an empty root file system,
read-only, in which only what it needs is bound: ``/usr`` and the links to it (``/bin``,
``/lib``, ...), the few files of ``/etc`` that programs look up (the dynamic linker's
cache, the ``alternatives`` that name the compilers, the user and group names), the
interpreter's installation, the folders and files the caller names read-only (its
environment, the worker script) and those it names writable (its own scratch, its
environment while it builds). Nothing else exists there: no ``/home``, ``/root``,
``/work``, no other environment, no blend set, no runner's cache; ``/tmp`` is an empty,
small tmpfs. It runs without capabilities, in namespaces of its own (no other process
visible, no network unless asked for), in a session of its own, and dies with the runner.

Inside, ``prlimit`` (util-linux) caps the processes it may have (``RLIMIT_NPROC``: a fork
bomb fails to fork), the size of any file it writes (``RLIMIT_FSIZE``: an endless log or a
disk fill is killed by ``SIGXFSZ``) and its address space (:class:`Limits`). The kernel does
not apply ``RLIMIT_NPROC`` to root, so a runner running as root (a container) runs each
sandbox as an unprivileged user of its own (``setpriv``, util-linux; ``uid`` from
:data:`SANDBOX_UID`, one per ``owner``: base's and head's processes are counted apart) and
hands it the folders it may write.

Where that cannot run, untrusted commands are refused (:class:`SandboxError`), unless the
caller asks for no isolation at all (``--unsandboxed``, for a developer's own machine).
:meth:`Isolation.describe` says which, for the run result's provenance.

On Cloud Run (``CLOUD_RUN_JOB`` set) :func:`check_offline` proves, from inside the
sandbox, that the metadata server and the internet are out of reach before any untrusted
code runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_UID = 200_000  # a root runner's sandboxes run as SANDBOX_UID + (0..UID_RANGE)
UID_RANGE = 100_000
ETC = ("ld.so.cache", "alternatives", "passwd", "group", "nsswitch.conf", "localtime")
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
TMP_SIZE = 64 * 2**20  # bytes of the sandbox's own /tmp (its TMPDIR is its scratch)
# What the offline check tries to reach from inside the sandbox: the metadata server (by
# address and by name) and two hosts of the internet, by name and by address.
UNREACHABLE = (
    ("169.254.169.254", 80),
    ("metadata.google.internal", 80),
    ("pypi.org", 443),
    ("1.1.1.1", 53),
)
PROBE_TIMEOUT = 3.0


class SandboxError(RuntimeError):
    """Untrusted code that cannot be run as isolated as it must be."""


@dataclass(frozen=True)
class Limits:
    """Per-sandbox caps, applied with ``prlimit``: ``processes`` (``RLIMIT_NPROC``, threads
    count too), ``file_size`` (bytes of any one file written), ``address_space`` (bytes of
    virtual memory per process; None: unlimited)."""

    processes: int = 1024
    file_size: int = 4 * 2**30
    address_space: int | None = 64 * 2**30

    def prlimit(self) -> tuple[str, ...]:
        """The ``prlimit`` command prefix that applies them (and no core dumps)."""
        binary = shutil.which("prlimit") or "prlimit"
        args = [binary, f"--nproc={self.processes}", f"--fsize={self.file_size}", "--core=0"]
        if self.address_space is not None:
            args.append(f"--as={self.address_space}")
        return (*args, "--")


@dataclass(frozen=True)
class Isolation:
    """How untrusted commands run here: ``tool`` ``bwrap`` (the allow-list) or ``none``
    (``--unsandboxed``: nothing isolated); with or without ``network``; ``system`` the
    read-only folders every command gets beyond ``/usr`` and ``/etc``'s few (the
    interpreter's installation); ``limits`` its caps."""

    tool: str
    network: bool = False
    system: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def prefix(
        self, writable: Iterable[Path] = (), readable: Iterable[Path] = (), owner: str = ""
    ) -> tuple[str, ...]:
        """The command prefix that runs a command isolated, seeing ``readable`` (existing
        files or folders) read-only and writing ``writable`` (existing folders) only. A root
        runner's command runs as the unprivileged user of ``owner`` (one per revision),
        which is given ``writable`` here."""
        if self.tool != "bwrap":
            return ()
        writable = [Path(p) for p in writable]
        if os.geteuid() == 0:
            uid = sandbox_uid(owner)
            for path in writable:
                _hand_over(path, uid)
            return _bwrap(writable, [*self.system, *readable], self.network, self.limits, uid)
        return _bwrap(writable, [*self.system, *readable], self.network, self.limits, None)

    def describe(self) -> str:
        """One line for provenance and logs."""
        if self.tool != "bwrap":
            return (
                "none (--unsandboxed): the revisions' code ran with the runner's file system,"
                " network and credentials"
            )
        network = "network reachable" if self.network else "no network"
        limits = self.limits
        space = f"{limits.address_space / 2**30:g} GiB" if limits.address_space else "unlimited"
        user = ", as an unprivileged user of its own" if os.geteuid() == 0 else ""
        return (
            f"bwrap allow-list: an empty read-only root with /usr, a few files of /etc, the"
            f" interpreter, its own environment and scratch only; {network}; no other process"
            f" visible; at most {limits.processes} processes, files of"
            f" {limits.file_size / 2**30:g} GiB, {space} of address space{user}"
        )


def sandbox_uid(owner: str) -> int:
    """The unprivileged user a root runner runs ``owner``'s sandboxes as."""
    digest = int(hashlib.sha256(owner.encode()).hexdigest()[:8], 16)
    return SANDBOX_UID + digest % UID_RANGE


def _hand_over(path: Path, uid: int) -> None:
    """Make ``path`` and everything in it the sandbox user's (links themselves, never
    what they point to)."""
    os.chown(path, uid, uid, follow_symlinks=False)
    for root, folders, files in os.walk(path):
        for name in folders + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _ancestors(paths: Iterable[Path]) -> list[Path]:
    """Every folder above ``paths`` (but ``/``), shallowest first, each once."""
    found: set[Path] = set()
    for path in paths:
        found.update(p for p in Path(path).parents if p != Path("/"))
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def _bwrap(
    writable: Sequence[Path],
    readable: Sequence[Path],
    network: bool,
    limits: Limits,
    uid: int | None,
) -> tuple[str, ...]:
    """bwrap's command line: a new read-only root holding the system's few parts,
    ``readable`` read-only and ``writable`` writable; then, for a root runner (``uid``
    given), ``setpriv`` down to ``uid``; then ``prlimit``."""
    args = [shutil.which("bwrap") or "bwrap"]
    if uid is None:  # an unprivileged runner: a user namespace of its own
        args += ["--unshare-all", "--cap-drop", "ALL"]
        args += ["--share-net"] if network else []
    else:  # root: no user namespace (its root would still be root); setpriv drops to uid
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        args += [] if network else ["--unshare-net"]
        args += ["--cap-drop", "ALL"]
        args += [
            arg for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") for arg in ("--cap-add", cap)
        ]
    args += ["--die-with-parent", "--new-session"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(TMP_SIZE), "--tmpfs", "/tmp"]
    # Folders bwrap makes on its way to a bound path are private to root unless told.
    host = [Path(p) for p in ("/usr", "/etc", "/proc", "/dev")]
    bound = {*readable, *writable}
    for folder in _ancestors(bound):
        if folder in bound or folder == Path("/tmp"):
            continue
        if not any(folder.is_relative_to(h) for h in host):
            args += ["--perms", "0755", "--dir", str(folder)]
    for path in readable:
        args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    args += ["--remount-ro", "/"]
    args.append("--")
    if uid is not None:
        setpriv = shutil.which("setpriv") or "setpriv"
        args += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--"]
    return (*args, *limits.prlimit())


def interpreter_paths() -> list[Path]:
    """What an environment's interpreter needs beyond ``/usr``: its base installation
    (a venv's ``bin/python`` links there), wherever it is."""
    paths = [Path(sys.base_prefix).resolve(), Path(os.path.realpath(sys.executable)).parent]
    return _outermost(p for p in paths if not p.is_relative_to("/usr"))


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without those inside another of them."""
    paths = sorted(set(paths))
    return [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]


def _tools(root: bool) -> list[str]:
    """The programs the sandbox needs: bwrap and prlimit, and setpriv for a root runner."""
    return ["bwrap", "prlimit", *(["setpriv"] if root else [])]


LIMITS = Limits()  # the caps of every sandbox a run starts


def _failure(network: bool, limits: Limits) -> str | None:
    """Why the allow-list sandbox cannot run here (None: it runs)."""
    tools = {tool: shutil.which(tool) for tool in _tools(os.geteuid() == 0)}
    missing = [tool for tool, path in tools.items() if path is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return _probe(tuple(tools.values()), network, limits)


@functools.cache
def _probe(tools: tuple, network: bool, limits: Limits) -> str | None:
    """Why the sandbox made of ``tools`` does not run (None: it runs): a folder written
    and a file outside it unseen, by the interpreter, from inside."""
    way = Isolation("bwrap", network, tuple(interpreter_paths()), limits)
    with tempfile.TemporaryDirectory() as folder:
        work, outside = Path(folder) / "work", Path(folder) / "outside"
        work.mkdir()
        outside.write_text("x")
        written = work / "written"
        code = (
            "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x');"
            " sys.exit(3 if os.path.exists(sys.argv[2]) else 0)"
        )
        probe = [os.path.realpath(sys.executable), "-I", "-S", "-c", code, str(written)]
        probe.append(str(outside))
        try:
            result = subprocess.run(
                [*way.prefix([work], owner="probe"), *probe],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bwrap does not start: {error}"
        if result.returncode == 3:
            return "bwrap runs but shows files outside its allow-list"
        if result.returncode != 0 or not written.exists():
            lines = (result.stderr or "").strip().splitlines() or [f"exit {result.returncode}"]
            return f"bwrap cannot run here: {lines[-1][:200]}"
    return None


def isolation(
    *, network: bool, unsandboxed: bool = False, limits: Limits | None = None
) -> Isolation:
    """How untrusted commands run: behind the allow-list, with or without ``network``; a
    SandboxError where it cannot run, unless ``unsandboxed`` (then nothing is isolated);
    ``limits`` default to :data:`LIMITS`."""
    limits = limits or LIMITS
    if unsandboxed:
        return Isolation("none", True, (), limits)
    failure = _failure(network, limits)
    if failure is not None:
        raise SandboxError(
            f"the sandbox of untrusted code cannot run ({failure}); refusing to run a"
            " revision's code (--unsandboxed runs it unisolated, on your own machine only)"
        )
    return Isolation("bwrap", network, tuple(interpreter_paths()), limits)


PROBE = """
import json, socket, sys
reached = []
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=float(sys.argv[2])).close()
        reached.append(f"{host}:{port}")
    except OSError:
        pass
print(json.dumps(reached))
"""


def check_offline(way: Isolation, targets: Iterable[tuple[str, int]] | None = None) -> None:
    """SandboxError unless none of ``targets`` (host, port; default :data:`UNREACHABLE`)
    can be connected to from inside the sandbox ``way`` (a name that does not resolve is
    out of reach)."""
    targets = UNREACHABLE if targets is None else targets
    command = [os.path.realpath(sys.executable), "-I", "-S", "-c", PROBE]
    command += [json.dumps([list(t) for t in targets]), str(PROBE_TIMEOUT)]
    try:
        result = subprocess.run(
            [*way.prefix(owner="offline-check"), *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        reached = json.loads(result.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        raise SandboxError(f"the sandbox's offline check did not run: {error}") from None
    if reached:
        raise SandboxError(
            f"untrusted code could reach {', '.join(reached)} from inside the sandbox;"
            " refusing to run a revision's code"
        )
