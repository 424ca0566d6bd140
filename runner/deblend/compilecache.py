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
so only trusted builds (of a base given as a branch) write it: the sandbox binds it
writable for them. Every other build reads it through the sandbox's read-only file system,
ccache told not to write (``CCACHE_READONLY``, no statistics). Each build counts its own
hits and misses in a log of its scratch folder (``CCACHE_STATSLOG``: the build's own
account, which its code could rewrite). Where ccache is missing, revisions build without
a cache. With a store, the cache travels between machines (``runner.deblend.shared``).
"""

from __future__ import annotations

import os
import re
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

STATS_LOG = "ccache-stats.log"
MISS = "cache_miss"
RESULTS = {MISS, "direct_cache_hit", "preprocessed_cache_hit"}  # of a cacheable compilation
# A summary's counts inside the environment, of a build that could write the cache.
_WRITABLE = re.compile(r"ccache: \d+ hits?, (\d+) miss(?:es)? \(writable\)")


@dataclass(frozen=True)
class CompilerCache:
    """The ccache folder ``path``, and whether this build may add to it (``writable``: a
    trusted revision's) or only read it."""

    path: Path
    writable: bool = False

    def binds(self) -> list[Path]:
        """What the sandbox must let the build write: the cache if writable (made here)."""
        if not self.writable or ccache() is None:
            return []
        self.path.mkdir(parents=True, exist_ok=True)
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
        }
        if not self.writable:
            variables.update(CCACHE_READONLY="1", CCACHE_NOSTATS="1")
        return variables

    def summary(self, scratch: Path) -> str | None:
        """One line on what the build whose scratch folder is ``scratch`` compiled: its
        hits and misses and whether it could write the cache; compilations of files outside
        the environment (a setup.py's checks of compiler flags, on temporary files that
        cannot hit) counted apart. None if it compiled nothing."""
        if ccache() is None:
            return "no ccache on this machine: compiled without a cache"
        compiled = [(path, results) for path, results in _calls(scratch / STATS_LOG) if results]
        if not compiled:
            return None
        inside = [results for path, results in compiled if not os.path.isabs(path)]
        hits = sum(MISS not in results for results in inside)
        mode = "writable" if self.writable else "read-only"
        line = f"ccache: {_count(hits, 'hit')}, {_count(len(inside) - hits, 'miss')} ({mode})"
        if outside := len(compiled) - len(inside):
            line += f", not counting {_count(outside, 'compiler check')} outside the environment"
        return line


def ccache() -> str | None:
    """The ccache executable on PATH, if there is one."""
    return shutil.which("ccache")


def added(summary: str | None) -> bool:
    """Whether the build that ``summary`` (:meth:`CompilerCache.summary`) describes added
    objects to the cache: it could write it and compiled something there."""
    counts = _WRITABLE.match(summary or "")
    return counts is not None and int(counts[1]) > 0


def compilers() -> list[list]:
    """The compilers builds call (``CC``, ``CXX``) as ccache tells them apart: the command,
    and the path, size and modification time of its program."""
    described = []
    for command in filter(None, sysconfig.get_config_vars("CC", "CXX")):
        program = shutil.which(command.split()[0])
        stat = os.stat(program) if program else None
        described.append([command, program, stat and stat.st_size, stat and stat.st_mtime_ns])
    return described


def _count(number: int, noun: str) -> str:
    plural = "es" if noun.endswith("s") else "s"
    return f"{number} {noun}{'' if number == 1 else plural}"


def _calls(log: Path) -> list[tuple[str, set[str]]]:
    """The calls of ccache a statistics log records: the source file (relative to the
    build's folder where it is under the base folder) and its cacheable results."""
    calls: list[tuple[str, set[str]]] = []
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    for line in lines:
        if line.startswith("# "):
            calls.append((line[2:], set()))
        elif calls and line in RESULTS:
            calls[-1][1].add(line)
    return calls
