"""The deployment files (``app.yaml``, ``deploy/``) and Secret Manager loading."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import google_crc32c
import pytest
import yaml

from bot.secrets import SecretsError, access_secret, add_secret_version, load_secrets

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
SECRET_RESOURCE = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")


def looks_secret(name: str, value: str) -> bool:
    """A value that is (or may be) a secret, unless it only names a Secret Manager version."""
    if SECRET_RESOURCE.fullmatch(value):
        return False
    if "PRIVATE KEY" in value or "BEGIN " in value:
        return True
    upper = name.upper()
    return upper.endswith(("SECRET", "TOKEN", "PASSWORD")) or "KEY" in upper


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- app.yaml


def test_app_yaml_runs_the_aiohttp_factory_under_gunicorn() -> None:
    app = load_yaml(ROOT / "app.yaml")
    runtime = re.fullmatch(r"python3(\d+)", app["runtime"])
    assert runtime and int(runtime.group(1)) >= 12
    argv = shlex.split(app["entrypoint"])
    assert argv[0] == "gunicorn" and "-b" in argv and argv[argv.index("-b") + 1] == ":$PORT"
    assert argv[argv.index("--worker-class") + 1] == "aiohttp.GunicornWebWorker"
    assert argv[-1] == "bot.app:create_app()"
    assert argv[argv.index("--workers") + 1] == "1"  # one dispatcher and reconciler each
    module, factory = argv[-1].removesuffix("()").split(":")
    assert callable(getattr(importlib.import_module(module), factory))
    importlib.import_module("aiohttp.worker")
    assert app["instance_class"].startswith("F")
    scaling = app["automatic_scaling"]
    assert 1 <= scaling["min_instances"] <= scaling["max_instances"]
    assert "@" in app["service_account"]


def test_app_yaml_holds_no_secrets() -> None:
    env = load_yaml(ROOT / "app.yaml")["env_variables"]
    assert all(isinstance(v, str) for v in env.values())
    leaking = [k for k, v in env.items() if looks_secret(k, v)]
    assert not leaking
    for name in ("GITHUB_APP_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET", "GITHUB_APP_PRIVATE_KEY_FILE"):
        assert name not in env
    assert SECRET_RESOURCE.fullmatch(env["GITHUB_APP_PRIVATE_KEY_SECRET"])
    assert SECRET_RESOURCE.fullmatch(env["GITHUB_WEBHOOK_SECRET_SECRET"])
    assert env["SCARLET_BOT_STORE"].startswith("gs://")
    assert env["SCARLET_BOT_DATA"].startswith("/tmp/")  # App Engine's only writable place
    # Several instances: the state is in a bucket of its own, not the public artifacts'.
    state, store = env["SCARLET_BOT_STATE"], env["SCARLET_BOT_STORE"]
    assert state.startswith("gs://") and state.split("/")[2] != store.split("/")[2]
    assert env["SCARLET_BOT_PUBLIC_URL"].startswith("https://")
    assert env["SCARLET_BOT_CLOUD_RUN_JOB"].endswith("/jobs/scarlet-runner")


def test_the_secret_check_catches_secrets() -> None:
    assert looks_secret("GITHUB_WEBHOOK_SECRET", "abc")
    assert looks_secret("ANY", "-----BEGIN RSA PRIVATE KEY-----")
    assert looks_secret("API_KEY", "x")
    assert not looks_secret("GITHUB_WEBHOOK_SECRET_SECRET", "projects/p/secrets/s/versions/1")


def test_requirements_install_the_project_itself() -> None:
    """App Engine installs requirements.txt; it must name the project, not a copy of its
    dependencies (pyproject.toml stays the single source)."""
    path = ROOT / "requirements.txt"
    if not path.exists():
        pytest.skip("requirements.txt (one line: '.') is not in the repository yet")
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    assert [ln for ln in lines if ln] == ["."]


def test_pyproject_has_the_deployment_dependencies() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("gunicorn", "google-cloud-secret-manager", "aiohttp"):
        assert f'"{name}>=' in text


# -- the runner's container and job


def test_dockerfile_has_what_the_runner_builds_with() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    assert base and (int(base.group(1)), int(base.group(2))) >= (3, 12)
    for package in ("build-essential", "g++", "git", "libeigen3-dev"):
        assert re.search(rf"\s{re.escape(package)}\s", text), package
    assert "pip install ." in text  # the project, with uv among its dependencies
    assert 'ENTRYPOINT ["python", "-m", "runner"]' in text
    for copied in ("runner", "bot", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, re.M), copied


def test_runner_job_definition() -> None:
    job = load_yaml(DEPLOY / "runner-job.yaml")
    assert job["apiVersion"] == "run.googleapis.com/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == "scarlet-runner"
    execution = job["spec"]["template"]["spec"]
    assert execution["taskCount"] >= 1 and execution["parallelism"] >= 1
    task = execution["template"]["spec"]
    assert 3600 <= task["timeoutSeconds"] <= 24 * 3600
    assert task["maxRetries"] == 1
    assert task["serviceAccountName"].startswith("scarlet-runner@")
    (container,) = task["containers"]
    assert re.fullmatch(r"\S+-docker\.pkg\.dev/\S+/runner:\S+", container["image"])
    assert "command" not in container and "args" not in container  # the image's entrypoint
    limits = container["resources"]["limits"]
    memory = int(limits["memory"].removesuffix("Gi"))
    cpu = int(limits["cpu"])
    assert memory >= 8 and memory >= 3.5 * (cpu - 1) + 3  # scarlet2 workers plus the env
    assert memory <= {1: 4, 2: 8, 4: 16, 6: 24, 8: 32}[cpu]  # Cloud Run's per-CPU ceiling
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    assert not [k for k, v in env.items() if looks_secret(k, v)]
    assert all("valueFrom" not in e for e in container.get("env", []))
    (volume,) = task["volumes"]
    assert volume["csi"]["readOnly"] is True
    assert container["volumeMounts"][0]["mountPath"] == "/datasets"


def test_app_yaml_datasets_are_inside_the_job_volume() -> None:
    env = load_yaml(ROOT / "app.yaml")["env_variables"]
    assert all(p.startswith("/datasets/") for p in env["SCARLET_BOT_DATASETS"].split(":"))


# -- the bucket


def test_the_state_bucket_forgets_deliveries_and_days_but_not_unfinished_work() -> None:
    rules = json.loads((DEPLOY / "state-lifecycle.json").read_text())["rule"]
    ages = {p: r["condition"]["age"] for r in rules for p in r["condition"]["matchesPrefix"]}
    assert ages["deliveries/"] >= 14  # past GitHub's redelivery window
    assert ages["schedules/"] >= 2
    assert not any(prefix.startswith(("open/", "active/")) for prefix in ages)
    assert all(r["action"]["type"] == "Delete" for r in rules)


def test_lifecycle_deletes_pr_runs_only() -> None:
    rules = json.loads((DEPLOY / "bucket-lifecycle.json").read_text())["rule"]
    deleting = [r for r in rules if r["action"]["type"] == "Delete"]
    assert deleting
    prefixes = [p for r in deleting for p in r["condition"].get("matchesPrefix", [])]
    assert prefixes == ["runs/pr/"]
    for rule in deleting:
        condition = rule["condition"]
        assert condition.get("matchesPrefix"), "a Delete rule without a prefix hits everything"
        assert 1 <= condition["age"] <= 365
    for kept in ("images/ab.png", "runs/commit/pmelchior/scarlet/" + "a" * 40 + "/result.json"):
        assert not any(kept.startswith(p) for p in prefixes)


def test_lifecycle_prefixes_match_the_store_layout() -> None:
    from runner.store import run_prefix

    prefixes = json.loads((DEPLOY / "bucket-lifecycle.json").read_text())["rule"][0]
    key = run_prefix("pmelchior/scarlet", 7, "a" * 40)
    assert any(key.startswith(p) for p in prefixes["condition"]["matchesPrefix"])
    assert not any(
        run_prefix("pmelchior/scarlet", None, "a" * 40).startswith(p)
        for p in prefixes["condition"]["matchesPrefix"]
    )


# -- Secret Manager


class FakeSecretManager:
    """``access_secret_version``/``add_secret_version`` over a dict, like the real client."""

    def __init__(self, secrets: dict[str, bytes], corrupt: bool = False) -> None:
        self.secrets = secrets
        self.corrupt = corrupt
        self.read: list[str] = []

    def access_secret_version(self, request: dict[str, str]) -> Any:
        name = request["name"]
        self.read.append(name)
        if name not in self.secrets:
            raise LookupError(f"404 Secret [{name}] not found")
        data = self.secrets[name]
        crc = google_crc32c.value(data) ^ int(self.corrupt)
        return SimpleNamespace(payload=SimpleNamespace(data=data, data_crc32c=crc))

    def add_secret_version(self, request: dict[str, Any]) -> Any:
        name = f"{request['parent']}/versions/1"
        self.secrets[name] = request["payload"]["data"]
        return SimpleNamespace(name=name)


KEY = "projects/p/secrets/key/versions/latest"
HOOK = "projects/p/secrets/hook/versions/3"


def test_load_secrets_fills_the_variables() -> None:
    client = FakeSecretManager({KEY: b"-----BEGIN PRIVATE KEY-----\n", HOOK: b"s3cret"})
    env = {
        "GITHUB_APP_PRIVATE_KEY_SECRET": KEY,
        "GITHUB_WEBHOOK_SECRET_SECRET": HOOK,
        "OTHER": "1",
    }
    filled = load_secrets(env, client=client)
    assert filled["GITHUB_APP_PRIVATE_KEY"] == "-----BEGIN PRIVATE KEY-----\n"
    assert filled["GITHUB_WEBHOOK_SECRET"] == "s3cret"
    assert filled["OTHER"] == "1" and "GITHUB_WEBHOOK_SECRET" not in env
    assert client.read == [KEY, HOOK]


def test_load_secrets_without_references_reads_nothing() -> None:
    env = {"GITHUB_WEBHOOK_SECRET": "plain"}
    assert load_secrets(env, client=object()) == env


@pytest.mark.parametrize(
    ("env", "client", "message"),
    [
        ({"GITHUB_WEBHOOK_SECRET_SECRET": "hook"}, FakeSecretManager({}), "not projects/"),
        ({"GITHUB_WEBHOOK_SECRET_SECRET": HOOK}, FakeSecretManager({}), "not found"),
        (
            {"GITHUB_WEBHOOK_SECRET_SECRET": HOOK, "GITHUB_WEBHOOK_SECRET": "x"},
            FakeSecretManager({HOOK: b"y"}),
            "not both",
        ),
        ({"GITHUB_WEBHOOK_SECRET_SECRET": HOOK}, FakeSecretManager({HOOK: b"y"}, True), "CRC32C"),
        ({"GITHUB_WEBHOOK_SECRET_SECRET": HOOK}, FakeSecretManager({HOOK: b"\xff"}), "UTF-8"),
    ],
)
def test_load_secrets_errors_name_the_secret(env: dict, client: Any, message: str) -> None:
    with pytest.raises(SecretsError, match=message):
        load_secrets(env, client=client)


def test_add_then_access_a_secret_version() -> None:
    client = FakeSecretManager({})
    name = add_secret_version("projects/p/secrets/hook", b"v", client)
    assert access_secret(name, client) == "v"
    with pytest.raises(SecretsError):
        add_secret_version("projects/p/secrets/hook/versions/1", b"v", client)
