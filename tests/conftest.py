"""Shared fixtures: synthetic blend sets, the HSC data when present, a scratch cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runner.npzio import write_npz
from runner.synth import write_synthetic_set

ROOT = Path(__file__).resolve().parent.parent
HSC = ROOT.parent / "shared" / "data" / "hsc"
FAULTY_ADAPTER = Path(__file__).parent / "adapters" / "faulty.py"


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """Six synthetic blends (seed 0), written once per session."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_set(out, blends=6, seed=0)
    return out


@pytest.fixture
def hsc_set1() -> Path:
    """The real HSC set1 blends; skips where the shared data is absent."""
    path = HSC / "set1"
    if not path.is_dir():
        pytest.skip(f"real HSC blends not found at {path}")
    return path


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
