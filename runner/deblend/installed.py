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
from pathlib import Path, PurePosixPath

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


def record(site_packages: Path, module: str) -> list[str]:
    """The files the distribution holding ``module`` (a dotted name: its top-level
    package's) installed, from its RECORD, as paths relative to ``site_packages`` (POSIX)."""
    top = module.split(".")[0]
    for info in sorted(site_packages.glob("*.dist-info")):
        if not (info / "RECORD").exists():
            continue
        rows = csv.reader(io.StringIO((info / "RECORD").read_text()))
        paths = [row[0] for row in rows if row]
        if any(PurePosixPath(p).parts[0] in (top, f"{top}.py") for p in paths):
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
        if path.parts[0].endswith(".dist-info") or ".." in path.parts:
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
        data = (root / path).read_bytes()
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
