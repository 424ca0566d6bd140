"""Helpers shared by the tests: paths, and blend files with parts changed or removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.adapters import Adapter
from runner.npzio import write_npz
from runner.release import commit

ROOT = Path(__file__).resolve().parent.parent
HSC = ROOT.parent / "shared" / "data" / "hsc"
FAULTY_ADAPTER = Path(__file__).parent / "adapters" / "faulty.py"


def write_blend_with(path: Path, source: Path, **changes) -> Path:
    """Copy the blend ``source`` to ``path`` with some arrays replaced or removed."""
    with np.load(source, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    write_npz(path, arrays)
    return path


TINY_LOCK = "setuptools==84.2.1\nwheel==0.48.0\npackaging==26.4\nnumpy==2.4.6\n"
TINY_PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "tinydeblender"
version = "1.0"
"""


def tiny_repository(repo: Path) -> tuple[Path, str]:
    """A git repository holding a tiny installable package, ``tinydeblender`` 1.0."""
    (repo / "tinydeblender").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(TINY_PYPROJECT)
    (repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\n")
    return repo, commit(repo, "1.0", init=True)


def tiny_adapter(folder: Path, worker_file: Path = FAULTY_ADAPTER) -> Adapter:
    """An adapter that installs ``tinydeblender`` with a small lock and deblends with
    ``worker_file`` (by default the faulty test deblender, which needs only numpy)."""
    lock = folder / "tiny-lock.txt"
    lock.write_text(TINY_LOCK)
    return Adapter("tiny", "tinydeblender", lock, worker_file)
