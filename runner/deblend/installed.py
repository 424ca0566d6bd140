"""What a revision installs, and whether a change between two revisions can reach it.

Two questions decide that head cannot change a model, so that it need not be deblended:

- before building head: does any file changed between base and head go into the
  installed package? Decided from the git diff and base's installed files (the RECORD of
  its deblender's distribution), never by running head's build. A changed file reaches
  the install when it is a build input (``setup.py``, ``pyproject.toml``, a C or C++
  source, ...), lies in a directory of an installed package (which also covers a file
  head adds there), has the name of an installed file (data files may be installed
  elsewhere than they lie), is a ``.pth`` file, an ``__init__.py`` or a submodule.
  Everything else (documentation, CI files, tests outside the package) cannot change
  what is installed.
- after building head: are the installed files byte-identical to base's? Hashed from the
  files themselves, leaving out the distribution's metadata (``*.dist-info``), bytecode,
  and version files (``_version.py``, ``version.py``, ``_version.txt``), which carry the
  SHA.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from runner.deblend.revisions import git

BUILD_FILES = frozenset(
    {"setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "CMakeLists.txt", "meson.build"}
)
SOURCE_SUFFIXES = frozenset(
    {".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx", ".pyx", ".pxd", ".pxi", ".cu"}
)
GITLINK = "160000"  # git's mode of a submodule
VERSION_FILES = frozenset({"_version.py", "version.py", "_version.txt"})


class InstalledError(RuntimeError):
    """An environment whose deblender's installed files cannot be listed."""


RECORD_LIMIT = 16 * 2**20  # bytes of a RECORD read (the revision's build wrote it)


def _regular(path: Path) -> BinaryIO | None:
    """``path`` opened for reading if it is a regular file (never a link, a pipe, a
    device: the revision's build made it), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return open(fd, "rb")


def record(site_packages: Path, module: str) -> list[str]:
    """The files the distribution holding ``module`` installed, from its RECORD, as paths
    relative to ``site_packages`` (POSIX)."""
    for info in sorted(site_packages.glob("*.dist-info")):
        stream = _regular(info / "RECORD")
        if stream is None:
            continue
        with stream:
            text = stream.read(RECORD_LIMIT).decode(errors="replace")
        rows = csv.reader(io.StringIO(text))
        paths = [row[0] for row in rows if row]
        if any(PurePosixPath(p).parts[0] in (module, f"{module}.py") for p in paths):
            return paths
    raise InstalledError(f"no installed distribution of {module} in {site_packages}")


def site_packages(env: Path) -> Path:
    """The site-packages folder of a virtual environment."""
    found = sorted(env.glob("lib/python*/site-packages"))
    if not found:
        raise InstalledError(f"no site-packages in {env}")
    return found[0]


def _package_files(paths: list[str]) -> list[PurePosixPath]:
    """The installed files that are the package's own: no metadata, bytecode, scripts."""
    files = []
    for path in map(PurePosixPath, paths):
        if path.is_absolute() or path.parts[0].endswith(".dist-info") or ".." in path.parts:
            continue
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        files.append(path)
    return files


def changed_files(repo: Path, base: str, head: str) -> list[str]:
    """Files that differ between two commits (both sides of a rename listed); a changed
    submodule's path ends in ``/`` (what it holds is not in the diff)."""
    fields = git(repo, "diff", "--raw", "--no-renames", "--no-abbrev", "-z", base, head)
    parts = fields.split("\0")
    changed = []
    for status, name in zip(parts[0::2], parts[1::2], strict=False):
        modes = status.lstrip(":").split()[:2]
        changed.append(name + ("/" if GITLINK in modes else ""))
    return sorted(changed)


def reaching(changed: list[str], installed: list[str]) -> list[str]:
    """The changed files (repository paths) that can change what is installed."""
    files = _package_files(installed)
    packages = {f.parts[0] for f in files if len(f.parts) > 1}
    names = {PurePosixPath(p).name for p in installed}  # data files may move on install
    reach = []
    for name in changed:
        path = PurePosixPath(name)
        if (
            name.endswith("/")
            or path.name in BUILD_FILES
            or path.suffix in SOURCE_SUFFIXES
            or path.suffix == ".pth"
            or path.name == "__init__.py"
            or any(part in packages for part in path.parts[:-1])
            or path.name in names
        ):
            reach.append(name)
    return reach


def installed_hash(env: Path, module: str) -> str:
    """sha256 over the deblender's installed files (paths and bytes), metadata, bytecode
    and version files aside."""
    root = site_packages(env)
    digest = hashlib.sha256()
    for path in sorted(_package_files(record(root, module))):
        if path.name in VERSION_FILES:
            continue
        stream = _regular(root / path)
        if stream is None:  # a link or a special file: its name stands for it
            digest.update(f"{path}\0not a regular file\0".encode())
            continue
        with stream:
            digest.update(f"{path}\0{os.fstat(stream.fileno()).st_size}\0".encode())
            for chunk in iter(lambda s=stream: s.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
