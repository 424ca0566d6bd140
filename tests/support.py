"""Helpers shared by the tests: paths, and blend files with parts changed or removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.npzio import write_npz

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
