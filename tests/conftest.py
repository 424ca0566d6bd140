"""Shared fixtures: synthetic blend sets, the HSC data when present, a scratch cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.synth import write_synthetic_set
from support import HSC

pytest_plugins = ["gcs_emulator", "fake_github"]


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
