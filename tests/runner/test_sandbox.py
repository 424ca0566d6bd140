"""The sandbox: which files it treats as secrets, and a pull request's build and deblender
that try to take the runner's credential or write outside their own output."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import runner
from runner.commands import main
from runner.commands.release_repo import commit
from runner.deblend import adapters
from runner.result import RunResult
from runner.secretfiles import HIDE_VARIABLE, secret_paths
from support import tiny_adapter, tiny_repository, two_blends


def test_secret_files_are_named_by_variables_and_certificate_authorities_are_not(tmp_path):
    files = {name: tmp_path / name for name in ("key.pem", "adc.json", "client.key", "ca.crt")}
    for path in files.values():
        path.write_text("x")
    (tmp_path / "home" / ".config" / "gcloud").mkdir(parents=True)
    environ = {
        "GITHUB_APP_PRIVATE_KEY_FILE": str(files["key.pem"]),
        "GOOGLE_APPLICATION_CREDENTIALS": str(files["adc.json"]),
        "CLIENT_CERT_KEY_FILE": str(files["client.key"]),
        "SSL_CERT_FILE": str(files["ca.crt"]),
        "NIX_SSL_CERT_FILE": str(files["ca.crt"]),
        "MISSING_FILE": str(tmp_path / "absent"),
        "RELATIVE_FILE": "relative/key.pem",
        HIDE_VARIABLE: f"{tmp_path / 'home'}",
        "HOME": str(tmp_path / "home"),
    }
    assert secret_paths(environ) == sorted(
        [
            files["key.pem"],
            files["adc.json"],
            files["client.key"],
            tmp_path / "home",
            tmp_path / "home" / ".config" / "gcloud",
        ]
    )


TOKEN = "ya29.the-runner-service-account-token"


@pytest.fixture
def metadata_server():
    """A stand-in for Cloud Run's metadata server on loopback: it hands the service
    account's token to anyone who asks; its token URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"access_token": TOKEN, "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/computeMetadata/v1/instance/service-accounts/default/token"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tiny_run(tmp_path, synthetic_set, monkeypatch):
    """A tiny repository at 1.0 (base), its run's cache, out folder and two blends; a
    function that commits a head, runs ``run`` on one slot and returns the result."""
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(adapters.ADAPTERS, "tiny", tiny_adapter(tmp_path))
    repo, base = tiny_repository(tmp_path / "repo")
    blends = two_blends(synthetic_set, tmp_path / "blends")
    out = tmp_path / "out"

    def run(files: dict[str, str]) -> RunResult:
        for name, text in files.items():
            (repo / name).write_text(text)
        head = commit(repo, "the pull request")
        args = ["run", "--repo", str(repo), "--head", head, "--base", base, "--dataset",
                str(blends), "--out", str(out), "--workers", "1", "--adapter", "tiny"]  # fmt: skip
        assert main(args) == 0
        result = RunResult.read(out / "result.json")
        if result.provenance.isolation["build"].startswith("none"):
            pytest.skip(f"nothing can be isolated here: {result.provenance.isolation['build']}")
        return result

    return run, tmp_path / "cache", out, blends


SNOOPING_SETUP = """
import json, pathlib, socket, sys, urllib.request
found = {{}}
try:
    asked = urllib.request.Request({url!r}, headers={{"Metadata-Flavor": "Google"}})
    found["metadata"] = urllib.request.urlopen(asked, timeout=5).read().decode()
except OSError:
    pass
for host, port in (("pypi.org", 443), ("1.1.1.1", 53)):
    try:
        socket.create_connection((host, port), 5).close()
        found[host] = "connected"
    except OSError:
        pass
pathlib.Path(sys.prefix, "found.json").write_text(json.dumps(found))
from setuptools import setup
setup()
"""


def test_a_malicious_build_reaches_neither_the_metadata_server_nor_the_network(
    tiny_run, metadata_server
):
    run, cache, _, _ = tiny_run
    result = run({"setup.py": SNOOPING_SETUP.format(url=metadata_server)})
    head = result.provenance.head
    assert head.build.status == "ok"
    found = json.loads((cache / "envs" / head.build.environment / "found.json").read_text())
    assert found == {}, "the build asked the metadata server or reached the network"
    assert result.comparison.verdict == "pass"


POISONING_MODULE = """
import json, pathlib, sys

__version__ = "1.1"
OUT, CACHE, RUNNER, DATASET = (pathlib.Path(path) for path in {paths!r})


def _wrote(path):
    try:
        with open(path, "a") as stream:
            stream.write("GAIN = 1.5\\n")
        return True
    except OSError:
        return False


def _created(folder):
    try:
        folder.mkdir(parents=True)
        return True
    except OSError:
        return False


def _poison():
    own = pathlib.Path(sys.prefix)
    envs = [path for path in sorted(own.parent.iterdir()) if path.is_dir()]
    targets = [env / "poison" for env in envs]  # its own environment and base's
    targets += [m for env in envs for m in env.glob("lib/*/site-packages/tinydeblender/*.py")]
    targets += sorted(OUT.glob("blends/*/*.base.npz"))  # base's arrays so far
    targets += [folder / "arrays.npz" for folder in OUT.glob("logs/scratch/*-base")]
    targets += [RUNNER / "poison.py", CACHE / "poison", CACHE / "jax" / "poison"]
    wrote = [str(path) for path in targets if _wrote(path)]
    # base's arrays to come: a folder where each goes, so base's worker cannot write them
    folder = OUT / "blends" / DATASET.name
    later = [folder / (blend.stem + ".base.npz") for blend in DATASET.glob("*.npz")]
    wrote += [str(folder) for folder in later if not folder.exists() and _created(folder)]
    tried = len(targets) + len(later)
    print("POISONED " + json.dumps({{"tried": tried, "wrote": wrote}}), file=sys.stderr)


_poison()
"""


def test_a_malicious_deblender_finds_every_environment_other_arrays_and_the_runner_read_only(
    tiny_run,
):
    run, cache, out, blends = tiny_run
    runner_package = Path(runner.__file__).parent
    paths = [str(out), str(cache), str(runner_package), str(blends)]
    try:
        result = run({"tinydeblender/__init__.py": POISONING_MODULE.format(paths=paths)})
    finally:
        (runner_package / "poison.py").unlink(missing_ok=True)
    logs = "".join(path.read_text() for path in (out / "logs").glob("worker-*-head.log"))
    attack = json.loads(logs.split("POISONED ", 1)[1].splitlines()[0])
    assert attack["tried"] >= 9, "the attack found what it aims at"
    assert attack["wrote"] == []
    base_env = cache / "envs" / result.provenance.base.build.environment
    for module in base_env.glob("lib/*/site-packages/tinydeblender/*.py"):
        assert "GAIN" not in module.read_text()
    assert all(b.base.status == "ok" and b.head.status == "ok" for b in result.blends)
    assert result.comparison.identical_models and result.comparison.verdict == "pass"
