"""Environments per SHA: built from the revision's tree, cached, and failing with their log."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from runner.commands.release_repo import commit
from runner.deblend.adapters import Adapter
from runner.deblend.environments import (
    LIVE_BUILDS,
    BuildError,
    _supervise,
    build_environment,
    kill_all_builds,
)
from runner.deblend.logs import CappedLog
from runner.deblend.revisions import checkout
from support import TINY_LOCK, tiny_adapter, tiny_repository


@pytest.fixture
def tiny(tmp_path):
    """A tiny deblender package in a git repository, and an adapter with a small lock."""
    repo, sha = tiny_repository(tmp_path / "repo")
    return repo, sha, tiny_adapter(tmp_path), tmp_path / "cache"


def test_an_environment_is_built_once_per_sha_and_then_reused(tiny):
    repo, sha, adapter, cache = tiny
    source = checkout(repo, sha, cache / "checkouts" / sha)
    env = build_environment(source, sha, adapter, cache)
    assert not env.reused and env.deblender_version == "1.0"
    assert env.numpy_version == "2.4.6"
    assert env.packages["tinydeblender"] == "1.0"
    assert "pytest" not in env.packages, "none of our dependencies leak into the environment"
    again = build_environment(source, sha, adapter, cache)
    assert again.reused and again.key == env.key and again.path == env.path


def test_another_lock_is_another_environment(tiny, tmp_path):
    repo, sha, adapter, cache = tiny
    source = checkout(repo, sha, cache / "checkouts" / sha)
    first = build_environment(source, sha, adapter, cache)
    other_lock = tmp_path / "other.txt"
    other_lock.write_text(TINY_LOCK.replace("numpy==2.4.6", "numpy==2.3.5"))
    other = Adapter("tiny", "tinydeblender", other_lock, adapter.worker_file)
    second = build_environment(source, sha, other, cache)
    assert second.key != first.key and second.numpy_version == "2.3.5"


def test_a_revision_that_does_not_build_reports_the_tail_of_its_log(tiny):
    repo, _, adapter, cache = tiny
    (repo / "pyproject.toml").write_text("[project\nname = broken")
    sha = commit(repo, "broken")
    source = checkout(repo, sha, cache / "checkouts" / sha)
    with pytest.raises(BuildError) as raised:
        build_environment(source, sha, adapter, cache)
    assert "exited" in str(raised.value)
    assert "pyproject.toml" in raised.value.log_tail
    assert not list((cache / "envs").glob("*/environment.json")), "no half-built environment"


def test_a_package_that_does_not_import_is_a_build_error(tiny):
    repo, _, adapter, cache = tiny
    (repo / "tinydeblender" / "__init__.py").write_text("raise ImportError('broken on import')\n")
    sha = commit(repo, "breaks on import")
    source = checkout(repo, sha, cache / "checkouts" / sha)
    with pytest.raises(BuildError, match="import tinydeblender failed") as raised:
        build_environment(source, sha, adapter, cache)
    assert "broken on import" in raised.value.log_tail


def test_a_lock_that_misses_a_dependency_is_refused_not_resolved(tiny, tmp_path):
    repo, sha, adapter, cache = tiny
    adapter.lock.write_text(TINY_LOCK.replace("packaging==26.4\n", ""))
    source = checkout(repo, sha, cache / "checkouts" / sha)
    with pytest.raises(BuildError, match="'uv pip check' exited 1") as raised:
        build_environment(source, sha, adapter, cache)
    assert "requires `packaging" in raised.value.log_tail


def test_the_revisions_build_sees_none_of_our_variables(tiny, monkeypatch):
    repo, _, adapter, cache = tiny
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", "secret")
    (repo / "setup.py").write_text(
        "import json, os, pathlib, sys\n"
        "pathlib.Path(sys.prefix, 'seen.json').write_text(json.dumps(sorted(os.environ)))\n"
        "from setuptools import setup\n"
        "setup()\n"
    )
    sha = commit(repo, "a setup.py that looks around")
    source = checkout(repo, sha, cache / "checkouts" / sha)
    env = build_environment(source, sha, adapter, cache)
    seen = json.loads((env.path / "seen.json").read_text())
    assert "PATH" in seen and "GITHUB_APP_PRIVATE_KEY" not in seen


def test_the_import_check_sees_none_of_our_variables(tiny, monkeypatch):
    repo, _, adapter, cache = tiny
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", "secret")
    (repo / "tinydeblender" / "__init__.py").write_text(
        "import os\nraise ImportError('seen: ' + ' '.join(sorted(os.environ)))\n"
    )
    sha = commit(repo, "a package that looks around on import")
    source = checkout(repo, sha, cache / "checkouts" / sha)
    with pytest.raises(BuildError) as raised:
        build_environment(source, sha, adapter, cache)
    seen = raised.value.log_tail.rsplit("seen: ", 1)[1].split()
    assert "PATH" in seen and "GITHUB_APP_PRIVATE_KEY" not in seen


def test_a_cancelled_runner_takes_its_running_build_step_down(tmp_path):
    # A build step runs in a session of its own; the runner's SIGTERM handler kills it,
    # or it would go on writing into an environment the next run builds afresh.
    with open(tmp_path / "build.log", "wb") as stream:
        log = CappedLog(stream, 2**20)
        child = tmp_path / "child"  # the step's own child, in its session
        step = ["sh", "-c", f"sleep 60 & echo $! > {child}; wait"]
        returned: list = []
        thread = threading.Thread(
            target=lambda: returned.append(_supervise(step, {}, None, log, [], None, 120.0))
        )
        thread.start()
        for _ in range(100):
            if LIVE_BUILDS and child.exists() and child.read_text().strip():
                break
            time.sleep(0.05)
        assert len(LIVE_BUILDS) == 1
        kill_all_builds()
        thread.join(timeout=10)
    assert returned == [-signal.SIGKILL] and not LIVE_BUILDS
    stat = Path(f"/proc/{child.read_text().strip()}/stat")
    for _ in range(100):  # gone, or a zombie waiting to be reaped
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the build step's child outlived it")
