"""Shared fixtures: synthetic blend sets and stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.store import ArtifactStore, GCSStore, LocalStore
from runner.synth import write_synthetic_set
from support import fast_retry

pytest_plugins = ["gcs_emulator", "fake_github"]


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """Six synthetic blends (seed 0), written once per session."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_set(out, blends=6, seed=0)
    return out


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path) -> ArtifactStore:
    """Each backend in turn: a fresh directory, or a fresh emulated bucket with a prefix."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("gcs_bucket")
    client = request.getfixturevalue("gcs_client")
    return GCSStore(bucket.name, "artifacts", client=client, retry=fast_retry(), timeout=5)
