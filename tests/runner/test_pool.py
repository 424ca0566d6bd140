"""The worker pool under a deblender that raises, hangs, crashes, returns NaNs or prints."""

from __future__ import annotations

import json
import socket
import sys
import time

import numpy as np

from runner.deblend.pool import Side, Task, run_tasks
from runner.deblend.sandbox import isolation
from runner.secretfiles import HIDE_VARIABLE
from support import FAULTY_ADAPTER, write_blend_with

FAULT_CODES = {
    "raise": 1001.0,
    "hang": 1002.0,
    "crash": 1003.0,
    "nan": 1004.0,
    "print": 1005.0,
    "adapter": 1007.0,
}
ALLOCATES = 1006.0


def faulty_blends(synthetic_set, tmp_path):
    source = sorted(synthetic_set.glob("*.npz"))[0]
    images = np.load(source)["images"]
    blends = {"fine": source}
    for fault, code in FAULT_CODES.items():
        changed = images.copy()
        changed[0, 0, 0] = code
        blends[fault] = write_blend_with(tmp_path / f"{fault}.npz", source, images=changed)
    return blends


def run_all(blends, tmp_path, timeout=5.0, slots=2):
    side = Side("head", sys.executable, FAULTY_ADAPTER)
    tasks = [Task("head", path, tmp_path / f"{name}.out.npz", {}) for name, path in blends.items()]
    outcomes = {}
    run_tasks(
        tasks,
        {"head": side},
        tmp_path,
        slots,
        timeout,
        lambda o: outcomes.__setitem__(o.task.blend, o),
    )
    return {name: outcomes[path] for name, path in blends.items()}


def test_every_fault_errors_only_its_own_blend(synthetic_set, tmp_path):
    blends = faulty_blends(synthetic_set, tmp_path)
    started = time.monotonic()
    outcomes = run_all(blends, tmp_path, timeout=5.0)
    assert time.monotonic() - started < 60
    assert outcomes["fine"].error is None
    assert outcomes["fine"].reply["iterations"] == 1
    assert outcomes["print"].error is None, "stdout of the deblender must not break the protocol"
    assert outcomes["raise"].error == "DeblendFailure: the deblender gave up"
    assert "DeblendFailure" in outcomes["raise"].reply["traceback"]
    assert outcomes["raise"].reply["raised_by"] == "deblender"
    # An exception raised in the adapter's own code is the tool's, its frames kept.
    assert outcomes["adapter"].error.startswith("ValueError: too many values to unpack")
    assert outcomes["adapter"].reply["raised_by"] == "adapter"
    assert "_values, _loss = (1, 2, 3)" in outcomes["adapter"].reply["traceback"]
    assert outcomes["hang"].error == "timed out while deblending"
    assert "killed by signal 9" in outcomes["crash"].error
    # NaNs are caught by the measurement step, not by the pool.
    assert outcomes["nan"].error is None


def test_tasks_after_a_crash_run_on_a_new_worker(synthetic_set, tmp_path):
    blends = faulty_blends(synthetic_set, tmp_path)
    order = {
        "crash": blends["crash"],
        "fine": blends["fine"],
        "hang": blends["hang"],
        "print": blends["print"],
    }
    outcomes = run_all(order, tmp_path, timeout=3.0, slots=1)
    assert outcomes["crash"].error and outcomes["hang"].error
    assert outcomes["fine"].error is None and outcomes["print"].error is None


def test_a_worker_that_cannot_start_errors_its_side_with_the_reason(synthetic_set, tmp_path):
    broken = tmp_path / "broken_adapter.py"
    broken.write_text("import scarlet_that_does_not_exist\n")
    side = Side("head", sys.executable, broken)
    blends = sorted(synthetic_set.glob("*.npz"))[:3]
    tasks = [Task("head", p, tmp_path / f"{p.stem}.out.npz", {}) for p in blends]
    outcomes = []
    run_tasks(tasks, {"head": side}, tmp_path, 1, 5.0, outcomes.append)
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert outcome.error.startswith("worker could not load its adapter")
        assert "No module named 'scarlet_that_does_not_exist'" in outcome.error
        # The import the adapter's own code made: its traceback, and whose code it is.
        assert outcome.reply["raised_by"] == "adapter"
        assert "broken_adapter.py" in outcome.reply["traceback"]


def test_a_revision_that_writes_into_the_protocol_errors_its_side_and_nothing_else(
    synthetic_set, tmp_path
):
    # At import, before the worker announces itself, the revision finds the protocol's
    # file descriptor and writes a line that is no JSON object.
    garbling = tmp_path / "garbling_adapter.py"
    garbling.write_text(
        "import os\n"
        "for fd in range(3, 16):\n"
        "    try:\n"
        "        os.write(fd, b'[not, json\\n')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    blends = sorted(synthetic_set.glob("*.npz"))[:2]
    sides = {"head": Side("head", sys.executable, garbling)}
    sides["base"] = Side("base", sys.executable, FAULTY_ADAPTER)
    tasks = [Task(side, p, tmp_path / f"{p.stem}.{side}.npz", {}) for p in blends for side in sides]
    outcomes = []
    run_tasks(tasks, sides, tmp_path, 1, 5.0, outcomes.append)
    by_side = {side: [o for o in outcomes if o.task.side == side] for side in sides}
    assert len(by_side["head"]) == len(by_side["base"]) == 2
    for outcome in by_side["head"]:
        assert outcome.error == "worker could not start: it announced itself in no JSON object"
    assert all(o.error is None for o in by_side["base"])


def test_worker_sees_no_secrets_of_the_parent(synthetic_set, tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", "secret")
    spy = tmp_path / "spy_adapter.py"
    spy.write_text(
        "import json, os, sys\n"
        f"exec(open({str(FAULTY_ADAPTER)!r}).read())\n"
        "_deblend = deblend\n"
        "def deblend(blend, options):\n"
        "    result = _deblend(blend, options)\n"
        "    result['version'] = json.dumps(sorted(os.environ))\n"
        "    return result\n"
    )
    blend = sorted(synthetic_set.glob("*.npz"))[0]
    outcomes = []
    run_tasks(
        [Task("head", blend, tmp_path / "out.npz", {})],
        {"head": Side("head", sys.executable, spy)},
        tmp_path,
        1,
        10.0,
        outcomes.append,
    )
    seen = outcomes[0].reply["version"]
    assert "GITHUB_APP_PRIVATE_KEY" not in seen
    assert "OMP_NUM_THREADS" in seen


MALICIOUS = """
import json, os, pathlib, socket, subprocess
_deblend = deblend

def read(path):
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ''

def listed(folder):
    try:
        return ' '.join(os.listdir(folder))
    except OSError:
        return ''

def deblend(blend, options):
    found = {{k: v for k, v in os.environ.items() if 'KEY' in k or 'CRED' in k}}
    for path in {secrets!r}:
        parent = os.path.dirname(path)
        found[path] = read(path) + read('/proc/%d/root%s' % (os.getppid(), path))
        subprocess.run(['umount', parent], capture_output=True)  # look under the cover
        found[path] += read(path) + listed(parent)
    for environ in pathlib.Path('/proc').glob('[0-9]*/environ'):
        if 'PRIVATE KEY' in read(environ):
            found[str(environ)] = 'a private key'
    for host, port in (('127.0.0.1', {port}), ('pypi.org', 443)):
        try:
            socket.create_connection((host, port), 2)
            found[host] = 'connected'
        except OSError:
            pass
    result = _deblend(blend, options)
    result['version'] = json.dumps({{k: v for k, v in found.items() if v}})
    return result
"""


def test_a_malicious_deblender_finds_no_secret_no_secret_file_and_no_network(
    synthetic_set, tmp_path, monkeypatch
):
    # The bot's App key and the store's credentials, where a deblender could guess them.
    key = tmp_path / "app" / "private-key.pem"
    credentials = tmp_path / "gcloud" / "credentials.json"
    for path, text in ((key, "-----BEGIN PRIVATE KEY-----"), (credentials, '{"private_key"}')):
        path.parent.mkdir()
        path.write_text(text)
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    monkeypatch.setenv(HIDE_VARIABLE, str(key))  # as the bot names its key file
    blend = sorted(synthetic_set.glob("*.npz"))[0]
    spy = tmp_path / "malicious_adapter.py"
    way = isolation(network=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        secrets = [str(key), str(credentials)]
        text = MALICIOUS.format(secrets=secrets, port=server.getsockname()[1])
        spy.write_text(FAULTY_ADAPTER.read_text() + text)
        outcomes = []
        side = Side("head", sys.executable, spy, sandbox=way)
        run_tasks([Task("head", blend, tmp_path / "o.npz", {})], {"head": side}, tmp_path, 1,
                  20.0, outcomes.append)  # fmt: skip
    assert outcomes[0].error is None
    assert json.loads(outcomes[0].reply["version"]) == {}
    assert key.read_text().startswith("-----BEGIN"), "the file is still there, outside"


SHARED = """
import os, pathlib
_deblend = deblend

def deblend(blend, options):
    folder = pathlib.Path(os.environ["SHARED_FOLDER"])
    try:
        seen = (folder / "entry").read_text()
    except OSError:
        seen = "unseen"
    try:
        (folder / "written").write_text("x")
        wrote = "written"
    except OSError:
        wrote = "read-only"
    return {**_deblend(blend, options), "version": seen + ";" + wrote}
"""


def test_a_shared_cache_is_read_by_every_worker_and_written_by_its_writer_only(
    synthetic_set, tmp_path
):
    # As the JAX compilation cache: a trusted side writes it, every other side reads it.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "entry").write_text("compiled")
    adapter = tmp_path / "shared_adapter.py"
    adapter.write_text(FAULTY_ADAPTER.read_text() + SHARED)
    way, variables = isolation(network=False), {"SHARED_FOLDER": str(shared)}
    sides = {
        "base": Side("base", sys.executable, adapter, variables, sandbox=way, readable=(shared,)),
        "head": Side("head", sys.executable, adapter, variables, sandbox=way, writable=(shared,)),
        "none": Side("none", sys.executable, adapter, variables, sandbox=way),
    }
    blend = sorted(synthetic_set.glob("*.npz"))[0]
    tasks = [Task(side, blend, tmp_path / f"{side}.npz", {}) for side in sides]
    outcomes = []
    run_tasks(tasks, sides, tmp_path, 1, 20.0, outcomes.append)
    versions = {o.task.side: o.reply["version"] for o in outcomes}
    assert versions == {
        "base": "compiled;read-only",
        "head": "compiled;written",
        "none": "unseen;read-only",
    }


def test_a_deblender_that_allocates_without_bound_is_stopped_at_the_limit(synthetic_set, tmp_path):
    source = sorted(synthetic_set.glob("*.npz"))[0]
    images = np.load(source)["images"].copy()
    images[0, 0, 0] = ALLOCATES
    greedy = write_blend_with(tmp_path / "greedy.npz", source, images=images)
    # Behind the sandbox where it runs: the worker is then bwrap's grandchild.
    way = isolation(network=False)
    side = Side("head", sys.executable, FAULTY_ADAPTER, memory_limit=1 * 2**30, sandbox=way)
    tasks = [Task("head", path, tmp_path / f"{path.stem}.out.npz", {}) for path in (greedy, source)]
    outcomes = {}
    run_tasks(tasks, {"head": side}, tmp_path, 1, 60.0,
              lambda o: outcomes.__setitem__(o.task.blend, o))  # fmt: skip
    assert "over the limit of 1024 MiB" in outcomes[greedy].error
    assert outcomes[greedy].wall < 30
    assert outcomes[source].error is None, "the next blend runs on a fresh worker"
