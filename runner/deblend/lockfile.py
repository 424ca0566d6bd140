"""Adopting a drift run's newer versions into a lock, for a maintainer to review.

The new lock keeps every comment and the order of the old one: a changed package's line
gets the new version, a package the newest environment no longer has is dropped, and
packages new to it are appended under a comment saying where they came from.
"""

from __future__ import annotations

import re

from runner.result import PackageChange

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s#]+)(.*)$")


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` is ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def adopt(lock: str, changes: list[PackageChange], source: str) -> str:
    """``lock`` with ``changes`` applied; ``source`` names the drift run in the comment
    over appended packages. (The deblender never moves: both environments of a drift run
    install the same revision.)"""
    wanted = {c.name: c.newest for c in changes}
    lines, seen = [], set()
    for line in lock.splitlines():
        match = PIN.match(line)
        name = normalise(match.group(1)) if match else None
        if name is None or name not in wanted:
            lines.append(line)
            continue
        seen.add(name)
        if wanted[name] is not None:
            lines.append(f"{match.group(1)}=={wanted[name]}{match.group(3)}")
    added = sorted(name for name, version in wanted.items() if name not in seen and version)
    if added:
        lines.append(f"# Added by `python -m runner lock adopt` from {source}:")
        lines += [f"{name}=={wanted[name]}" for name in added]
    return "\n".join(lines) + "\n"
