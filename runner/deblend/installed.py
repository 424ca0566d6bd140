"""What a revision installs, and whether a change between two revisions can reach it.

Two questions decide that head cannot change a model, so that it need not be deblended:

- before building head: can any file changed between base and head go into the
  installed package? Decided from the git diff and base's installed files (the RECORD of
  its deblender's distribution), never by running head's build, and only by an allow
  list: head's build is skipped only when every changed file is one that provably
  cannot reach the install: documentation (``docs/``, ``doc/``, ``.md``, ``.rst``), CI
  (``.github/``, ``.travis.yml``, ...), tests outside the package (``tests/``,
  ``test/``), notebooks (``.ipynb``) and metadata-only files (README, LICENSE,
  CITATION, CHANGELOG, ...: at most the distribution's metadata), none of them in an
  installed package's folder nor named as an installed file. Anything else is built, any
  Python file outside the package included (a ``setup.py`` may import it).
- after building head: are the installed files byte-identical to base's, comments aside?
  Hashed from the files themselves, leaving out the distribution's metadata
  (``*.dist-info``), bytecode, and version files (``_version.py``, ``version.py``,
  ``_version.txt``), which carry the SHA; Python modules are hashed as their tokens and C
  and C++ sources without their comments, so a change of comments alone installs the
  same. Builds are reproducible (``environments.reproducible_variables``): the same
  source compiles to the same extension modules wherever its environment lies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import tokenize
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from runner.deblend.revisions import git

DOC_FOLDERS = frozenset({"docs", "doc"})
TEST_FOLDERS = frozenset({"tests", "test"})
CI_FOLDERS = frozenset({".github", ".circleci", ".gitlab", ".azure-pipelines"})
CI_FILES = frozenset(
    {
        ".travis.yml",
        ".gitlab-ci.yml",
        "azure-pipelines.yml",
        "appveyor.yml",
        ".readthedocs.yml",
        ".readthedocs.yaml",
        ".pre-commit-config.yaml",
        "codecov.yml",
        ".codecov.yml",
    }
)
DOC_SUFFIXES = frozenset({".md", ".rst", ".ipynb"})
# Files whose content goes at most into the distribution's metadata (README, LICENSE).
METADATA_STEMS = frozenset(
    {
        "README",
        "LICENSE",
        "LICENCE",
        "COPYING",
        "CITATION",
        "CHANGELOG",
        "CHANGES",
        "HISTORY",
        "AUTHORS",
        "CONTRIBUTING",
        "CODE_OF_CONDUCT",
    }
)
C_SUFFIXES = frozenset({".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx"})
# A C or C++ comment, or a string or character literal (kept: it may hold "//").
C_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
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
    """The files the distribution holding ``module`` (a dotted name: its top-level
    package's) installed, from its RECORD, as paths relative to ``site_packages`` (POSIX)."""
    top = module.split(".")[0]
    for info in sorted(site_packages.glob("*.dist-info")):
        stream = _regular(info / "RECORD")
        if stream is None:
            continue
        with stream:
            text = stream.read(RECORD_LIMIT).decode(errors="replace")
        rows = csv.reader(io.StringIO(text))
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


def _cannot_reach(path: PurePosixPath) -> bool:
    """Whether a repository file is, by its place and name alone, one that cannot go into
    the install: documentation, CI, tests outside the package, notebooks, metadata."""
    top = path.parts[0]
    stem = path.name.split(".")[0].upper()
    return (
        top in DOC_FOLDERS
        or top in TEST_FOLDERS
        or top in CI_FOLDERS
        or (len(path.parts) == 1 and path.name in CI_FILES)
        or path.suffix in DOC_SUFFIXES
        or stem in METADATA_STEMS
    )


def reaching(changed: list[str], installed: list[str]) -> list[str]:
    """The changed files (repository paths) that may change what is installed: all but
    those that provably cannot (see the module docstring)."""
    files = _package_files(installed)
    packages = {f.parts[0] for f in files if len(f.parts) > 1}
    names = {f.name for f in files}  # data files may move on install
    reach = []
    for name in changed:
        path = PurePosixPath(name)
        if (
            name.endswith("/")
            or path.name == "__init__.py"  # may make a folder a package
            or path.suffix == ".pth"
            or any(part in packages for part in path.parts[:-1])
            or path.name in names
            or not _cannot_reach(path)
        ):
            reach.append(name)
    return reach


def python_tokens(data: bytes) -> bytes:
    """A Python module as its tokens, comments and blank lines aside (its bytes where it
    cannot be tokenized)."""
    skipped = (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING)
    try:
        tokens = tokenize.tokenize(io.BytesIO(data).readline)
        kept = [f"{t.type} {t.string}" for t in tokens if t.type not in skipped]
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        return data
    return "\n".join(kept).encode()


def c_code(data: bytes) -> bytes:
    """A C or C++ source without its comments, blank lines and trailing blanks."""
    text = data.decode("utf-8", errors="surrogateescape")
    code = C_TOKENS.sub(lambda m: " " if m[0].startswith("/") else m[0], text)
    lines = [line.rstrip() for line in code.splitlines()]
    return "\n".join(line for line in lines if line).encode("utf-8", errors="surrogateescape")


def _content(path: PurePosixPath, data: bytes) -> bytes:
    """What of an installed file counts: Python and C sources without their comments."""
    if path.suffix == ".py":
        return python_tokens(data)
    if path.suffix in C_SUFFIXES:
        return c_code(data)
    return data


def installed_hash(env: Path, module: str) -> str:
    """sha256 over the deblender's installed files (paths and contents, comments aside),
    metadata, bytecode and version files aside."""
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
            data = _content(path, stream.read())
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
