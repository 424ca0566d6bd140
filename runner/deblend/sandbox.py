"""Running untrusted code (a revision's build, its deblender) with a read-only view of the
machine, out of reach of secrets and, unless it needs it, of the network.

Where bubblewrap (``bwrap``) runs, such a command sees the whole file system read-only but
for the folders it is given to write (its own scratch and output), the folders of secret
files covered by an empty read-only tmpfs (a secret file whose folder the command needs by
``/dev/null``), a ``/proc`` and ``/dev`` of its own (no other process is visible), and no
network unless asked for. It runs without capabilities, so it cannot unmount a cover or
remount anything writable, in a session of its own, and dies with the runner. Where bwrap
cannot run (no user namespaces), only ``unshare --net`` may: commands without network then
lose it, but see and write what the runner does; where not even that is, nothing is
isolated. :class:`Isolation` says which, for the run result's provenance.

Secret files are those :func:`runner.secretfiles.secret_paths` finds in the runner's
environment.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.secretfiles import secret_paths


@dataclass(frozen=True)
class Isolation:
    """How untrusted commands run here: ``tool`` is ``bwrap``, ``unshare`` (a network
    namespace only) or empty (nothing); with or without ``network``; ``hidden`` the
    secret paths covered, as (path, is a folder)."""

    tool: str
    network: bool
    hidden: tuple[tuple[Path, bool], ...] = ()

    def prefix(self, writable: Iterable[Path] = ()) -> tuple[str, ...]:
        """The command prefix that runs a command so, able to write ``writable`` only
        (existing folders) where bwrap runs."""
        if self.tool == "bwrap":
            return _bwrap(writable, self.hidden, self.network)
        if self.tool == "unshare":
            return (shutil.which("unshare") or "unshare", "--net")
        return ()

    def describe(self) -> str:
        """One line for provenance and logs."""
        if self.tool == "bwrap":
            network = "network reachable" if self.network else "no network"
            hidden = ", ".join(str(path) for path, _ in self.hidden) or "nothing (no secret files)"
            return (
                f"bwrap: file system read-only but the command's own scratch and output; "
                f"{network}; no other process visible; hidden: {hidden}"
            )
        if self.tool == "unshare":
            return (
                "unshare --net: no network; bwrap cannot run here, so the file system is"
                " writable and no file hidden"
            )
        return (
            "none: bwrap cannot run here (file system writable, no file hidden, network reachable)"
        )


def needed_paths(extra: Iterable[Path]) -> list[Path]:
    """What untrusted commands must still reach: ``extra``, the interpreter, this package,
    home, the working and temporary folders and every folder on ``PATH``."""
    paths = [*extra, Path(sys.prefix), Path(sys.base_prefix), Path(__file__).parent]
    paths += [Path.home(), Path.cwd(), Path(tempfile.gettempdir())]
    paths += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return [Path(p).resolve() for p in paths]


def hiding(secrets: Iterable[Path], needed: Iterable[Path]) -> list[tuple[Path, bool]]:
    """What to cover, as (path, is a folder): each secret's folder (or the secret folder
    itself), unless something needed is in it; then the secret file alone (unless the
    command needs that file too)."""
    needed = list(needed)
    chosen: list[tuple[Path, bool]] = []
    for secret in (s for s in secrets if s not in needed):
        folder = secret if secret.is_dir() else secret.parent
        if not any(p == folder or p.is_relative_to(folder) for p in needed):
            target = (folder, True)
        elif secret.is_file():
            target = (secret, False)
        else:
            continue  # a folder that holds what the command needs: cannot be covered
        if not any(target[0].is_relative_to(path) for path, is_dir in chosen if is_dir):
            chosen = [(p, d) for p, d in chosen if not p.is_relative_to(target[0])] + [target]
    return chosen


def _bwrap(
    writable: Iterable[Path], hidden: Iterable[tuple[Path, bool]], network: bool
) -> tuple[str, ...]:
    """bwrap's command line: everything read-only, then ``writable`` bound writable, then
    the ``hidden`` paths covered (a cover wins over a writable folder)."""
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--cap-drop", "ALL"]
    args += ["--share-net"] if network else []
    args += ["--die-with-parent", "--new-session"]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    for path, is_dir in hidden:
        cover = ["--tmpfs", str(path), "--remount-ro", str(path)]
        args += cover if is_dir else ["--ro-bind", "/dev/null", str(path)]
    return (*args, "--")


@functools.cache
def _runs(tool: str) -> bool:
    """Whether ``tool`` (``bwrap`` with a folder written and one hidden, or ``unshare``
    for a network namespace) runs here."""
    if shutil.which(tool) is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        if tool == "bwrap":
            (Path(folder) / "hidden").mkdir()
            command = [*_bwrap([Path(folder)], [(Path(folder) / "hidden", True)], False)]
            command += ["touch", str(Path(folder) / "written")]
        else:
            command = [tool, "--net", "true"]
        probe = subprocess.run(command, capture_output=True, check=False)
    return probe.returncode == 0


def isolation(environ: Mapping[str, str], needed: Iterable[Path], *, network: bool) -> Isolation:
    """The strongest isolation this machine permits for an untrusted command: secrets in
    ``environ`` hidden from it (keeping ``needed`` reachable), and no network unless
    ``network``."""
    if _runs("bwrap"):
        targets = hiding(secret_paths(environ), needed_paths(needed))
        return Isolation("bwrap", network, tuple(targets))
    if not network and _runs("unshare"):
        return Isolation("unshare", network)
    return Isolation("", network)
