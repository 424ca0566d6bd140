"""The compiler cache of the revisions' builds: ccache (Debian's ``ccache``), written by
trusted builds only.

A revision's C and C++ code compiles through ccache (``CC`` and ``CXX`` wrapped) from
``<cache>/ccache``, so a revision whose compiled sources and build requirements are those
of one built before (a pull request that changes only Python) compiles nothing: ccache
keys an object on the compiler (its name, size and modification time), the command line but
the options that only affect preprocessing (``-D``, ``-I``: their effect is in the
source) and the preprocessed source, in which paths are hashed as ccache finds them. So
that these are the same for every revision, the tree builds inside its environment
(``environments.SOURCE``), ccache hashes the paths under the environment (the tree, the
headers the lock installed: pybind11's, Eigen's) relative to the build's working folder
(``CCACHE_BASEDIR``), and not that folder itself, which debug information names
(``CCACHE_NOHASHDIR``). A hit's object is byte for byte the one the writing build compiled.

A cache that pull requests could write would let one poison the objects of later builds,
so only trusted builds write it: those of a run of the protected default branch's own
commits (``--trusted-ref``), which the sandbox binds it writable for. Every other build
sees it read-only, ccache told not to write (``CCACHE_READONLY``, no statistics). Each
cache belongs to the trusted ref that writes it (``<cache>/ccache/<ref>``, and the store's
key names it too): a run reads the one of its ``--trusted-ref``, or of the branch its base
was given as (only a trusted run of that branch can have written it).

The hits and misses of a trusted build are counted by the runner, from ccache's own
statistics before and after (``ccache --print-stats``, run outside the sandbox); they
decide whether the cache is shared. A read-only build's counts are its own account (a log
in its scratch folder, ``CCACHE_STATSLOG``, which its code could rewrite): shown, never
acted on. Where ccache is missing, revisions build without a cache. With a store, the
cache travels between machines (``runner.deblend.shared``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

STATS_LOG = "ccache-stats.log"
MISS = "cache_miss"
RESULTS = {MISS, "direct_cache_hit", "preprocessed_cache_hit"}  # of a cacheable compilation
MAX_SIZE = "1G"  # what ccache keeps of a trusted ref's cache (it evicts the oldest)
STATS_LIMIT = 2**20  # bytes of a read-only build's own statistics log read
# A summary's counts, of a build that could write the cache.
_WRITABLE = re.compile(r"ccache: \d+ hits?, (\d+) miss(?:es)? \(writable")


def ref_folder(ref: str) -> str:
    """A trusted ref as one folder or key name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", ref.removeprefix("refs/heads/")) or "_"


@dataclass(frozen=True)
class CompilerCache:
    """The ccache folder ``path`` of the trusted ref ``ref``, and whether this build may
    add to it (``writable``: a trusted run's) or only read it."""

    path: Path
    writable: bool = False
    ref: str = ""

    def binds(self) -> list[Path]:
        """What the sandbox must let the build write: the cache if writable (made here)."""
        if not self.writable or ccache() is None:
            return []
        self.path.mkdir(parents=True, exist_ok=True)
        return [self.path]

    def readable(self) -> list[Path]:
        """What the sandbox must let a read-only build see: the cache, if there is one."""
        if self.writable or ccache() is None or not self.path.is_dir():
            return []
        return [self.path]

    def variables(self, env: Path, scratch: Path) -> dict[str, str]:
        """The variables that compile the revision built in ``env`` through the cache,
        ccache's own files and statistics log in ``scratch``; none without ccache."""
        binary = ccache()
        if binary is None:
            return {}
        cc, cxx = sysconfig.get_config_vars("CC", "CXX")
        variables = {
            "CC": f"{binary} {cc}",
            "CXX": f"{binary} {cxx}",
            "CCACHE_DIR": str(self.path),
            "CCACHE_BASEDIR": str(env),
            "CCACHE_NOHASHDIR": "1",
            "CCACHE_TEMPDIR": str(scratch),
            "CCACHE_STATSLOG": str(scratch / STATS_LOG),
            "CCACHE_MAXSIZE": MAX_SIZE,
        }
        if not self.writable:
            variables.update(CCACHE_READONLY="1", CCACHE_NOSTATS="1")
        return variables

    def counts(self) -> dict[str, int]:
        """ccache's statistics of this cache, read by the runner (empty where there are
        none, or for a read-only build, which keeps none)."""
        binary = ccache()
        if binary is None or not self.writable or not self.path.is_dir():
            return {}
        result = subprocess.run(
            [binary, "--print-stats"],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), "CCACHE_DIR": str(self.path)},
            timeout=60,
            check=False,
        )
        counts = {}
        for line in result.stdout.splitlines():
            name, _, value = line.partition("\t")
            if value.strip().isdigit():
                counts[name] = int(value)
        return counts

    def summary(self, scratch: Path, before: dict[str, int]) -> str | None:
        """One line on what the build whose scratch folder is ``scratch`` compiled: its
        hits and misses and whether it could write the cache. A writable build's are
        counted by the runner (ccache's statistics now against ``before``: a setup.py's
        checks of compiler flags, on temporary files that never hit, are misses there
        too); a read-only build's come from its own log, those checks counted apart. None
        if it compiled nothing."""
        if ccache() is None:
            return "no ccache on this machine: compiled without a cache"
        if self.writable:
            after = self.counts()
            change = {key: after.get(key, 0) - before.get(key, 0) for key in RESULTS}
            misses = change[MISS]
            hits = sum(change.values()) - misses
            if not hits + misses:
                return None
            return f"ccache: {_count(hits, 'hit')}, {_count(misses, 'miss')} (writable)"
        compiled = [(path, results) for path, results in _calls(scratch / STATS_LOG) if results]
        if not compiled:
            return None
        inside = [results for path, results in compiled if not os.path.isabs(path)]
        hits = sum(MISS not in results for results in inside)
        misses = len(inside) - hits
        line = f"ccache: {_count(hits, 'hit')}, {_count(misses, 'miss')} (read-only"
        line += "; the build's own count)"
        if outside := len(compiled) - len(inside):
            line += f", not counting {_count(outside, 'compiler check')} outside the environment"
        return line


def ccache() -> str | None:
    """The ccache executable on PATH, if there is one."""
    return shutil.which("ccache")


def added(summary: str | None) -> bool:
    """Whether the build that ``summary`` (:meth:`CompilerCache.summary`) describes added
    objects to the cache: it could write it and, by the runner's count, missed."""
    counts = _WRITABLE.match(summary or "")
    return counts is not None and int(counts[1]) > 0


def compilers() -> list[list]:
    """The compilers builds call (``CC``, ``CXX``) as ccache tells them apart: the command,
    and the path, size and modification time of its program."""
    described = []
    for command in filter(None, sysconfig.get_config_vars("CC", "CXX")):
        program = shutil.which(command.split()[0])
        found = os.stat(program) if program else None
        described.append([command, program, found and found.st_size, found and found.st_mtime_ns])
    return described


def _count(number: int, noun: str) -> str:
    plural = "es" if noun.endswith("s") else "s"
    return f"{number} {noun}{'' if number == 1 else plural}"


def _calls(log: Path) -> list[tuple[str, set[str]]]:
    """The calls of ccache a statistics log records (its first MiB): the source file
    (relative to the build's folder where it is under the base folder) and its cacheable
    results."""
    calls: list[tuple[str, set[str]]] = []
    try:  # the build made the file: it may be a link or a pipe
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return calls
    with open(fd, "rb") as stream:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        lines = stream.read(STATS_LIMIT).decode(errors="replace").splitlines() if regular else []
    for line in lines:
        if line.startswith("# "):
            calls.append((line[2:], set()))
        elif calls and line in RESULTS:
            calls[-1][1].add(line)
    return calls
