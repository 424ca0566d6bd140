"""Attacks on the runner, each played as a pull request on the tiny test deblender: its
build (``setup.py``) or its package, run for real through ``python -m runner run``.

Each shows that nothing was reached, that the attacking side ends with a clear error (or
harmlessly), and that an innocent pull request's verdict, run before and after, is
unchanged. One repository, one runner cache and one uv cache serve the whole module, as
they serve every run on one machine: base's environment is built once, and whatever an
attack could poison is what the runs after it use.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters, environments, sandbox, shared
from runner.deblend.revisions import git
from runner.result import RunResult
from support import TINY_PYPROJECT, tiny_adapter

INNOCENT = "__version__ = '1.0'\n# a comment: installed, deblends as base\n"
TOKEN = "ghp_the-runner-machine-s-git-credential"


class World:
    """The tiny deblender's repository (``main`` at 1.0), two blends, a runner cache and
    an innocent pull request; ``run`` runs ``python -m runner run`` in the same cache."""

    def __init__(self, root: Path, synthetic_set: Path):
        self.root = root
        self.repo = root / "repo"
        (self.repo / "tinydeblender").mkdir(parents=True)
        (self.repo / "pyproject.toml").write_text(TINY_PYPROJECT)
        (self.repo / "tinydeblender" / "__init__.py").write_text("__version__ = '1.0'\n")
        self.base = commit(self.repo, "1.0", init=True)
        self.blends = root / "blends"
        self.blends.mkdir()
        for path in sorted(synthetic_set.glob("*.npz"))[:2]:
            shutil.copy(path, self.blends)
        self.cache = root / "cache"
        self.runs = 0
        self.innocent = self.pull_request("innocent", {"tinydeblender/__init__.py": INNOCENT})

    def pull_request(self, name: str, files: dict[str, str], base: str = "main") -> str:
        """A branch ``name`` off ``base`` with ``files`` written; its SHA."""
        git(self.repo, "checkout", "--quiet", "-B", name, base)
        for path, text in files.items():
            (self.repo / path).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / path).write_text(text)
        sha = commit(self.repo, name)
        git(self.repo, "checkout", "--quiet", "main")
        return sha

    def run(self, head: str, base: str = "main", *more: str, code: int = 0) -> RunResult | None:
        """Run head against base; the result (None when the run, as expected, refused)."""
        self.runs += 1
        out = self.root / f"out-{self.runs}"
        args = ["run", "--repo", str(self.repo), "--head", head, "--base", base,
                "--dataset", str(self.blends), "--out", str(out), "--workers", "1",
                "--adapter", "tiny", "--cache", str(self.cache), *more]  # fmt: skip
        assert main(args) == code
        return RunResult.read(out / "result.json") if code == 0 else None

    def innocent_verdict(self) -> tuple:
        """The innocent pull request's verdict and every model hash of its run, deblended
        in full (a comment alone is otherwise not deblended)."""
        result = self.run(self.innocent, "main", "--full")
        hashes = [(b.id, b.base.model_hash, b.head.model_hash) for b in result.blends]
        return result.comparison.verdict, result.comparison.identical_models, hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic_set):
    """The world, with a uv cache of its own (never the machine's: an attack that worked
    would poison it) and a caller that asks uv for hard links."""
    root = tmp_path_factory.mktemp("attacks")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UV_CACHE_DIR", str(root / "uv-cache"))
        patch.setenv("UV_LINK_MODE", "hardlink")
        patch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(root))
        world = World(root, synthetic_set)
        world.reference = world.innocent_verdict()
        assert world.reference[:2] == ("pass", True) and world.reference[2]
        yield world


@pytest.fixture
def limits(monkeypatch):
    """Small limits, so that the attacks on them end in seconds (a runner without such
    limits meets the attacks' own bounds instead)."""

    def set_limits(**changes):
        for module, name in ((environments, "BUILD_LIMITS"), (sandbox, "LIMITS")):
            current = getattr(module, name, None)
            if current is not None:
                mine = {k: v for k, v in changes.items() if hasattr(current, k)}
                monkeypatch.setattr(module, name, replace(current, **mine))

    return set_limits


def setup_py(attack: str) -> dict[str, str]:
    """A pull request whose setup.py runs ``attack`` (Python) before it builds."""
    return {"setup.py": attack + "\nfrom setuptools import setup\nsetup()\n"}


def head_build(result: RunResult):
    return result.provenance.head.build


# -- 1. a build that writes through a hard link into base's environment and uv's cache --

HARD_LINK = """
import pathlib, sys
numpy = pathlib.Path(sys.prefix).glob("lib/python*/site-packages/numpy/__init__.py")
for path in numpy:  # as base's and every later environment import it, if they share it
    with open(path, "a") as stream:
        stream.write("\\nimport numpy as _n\\n")
        stream.write("_n.savez_compressed = lambda *a, **k: 1 / 0  # poisoned\\n")
"""


def test_a_build_that_writes_through_a_hard_link_reaches_no_other_environment(world):
    base_env = world.cache / "envs" / world.run(world.base).provenance.base.build.environment
    (numpy,) = base_env.glob("lib/python*/site-packages/numpy/__init__.py")
    before = numpy.read_bytes()

    result = world.run(world.pull_request("hard-link", setup_py(HARD_LINK)), "main", "--full")

    assert head_build(result).status == "ok"
    own = world.cache / "envs" / head_build(result).environment
    (poisoned,) = own.glob("lib/python*/site-packages/numpy/__init__.py")
    assert b"poisoned" in poisoned.read_bytes(), "the attack wrote its own environment"
    assert numpy.read_bytes() == before, "base's environment is untouched"
    cached = list(Path(os.environ["UV_CACHE_DIR"]).rglob("numpy/__init__.py"))
    assert cached and all(b"poisoned" not in path.read_bytes() for path in cached)
    for env in (base_env, own):
        shared_inodes = [
            path for path in env.rglob("*") if path.is_file() and not path.is_symlink()
            and path.stat().st_nlink > 1
        ]  # fmt: skip
        assert shared_inodes == [], "every file of an environment is its own"
    assert result.blends and all(b.head.status == "errored" for b in result.blends), (
        "its own workers fail"
    )
    assert world.innocent_verdict() == world.reference


# -- 2. a deblender reading a credential file of the runner's user ---------------------

CREDENTIAL = """
import os, pathlib
stolen = []
for path in {paths!r}:
    for where in (path, "/proc/1/root" + path):
        try:
            stolen.append(pathlib.Path(where).read_text().strip())
        except OSError:
            pass
__version__ = "1.1+" + "-".join(stolen)
"""


def test_a_deblender_reads_no_credential_file_of_the_runner_s_user(world, monkeypatch):
    home = world.root / "home"
    credentials = home / ".git-credentials"
    home.mkdir(exist_ok=True)
    credentials.write_text(f"https://bot:{TOKEN}@github.com\n")
    credentials.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    module = CREDENTIAL.format(paths=[str(credentials)])

    result = world.run(world.pull_request("credential", {"tinydeblender/__init__.py": module}))

    assert result.provenance.head.deblender_version == "1.1+"
    text = result.to_json() + "".join(p.read_text() for p in world.cache.rglob("*.log"))
    assert TOKEN not in text
    assert result.comparison.verdict == "pass"
    assert world.innocent_verdict() == world.reference


# -- 3. a deblender that reads its blend's truth, and one that forges its timings ------

TRUTH = """
import pathlib, time, zipfile
import numpy

__version__ = "1.1"
GAIN = 1.5  # a real regression: every model 1.5 times too bright
FOUND = []


def _look(path):
    try:
        with zipfile.ZipFile(path) as archive:
            if "matched.npy" in archive.namelist():
                FOUND.append(str(path))
    except (OSError, zipfile.BadZipFile):
        pass


for path in pathlib.Path({blends!r}).glob("*.npz"):
    _look(path)
_load = numpy.load


def _spying_load(file, *args, **kwargs):  # the worker loads its blend through numpy
    _look(file)
    archive = _load(file, *args, **kwargs)
    if "matched" in getattr(archive, "files", []):
        FOUND.append("matched")
    return archive


numpy.load = _spying_load
_savez = numpy.savez_compressed  # the worker writes its arrays with it


def _forging_savez(file, **arrays):
    if FOUND:  # with the truth, source models as the truth has them: the regression hidden
        arrays["source_models"] = arrays["source_models"] / GAIN
    import sys
    print("TRUTH " + ",".join(FOUND), file=sys.stderr)
    return _savez(file, **arrays)


numpy.savez_compressed = _forging_savez
"""


def test_a_deblender_never_sees_its_blend_s_truth(world):
    module = TRUTH.format(blends=str(world.blends))
    result = world.run(world.pull_request("truth", {"tinydeblender/__init__.py": module}))

    logs = "".join(p.read_text() for p in (world.root / f"out-{world.runs}").rglob("*.log"))
    assert "TRUTH \n" in logs and "TRUTH m" not in logs and "TRUTH /" not in logs
    assert all(b.head.status == "ok" for b in result.blends)
    assert result.comparison.verdict == "fail", "the regression shows"
    assert world.innocent_verdict() == world.reference


FORGED_TIMING = """
import time

__version__ = "1.1"
_started = time.perf_counter()
time.perf_counter = lambda: _started  # every clock the worker reads stands still
_process_time = time.process_time
_end = _process_time() + 0.5
while _process_time() < _end:  # half a second of work, at import and at every blend
    pass
"""
SLOW_ADAPTER = """
import time
import tinydeblender  # noqa: F401 (its import patches the clocks)


def deblend(blend, options):
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    return _deblend(blend, options)
"""


def test_a_deblender_that_forges_its_timings_is_timed_by_the_runner(world, monkeypatch):
    worker = world.root / "slow_adapter.py"
    faulty = Path(adapters.ADAPTERS["tiny"].worker_file).read_text()
    worker.write_text(faulty + "\n_deblend = deblend\n" + SLOW_ADAPTER)
    slow = replace(adapters.ADAPTERS["tiny"], worker_file=worker)
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", slow)
    files = {"tinydeblender/__init__.py": FORGED_TIMING}
    result = world.run(world.pull_request("forged-timing", files))

    for blend in result.blends:
        assert blend.head.status == "ok"
        assert blend.head.wall_time >= 0.25, "wall time as the runner saw it"
        assert blend.head.cpu_time >= 0.25, "CPU time as the kernel counted it"


# -- 4. a base branch that poisons the compiler cache ----------------------------------

EXTENSION = """#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
"""
C_SETUP = """from setuptools import Extension, setup
setup(ext_modules=[Extension("tinydeblender._fast", ["tinydeblender/_fast.c"])])
"""
# A member's branch whose setup.py writes into the compiler cache it is given (every
# object there) and fakes the statistics log that, on the old runner, decided an upload.
POISONING_BASE = """import os, pathlib
cache = pathlib.Path(os.environ.get("CCACHE_DIR", "/nonexistent"))
wrote = []
for path in [cache / "poison", *(p for p in cache.rglob("*") if p.is_file())]:
    try:
        with open(path, "ab") as stream:
            stream.write(b"poison")
        wrote.append(str(path))
    except OSError:
        pass
log = os.environ.get("CCACHE_STATSLOG")
if log:
    pathlib.Path(log).write_text("# tinydeblender/_fast.c\\ncache_miss\\n" * 3)
print("WROTE", wrote)
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_a_base_branch_cannot_poison_the_compiler_cache(world):
    files = {"setup.py": C_SETUP, "tinydeblender/_fast.c": EXTENSION}
    files["tinydeblender/__init__.py"] = "from . import _fast\n__version__ = '1.0'\n"
    trunk = world.pull_request("c-trunk", files)
    caches, store = world.cache / "ccache", world.root / "c-store"
    shared_store = ("--private-store", str(store), "--repository", "octo/tiny")

    # A member's branch off the protected one, with a poisoning setup.py, is the base of a
    # pull request: its build writes nothing, fakes nothing that counts, uploads nothing.
    world.pull_request("evil", {"setup.py": POISONING_BASE + C_SETUP}, base="c-trunk")
    pr = world.pull_request("pr-on-evil", {"README.md": "a change\n"}, base="evil")
    attacked = world.run(pr, "evil", *shared_store)
    assert not caches.exists() or snapshot(caches) == {}, "nothing written"
    assert not (store / "ccache").exists(), "nothing uploaded"
    for side in (attacked.provenance.base, attacked.provenance.head):
        assert "writable" not in (side.build.compiler_cache or "")
    assert attacked.provenance.trusted_ref is None

    # A trusted run of the protected branch's own commits fills its cache ...
    trusted = world.run(trunk, trunk, "--trusted-ref", "c-trunk", *shared_store)
    assert trusted.provenance.trusted_ref == "c-trunk"
    assert trusted.provenance.base.build.compiler_cache == "ccache: 0 hits, 1 miss (writable)"
    written, stored = snapshot(caches), snapshot(store / "ccache")
    assert written and list(stored) == [next(iter(stored))]
    assert next(iter(stored)).startswith("c-trunk/"), "the key names the trusted ref"

    # ... which a pull request on it reads and cannot write, whatever its setup.py does.
    files = {"setup.py": POISONING_BASE + C_SETUP}
    poisoning = world.run(world.pull_request("c-poison", files, base="c-trunk"), "c-trunk")
    assert "(read-only" in poisoning.provenance.head.build.compiler_cache
    assert snapshot(caches) == written and snapshot(store / "ccache") == stored
    files = {"tinydeblender/__init__.py": "from . import _fast\n__version__ = '1.0'\nX = 1\n"}
    innocent = world.run(world.pull_request("c-innocent", files, base="c-trunk"), "c-trunk")
    assert innocent.provenance.head.build.compiler_cache.startswith("ccache: 1 hit, 0 misses")
    assert innocent.comparison.verdict == "pass" and innocent.comparison.identical_models


# -- 5. a build that copies the datasets, or fills its environment to be packed -------

COPY_DATASETS = """
import pathlib, shutil, sys
for source in {folders!r}:
    try:
        shutil.copytree(source, pathlib.Path(sys.prefix, "loot", pathlib.Path(source).name))
    except OSError:
        pass
"""
BIG = """
import pathlib, sys
with open(pathlib.Path(sys.prefix, "big.bin"), "wb") as stream:  # sparse: costs no disk
    stream.truncate({size})
"""


def test_a_build_that_copies_the_datasets_finds_none(world):
    hsc = Path(__file__).resolve().parents[2] / "data" / "hsc" / "set1"
    attack = COPY_DATASETS.format(folders=[str(world.blends), str(hsc)])
    result = world.run(world.pull_request("copy-datasets", setup_py(attack)))

    env = world.cache / "envs" / head_build(result).environment
    assert head_build(result).status == "ok"
    assert not (env / "loot").exists(), "no blend file reached the environment"
    assert result.comparison.verdict == "pass"
    assert world.innocent_verdict() == world.reference


def test_an_environment_of_gigabytes_is_a_build_error_and_never_packed(world, tmp_path):
    size = 2 * 2**30 + 2**20  # the limit, and a MiB
    result = world.run(world.pull_request("two-gigabytes", setup_py(BIG.format(size=size))))

    build = head_build(result)
    assert build.status == "failed"
    assert re.match(r"the environment holds 2\.\d\d GiB, over the limit of 2 GiB$", build.error)
    assert not list((world.cache / "envs").glob("*/big.bin")), "it is removed"
    assert all(b.base.status == "ok" for b in result.blends)
    assert world.innocent_verdict() == world.reference

    # pack() refuses such a folder before it compresses a byte.
    folder = tmp_path / "env"
    folder.mkdir()
    with open(folder / "big.bin", "wb") as stream:
        stream.truncate(size)
    archive = tmp_path / "env.tar.zst"
    with pytest.raises(shared.ArchiveError, match="over the limit"):
        shared.pack(folder, archive, shared.best_codec())
    assert not archive.exists() or archive.stat().st_size == 0


# -- 6. limits: a fork bomb, a disk fill, endless output, a hung build and import ------

FORK_BOMB = """
import subprocess, sys
# 300 processes (bounded, so that a runner without the limit survives the test)
bomb = subprocess.run(["/bin/sh", "-c", "for i in $(seq 300); do sleep 20 & done; wait"],
                      capture_output=True, text=True)
print(bomb.stderr[-200:], file=sys.stderr)
if "fork" in bomb.stderr.lower():
    sys.exit(1)
"""
DISK_FILL = """
import pathlib, sys, time
folder = pathlib.Path(sys.prefix, "fill")
folder.mkdir()
chunk = b"x" * 2**20
for n in range(2048):  # 2 GiB in files of 1 MiB (bounded, for a runner without the limit)
    (folder / str(n)).write_bytes(chunk)
"""
ONE_BIG_FILE = """
import pathlib, sys
with open(pathlib.Path(sys.prefix, "fill.bin"), "wb") as stream:
    for n in range(1024):  # 1 GiB (bounded, for a runner without the limit)
        stream.write(b"x" * 2**20)
"""
ENDLESS_OUTPUT = """import sys, time
__version__ = "1.1"
if {stage!r} in sys.argv[0] or {stage!r} == "import":
    end, written = time.monotonic() + 120, 0  # (bounded, for a runner without the limits)
    while time.monotonic() < end:
        if written < 2**29:
            written += sys.stderr.write("spam " * 20000 + "\\n")
        else:
            time.sleep(1)
"""
HUNG = "import time\ntime.sleep(120)  # (bounded, for a runner without the limit)\n"


def test_a_fork_bomb_in_a_build_cannot_fork_past_the_limit(world, limits):
    limits(processes=64)
    result = world.run(world.pull_request("fork-bomb", setup_py(FORK_BOMB)))

    build = head_build(result)
    assert build.status == "failed" and "exited" in build.error
    assert "fork" in build.log_tail.lower()
    assert all(b.base.status == "ok" for b in result.blends)
    assert world.innocent_verdict() == world.reference


def test_a_build_that_fills_the_disk_is_stopped(world, limits):
    limits(disk=256 * 2**20, file_size=128 * 2**20)
    many = world.run(world.pull_request("disk-fill", setup_py(DISK_FILL)))
    assert head_build(many).status == "failed"
    assert "over the limit of 0.25 GiB; stopped" in head_build(many).error

    one = world.run(world.pull_request("one-big-file", setup_py(ONE_BIG_FILE)))
    assert head_build(one).status == "failed"
    assert "File too large" in head_build(one).log_tail
    leftovers = [p for p in (world.cache / "envs").rglob("fill*")]
    assert leftovers == [], "what the builds wrote is gone"
    assert world.innocent_verdict() == world.reference


def test_endless_output_is_cut_and_stopped(world, limits):
    limits(import_check=8.0, log=2**20, file_size=64 * 2**20)
    module = ENDLESS_OUTPUT.format(stage="import")
    result = world.run(world.pull_request("endless-import", {"tinydeblender/__init__.py": module}))
    build = head_build(result)
    assert build.status == "failed"
    assert build.error == "import tinydeblender failed (took longer than 8 s)"
    logs = list((world.cache / "envs").glob("*.log"))
    assert all(path.stat().st_size < 2 * 2**20 for path in logs), "its head and tail only"
    assert any(b"bytes of output left out" in path.read_bytes() for path in logs)

    # A deblender that writes without end is stopped at the size limit of its log.
    module = ENDLESS_OUTPUT.format(stage="worker.py")
    result = world.run(world.pull_request("endless-worker", {"tinydeblender/__init__.py": module}))
    assert all("File too large" in b.head.error for b in result.blends)
    logs = (world.root / f"out-{world.runs}" / "logs").glob("worker-*-head.log")
    assert all(path.stat().st_size <= 64 * 2**20 for path in logs)
    assert world.innocent_verdict() == world.reference


def test_a_hung_build_and_a_hung_import_are_stopped(world, limits):
    limits(step=5.0, import_check=5.0)
    build = head_build(world.run(world.pull_request("hung-setup", setup_py(HUNG))))
    assert build.status == "failed"
    assert build.error == "'uv pip install' took longer than 5 s; stopped"

    # The hung import's own install is given time a loaded machine may need.
    limits(step=120.0, import_check=10.0)
    files = {"tinydeblender/__init__.py": HUNG}
    build = head_build(world.run(world.pull_request("hung-import", files)))
    assert build.status == "failed"
    assert build.error == "import tinydeblender failed (took longer than 10 s)"
    assert world.innocent_verdict() == world.reference


# -- 7. fail closed: no sandbox, no untrusted code -------------------------------------


NO_BWRAP = "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"


def test_where_the_sandbox_cannot_run_untrusted_code_is_refused(
    world, tmp_path, monkeypatch, capsys
):
    broken = tmp_path / "bin"
    broken.mkdir()
    bwrap = broken / "bwrap"
    bwrap.write_text(NO_BWRAP)
    bwrap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
    capsys.readouterr()

    assert world.run(world.innocent, code=2) is None
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: the sandbox of untrusted code cannot run (bwrap cannot")
    assert "--unsandboxed" in error[-1]

    result = world.run(world.innocent, "main", "--unsandboxed")
    assert result.provenance.sandboxed is False
    assert result.provenance.isolation["workers"].startswith("none (--unsandboxed)")


class Metadata(BaseHTTPRequestHandler):
    asked = 0

    def do_GET(self):
        Metadata.asked += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"a token")

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_server():
    """A stand-in for the metadata server, on loopback: its (host, port)."""
    Metadata.asked = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ("127.0.0.1", server.server_port)
    server.shutdown()
    server.server_close()


ASK_FOR_THE_TOKEN = """
import urllib.request
try:
    urllib.request.urlopen("http://{host}:{port}/computeMetadata/v1/token", timeout=5).read()
except OSError:
    pass
"""


def test_on_cloud_run_no_revision_s_code_runs_unless_the_sandbox_is_offline(
    world, metadata_server, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CLOUD_RUN_JOB", "scarlet-runner")
    targets = (metadata_server, ("localhost", 9))
    monkeypatch.setattr(sandbox, "UNREACHABLE", targets, raising=False)
    host, port = metadata_server
    asking = world.pull_request(
        "ask-for-the-token", setup_py(ASK_FOR_THE_TOKEN.format(host=host, port=port))
    )

    # Where the sandbox cannot run, the job refuses before any revision's code runs.
    broken = tmp_path / "bin"
    broken.mkdir()
    for tool in ("bwrap", "unshare"):
        (broken / tool).write_text(NO_BWRAP)
        (broken / tool).chmod(0o755)
    with monkeypatch.context() as path:
        path.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
        assert world.run(asking, code=2) is None
        assert world.run(asking, "main", "--unsandboxed", code=2) is None
    assert Metadata.asked == 0, "nobody asked the metadata server"
    assert "--unsandboxed is refused on Cloud Run" in capsys.readouterr().err

    # Behind the sandbox the (loopback) metadata server is out of reach: the run goes on.
    result = world.run(asking)
    assert result.provenance.head.build.status == "ok" and Metadata.asked == 0
    assert result.comparison.verdict == "pass"

    # A sandbox that let the network through is caught before any revision's code runs.
    with pytest.raises(sandbox.SandboxError, match=f"could reach 127.0.0.1:{port}"):
        sandbox.check_offline(sandbox.isolation(network=True), [metadata_server])
    sandbox.check_offline(sandbox.isolation(network=False), [metadata_server])
    with socket.create_connection(metadata_server, 2):
        pass  # and the server was there all along
