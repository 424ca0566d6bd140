"""Running untrusted code (a revision's build, its deblender) out of reach of secrets.

Where the machine allows it, such a command runs in new user and mount namespaces (and,
for workers, a network namespace of its own): the directories holding secret files are
covered by an empty read-only tmpfs (a secret file whose directory the command needs is
covered by ``/dev/null`` instead), then a second user and mount namespace locks those
mounts, so the command cannot unmount them to look underneath. From inside a user
namespace, ``/proc/<pid>/environ``, ``root`` and ``mem`` of the runner and the bot are
refused too. Where only ``unshare --net`` is permitted, workers lose the network but
nothing is hidden; where not even that is, nothing is isolated. :class:`Isolation` says
which, for the run result's provenance.

Secret files are those named by ``GOOGLE_APPLICATION_CREDENTIALS``, by any ``*_FILE``
variable but certificate authorities' (``SSL_CERT_FILE``, ...) and by ``SCARLET_REGRESSION_HIDE``
(``os.pathsep``-separated, for a caller to name its own) in the runner's environment, and
the folder ``~/.config/gcloud``.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

HIDE_VARIABLE = "SCARLET_REGRESSION_HIDE"

# Mounted over a folder of secrets: empty, read-only, no room to write.
EMPTY_TMPFS = ("mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=0555", "tmpfs")
# Run next in a user and mount namespace of its own: the mounts above are locked there.
LOCK_MOUNTS = ("--user", "--mount", "--")


@dataclass(frozen=True)
class Isolation:
    """How an untrusted command runs: its command prefix and what that prefix does."""

    prefix: tuple[str, ...]
    namespaces: tuple[str, ...]
    hidden: tuple[str, ...]

    def describe(self) -> str:
        """One line for provenance and logs."""
        if not self.namespaces:
            return "none: this machine permits no namespaces (files and network reachable)"
        text = "namespaces: " + ", ".join(self.namespaces)
        if "network" not in self.namespaces:
            text += " (network reachable)"
        if "mount" not in self.namespaces:
            return text + "; no file hidden (no user and mount namespaces here)"
        return text + "; hidden: " + (", ".join(self.hidden) or "nothing (no secret files)")


def _public(variable: str) -> bool:
    """Whether a ``*_FILE`` variable names certificates builds need (``SSL_CERT_FILE``,
    ``NIX_SSL_CERT_FILE``, ...), not a secret (a ``*_CERT_KEY_FILE`` is one)."""
    return "CERT" in variable and "KEY" not in variable


def secret_paths(environ: Mapping[str, str]) -> list[Path]:
    """The existing files and folders holding secrets, named by ``environ``."""
    named = [environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")]
    named += [v for k, v in environ.items() if k.endswith("_FILE") and not _public(k)]
    named += environ.get(HIDE_VARIABLE, "").split(os.pathsep)
    home = environ.get("HOME")
    if home:
        named.append(str(Path(home) / ".config" / "gcloud"))
    paths = {Path(name).resolve() for name in named if name and os.path.isabs(name)}
    return sorted(path for path in paths if path.exists())


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


def _script(unshare: str, targets: list[tuple[Path, bool]]) -> str:
    mounts = [
        [*EMPTY_TMPFS, str(path)] if is_dir else ["mount", "--bind", "/dev/null", str(path)]
        for path, is_dir in targets
    ]
    lines = [
        "set -e",
        *(shlex.join(m) for m in mounts),
        f'exec {shlex.join([unshare, *LOCK_MOUNTS])} "$@"',
    ]
    return "\n".join(lines)


def _namespaces(network: bool) -> tuple[str, ...]:
    """unshare's flags: a user and mount namespace, and a network one unless ``network``."""
    flags = ("--user", "--map-root-user", "--mount")
    return flags if network else (*flags, "--net")


@functools.cache
def _permitted(flags: tuple[str, ...], script: bool) -> bool:
    """Whether ``unshare flags`` runs here (with ``script``: hiding a folder and locking)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        command = [unshare, *flags, "--"]
        if script:
            command += ["sh", "-c", _script(unshare, [(Path(folder), True)]), "sh", "true"]
        else:
            command += ["true"]
        probe = subprocess.run(command, capture_output=True, check=False)
    return probe.returncode == 0


def isolation(environ: Mapping[str, str], needed: Iterable[Path], *, network: bool) -> Isolation:
    """The strongest isolation this machine permits for an untrusted command: secrets in
    ``environ`` hidden from it (keeping ``needed`` reachable), and no network unless
    ``network``."""
    flags = _namespaces(network)
    unshare = shutil.which("unshare") or "unshare"
    if _permitted(flags, script=True):
        targets = hiding(secret_paths(environ), needed_paths(needed))
        prefix = (unshare, *flags, "--", "sh", "-c", _script(unshare, targets), "sh")
        names = ("user", "mount") + (() if network else ("network",))
        return Isolation(prefix, names, tuple(str(path) for path, _ in targets))
    if not network and _permitted(("--net",), script=False):
        return Isolation((unshare, "--net"), ("network",), ())
    return Isolation((), (), ())
