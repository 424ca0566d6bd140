"""The deployment files (``app.yaml``, ``deploy/``) and Secret Manager loading."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import google_crc32c
import pathspec
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from google.cloud import secretmanager
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bot.app import WORKER_BOOT_ERROR, create_app, gunicorn_app
from bot.secrets import SecretsError, access_secret, add_secret_version, load_secrets

ROOT = Path(__file__).parents[2]
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
    assert argv[-1] == "bot.app:gunicorn_app()"
    assert argv[argv.index("--workers") + 1] == "1"  # one dispatcher and reconciler each
    module, factory = argv[-1].removesuffix("()").split(":")
    assert callable(getattr(importlib.import_module(module), factory))
    importlib.import_module("aiohttp.worker")
    # Manual scaling: `gcloud app deploy --stop-previous-version` can stop the old version.
    assert app["instance_class"].startswith("B") and "automatic_scaling" not in app
    assert app["manual_scaling"]["instances"] == 1
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


def test_pyproject_has_the_deployment_dependencies() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("gunicorn", "google-cloud-secret-manager", "aiohttp"):
        assert f'"{name}>=' in text


# -- the runner's container and job


def test_dockerfile_has_what_the_runner_builds_with() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    assert base and (int(base.group(1)), int(base.group(2))) >= (3, 12)
    for package in ("build-essential", "g++", "git", "bubblewrap", "ccache", "zstd"):
        assert re.search(rf"\s{re.escape(package)}\s", text), package
    assert 'pip install ".[runner]"' in text  # the project, with uv among the runner's
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
    assert container["image"] == "REPLACE_WITH_IMAGE"  # the pushed tag (deploy/README.md)
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


def lifecycle(name: str) -> dict[str, int]:
    """A lifecycle file's Delete rules: age by prefix (each rule has a prefix)."""
    rules = json.loads((DEPLOY / name).read_text())["rule"]
    assert rules and all(r["action"]["type"] == "Delete" for r in rules)
    ages = {}
    for rule in rules:
        condition = rule["condition"]
        assert condition.get("matchesPrefix"), "a Delete rule without a prefix hits everything"
        assert 1 <= condition["age"] <= 365
        ages |= {prefix: condition["age"] for prefix in condition["matchesPrefix"]}
    return ages


def test_the_public_bucket_deletes_pr_runs_only() -> None:
    ages = lifecycle("artifacts-lifecycle.json")
    assert ages == {"runs/pr/": 30}
    for kept in ("images/ab.png", "runs/commit/pmelchior/scarlet/" + "a" * 40 + "/result.json"):
        assert not kept.startswith(tuple(ages))


def test_the_private_bucket_deletes_what_is_only_work_redone() -> None:
    ages = lifecycle("private-lifecycle.json")
    assert set(ages) == {"runs/", "outcomes/", "environments/", "ccache/"}  # a miss: work redone
    assert ages["environments/"] <= 7 <= ages["runs/"]


def test_lifecycle_prefixes_match_the_store_layout() -> None:
    from runner.deblend.outcomes import PREFIX
    from runner.deblend.shared import COMPILER_PREFIX, Place
    from runner.publish.merge import shard_prefix
    from runner.store import run_prefix

    public, private = lifecycle("artifacts-lifecycle.json"), lifecycle("private-lifecycle.json")
    assert run_prefix("pmelchior/scarlet", 7, "a" * 40).startswith(tuple(public))
    assert not run_prefix("pmelchior/scarlet", None, "a" * 40).startswith(tuple(public))
    place = Place.of("0123abcd", Path("/tmp/scarlet-regression/envs/0123abcd"))
    for key in (
        f"{PREFIX}/k/x.json",
        f"{COMPILER_PREFIX}k.tar",
        place.stem + ".tar.zst",
        place.lease,
        place.failure,
        shard_prefix("pmelchior/scarlet", None, "a" * 40, 0, 2) + "result.json",
    ):
        assert key.startswith(tuple(private)), key


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


def test_a_missing_credential_is_wrapped_like_the_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(SecretsError, match=f"reading {re.escape(HOOK)}: .*absent.json"):
        load_secrets({"GITHUB_WEBHOOK_SECRET_SECRET": HOOK})


# -- starting with Secret Manager (faked: no network)

TOKEN = "projects/p/secrets/scheduler-token/versions/latest"


@pytest.fixture
def production_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """app.yaml's three secret references in the environment, read from a fake Secret
    Manager holding the returned secrets (all three; a test deletes what it wants)."""
    secrets = {KEY: b"-----BEGIN PRIVATE KEY-----\n", HOOK: b"s3cret", TOKEN: b"t0ken"}
    monkeypatch.setattr(
        secretmanager, "SecretManagerServiceClient", lambda: FakeSecretManager(secrets)
    )
    for name in ("SCARLET_BOT_STATE", "SCARLET_BOT_STORE", "SCARLET_BOT_CLOUD_RUN_JOB"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "GITHUB_APP_ID": "1",
        "GITHUB_APP_PRIVATE_KEY_SECRET": KEY,
        "GITHUB_WEBHOOK_SECRET_SECRET": HOOK,
        "SCARLET_BOT_SCHEDULER_SECRET_SECRET": TOKEN,
        "SCARLET_BOT_DATASETS": str(tmp_path / "set1"),
        "SCARLET_BOT_DATA": str(tmp_path / "data"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return secrets


async def test_without_the_scheduler_token_only_drift_scheduling_is_off(
    production_env: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    del production_env[TOKEN]
    async with TestClient(TestServer(gunicorn_app())) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/_ah/start")).status == 200  # App Engine's start request
        refused = await client.post("/schedule/drift", headers={"X-Scheduler-Token": ""})
        assert refused.status == 401
    warnings = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(
        w["severity"] == "WARNING" and "drift scheduling" in w["message"] and TOKEN in w["message"]
        for w in warnings
    )


async def test_with_every_secret_the_scheduler_is_let_in(production_env: dict) -> None:
    async with TestClient(TestServer(create_app())) as client:
        answer = await client.post("/schedule/drift", headers={"X-Scheduler-Token": "t0ken"})
        assert answer.status == 202


@pytest.mark.parametrize("missing", [KEY, HOOK])
def test_a_required_secret_missing_stops_the_start_with_one_line_naming_it(
    production_env: dict[str, bytes], capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    del production_env[missing]
    with pytest.raises(SystemExit) as stopped:
        gunicorn_app()
    assert stopped.value.code == WORKER_BOOT_ERROR  # gunicorn's master stops, not respawns
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    entry = json.loads(line)
    assert entry["severity"] == "CRITICAL" and missing in entry["message"]
    assert "Traceback" not in captured.out + captured.err


# -- the deploy steps


def deploy_commands() -> list[str]:
    """The shell commands of deploy/README.md's code blocks, continuation lines joined and
    comments dropped."""
    text = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in lines]
    return [c for c in commands if c]


# What each gcloud command of the README must be given to run as written (without a
# prompt or a default that differs between projects): a command missing here fails, so
# that a new step is looked at.
GCLOUD_REQUIRES = {
    ("config", "set"): set(),
    ("config", "get-value"): set(),
    ("services", "enable"): set(),
    ("storage", "buckets", "create"): {"--location", "--uniform-bucket-level-access"},
    ("storage", "buckets", "update"): {"--lifecycle-file"},
    ("storage", "buckets", "add-iam-policy-binding"): {"--member", "--role"},
    ("storage", "cp"): set(),
    ("iam", "roles", "create"): {"--project", "--permissions"},
    ("iam", "service-accounts", "create"): set(),
    ("iam", "service-accounts", "add-iam-policy-binding"): {"--member", "--role"},
    ("secrets", "create"): {"--replication-policy"},
    ("secrets", "add-iam-policy-binding"): {"--member", "--role"},
    ("projects", "describe"): set(),
    ("projects", "add-iam-policy-binding"): {"--member", "--role"},
    ("artifacts", "repositories", "create"): {"--repository-format", "--location"},
    ("builds", "submit"): {"--config", "--ignore-file", "--substitutions"},
    ("run", "jobs", "replace"): {"--region"},
    ("run", "jobs", "add-iam-policy-binding"): {"--region", "--member", "--role"},
    ("run", "jobs", "executions", "list"): {"--region", "--job"},
    ("app", "create"): {"--region"},
    ("app", "describe"): {"--format"},
    ("app", "deploy"): set(),
    ("app", "logs", "tail"): set(),
    ("auth", "application-default", "login"): set(),
}


def substitutions(command: str) -> list[str]:
    """The commands inside ``$(...)`` of ``command`` (parentheses in them balanced)."""
    found, depth, start = [], 0, 0
    for index, char in enumerate(command):
        if command.startswith("$(", index) and depth == 0:
            start, depth = index + 2, 1
        elif char == "(" and depth and index != start - 1:
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if depth == 0:
                found.append(command[start:index])
    return found


def gcloud_calls() -> list[tuple[tuple[str, ...], dict[str, str], list[str]]]:
    """Every gcloud call of the README (inside ``$(...)`` too): its command, its flags
    (name: value) and its positional arguments."""
    calls = []
    for command in deploy_commands():
        for text in [command, *substitutions(command)]:
            words = shlex.split(text)
            if words[0] != "gcloud":
                continue
            words = words[1 : words.index(">") if ">" in words else None]
            flags = {w.split("=")[0]: w.partition("=")[2] for w in words if w.startswith("--")}
            positional = [w for w in words if not w.startswith("-")]
            name = max((k for k in GCLOUD_REQUIRES if tuple(positional[: len(k)]) == k), key=len)
            calls.append((name, flags, positional[len(name) :]))
    return calls


def test_every_gcloud_line_is_given_what_it_requires() -> None:
    calls = gcloud_calls()
    assert len(calls) > 30
    for name, flags, _ in calls:
        assert GCLOUD_REQUIRES[name] <= set(flags), (name, GCLOUD_REQUIRES[name] - set(flags))
        if name[0] == "run":
            assert flags["--region"] == "$REGION", name
    assert all(f["--location"] == "$REGION" for n, f, _ in calls if "--location" in f)
    assert [f["--region"] for n, f, _ in calls if n == ("app", "create")] == ["$APP_REGION"]


def test_every_command_runs_as_written() -> None:
    """Quotes balance, no optional part in brackets, no placeholder left to edit, and
    every variable set before it is used (by the first block, a loop or a command)."""
    defined = {"HOME"}
    for command in deploy_commands():
        words = shlex.split(command)
        assert not [w for w in words if w.startswith("[")], command
        if words[0] != "sed":
            assert "REPLACE_WITH" not in command and "<" not in command, command
        assigned = re.findall(r"(?:^|[\s;)])([A-Za-z_]\w*)=", command)
        assigned += re.findall(r"\bfor (\w+) in\b", command)
        used = re.findall(r"\$\{?([A-Za-z_]\w*)", command)
        defined |= set(assigned)
        assert not set(used) - defined, (command, set(used) - defined)
    assert {"PROJECT", "REGION", "BUCKET", "ORG", "IMAGE", "HOST", "APP_ID"} <= defined


def test_the_region_is_set_once() -> None:
    region = re.compile(
        r"\b(?:us|europe|asia|northamerica|southamerica|australia|me|africa)-[a-z]+\d\b"
    )
    named = [c for c in deploy_commands() if region.search(c)]
    assert [c.split()[:2] for c in named] == [["REGION=us-central1"], ["case", "$REGION"]]
    for name in ("app.yaml", "deploy/runner-job.yaml", "deploy/cloudbuild.yaml"):
        assert not region.search((ROOT / name).read_text()), name


FAKE = {
    "PROJECT": "proj",
    "REGION": "europe-west3",
    "BUCKET": "proj-sr",
    "IMAGE": "europe-west3-docker.pkg.dev/proj/scarlet/runner:abc1234",
    "HOST": "proj.ew.r.appspot.com",
    "APP_ID": "12345",
}


def filled(name: str) -> Any:
    """``name`` (app.yaml or deploy/runner-job.yaml) as the README's sed fills it, with
    the ``FAKE`` values."""
    (sed,) = [shlex.split(c) for c in deploy_commands() if c.startswith("sed ") and name in c]
    text = (ROOT / name).read_text()
    for word, expression in itertools.pairwise(sed):
        if word == "-e":
            _, old, new, _ = expression.split("|")
            text = text.replace(old, re.sub(r"\$(\w+)", lambda m: FAKE[m[1]], new))
    loaded = yaml.safe_load(text)
    assert "REPLACE_WITH" not in json.dumps(loaded), name
    return loaded


def test_the_readme_fills_every_placeholder_of_the_job_and_the_app() -> None:
    job = filled("deploy/runner-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == FAKE["IMAGE"]  # the tag the build pushed, never :latest
    volume = job["spec"]["template"]["spec"]["template"]["spec"]["volumes"][0]
    assert volume["csi"]["volumeAttributes"]["bucketName"] == "proj-sr-data"
    env = filled("app.yaml")["env_variables"]
    assert env["SCARLET_BOT_CLOUD_RUN_JOB"] == (
        "projects/proj/locations/europe-west3/jobs/scarlet-runner"
    )
    assert env["SCARLET_BOT_PUBLIC_URL"] == "https://proj.ew.r.appspot.com"
    assert env["GITHUB_APP_ID"] == "12345"
    buckets = [env[k] for k in ("SCARLET_BOT_STORE", "SCARLET_BOT_PRIVATE_STORE")]
    assert buckets == ["gs://proj-sr", "gs://proj-sr-private"]
    (build,) = [f for n, f, _ in gcloud_calls() if n == ("builds", "submit")]
    assert build["--substitutions"] == "_IMAGE=$IMAGE"
    (image,) = [c for c in deploy_commands() if c.startswith("IMAGE=")]
    assert image.endswith(":$(git rev-parse --short HEAD)")


def test_the_public_bucket_is_read_by_name_and_nobody_lists_it() -> None:
    calls = gcloud_calls()
    (role,) = [f for n, f, a in calls if n == ("iam", "roles", "create") and "Reader" in a[0]]
    assert role["--permissions"] == "storage.objects.get"
    grants = {
        (a[0], f["--member"]): f["--role"]
        for n, f, a in calls
        if n == ("storage", "buckets", "add-iam-policy-binding")
    }
    reader = "projects/$PROJECT/roles/scarletObjectReader"
    assert grants[("gs://$BUCKET", "allUsers")] == reader
    assert grants[("gs://$BUCKET", "serviceAccount:$BOT")] == reader
    private = [m for (bucket, m) in grants if bucket == "gs://$BUCKET-private"]
    assert private == ["serviceAccount:$RUNNER"]  # the runner's alone
    (closed,) = [
        a
        for n, f, a in calls
        if n == ("storage", "buckets", "create") and "--public-access-prevention" in f
    ]
    assert {"gs://$BUCKET-private", "gs://$BUCKET-bot", "gs://$BUCKET-data"} <= set(closed)


def test_the_bot_may_act_as_the_runner_and_you_as_both() -> None:
    grants = {
        (a[0], f["--member"], f["--role"])
        for n, f, a in gcloud_calls()
        if n == ("iam", "service-accounts", "add-iam-policy-binding")
    }
    user = "roles/iam.serviceAccountUser"
    assert grants == {
        ("$RUNNER", "serviceAccount:$BOT", user),
        ("$RUNNER", "$ME", user),
        ("$BOT", "$ME", user),
    }
    assert "`iam.serviceAccounts.actAs`" in (DEPLOY / "iam.md").read_text()


def test_every_secret_has_a_version_before_the_first_deploy() -> None:
    commands = deploy_commands()
    first_deploy = next(i for i, c in enumerate(commands) if c.startswith("gcloud app deploy"))
    before = " ".join(commands[:first_deploy])
    env = load_yaml(ROOT / "app.yaml")["env_variables"]
    secrets = [
        re.search(r"/secrets/([^/]+)/", v).group(1) for v in env.values() if "/secrets/" in v
    ]
    assert sorted(secrets) == ["github-app-private-key", "github-webhook-secret"]
    for secret in secrets:
        added = f"gcloud secrets versions add {secret} " in before
        registered = re.search(rf"--[a-z-]+-secret projects/\$PROJECT/secrets/{secret}\b", before)
        assert added or registered, secret


def test_deploys_stop_the_previous_version() -> None:
    deploys = [c for c in deploy_commands() if c.startswith("gcloud app deploy app.yaml")]
    assert deploys and all("--stop-previous-version" in c.split() for c in deploys)


def test_the_daily_drift_run_comes_from_app_engine_cron_without_a_token() -> None:
    (job,) = load_yaml(ROOT / "cron.yaml")["cron"]
    assert job["url"] == "/schedule/drift" and job["schedule"].startswith("every day")
    assert "gcloud app deploy cron.yaml" in deploy_commands()
    env = load_yaml(ROOT / "app.yaml")["env_variables"]
    assert not any("SCHEDULER" in name for name in env)


def test_the_app_credentials_are_written_outside_the_repository() -> None:
    (register,) = [c for c in deploy_commands() if "bot.manifest register" in c]
    out = register.split()[register.split().index("--out") + 1]
    assert out.startswith(("~/", "$HOME/", "/")), out


# -- what App Engine gets: .gcloudignore, requirements.txt

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def repository_files() -> list[str]:
    """Every file git tracks or would track (not ignored), relative to the root."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    return [f for f in listed if f and (ROOT / f).is_file()]


def uploaded(files: list[str]) -> list[str]:
    """The files of ``files`` that .gcloudignore lets ``gcloud app deploy`` upload."""
    spec = pathspec.GitIgnoreSpec.from_lines((ROOT / ".gcloudignore").read_text().splitlines())
    return [f for f in files if not spec.match_file(f)]


def bot_imports() -> tuple[set[str], set[str]]:
    """The repository files the bot imports from (bot/, and the runner modules it reaches,
    at any depth, inside functions too), and the third-party top-level modules they name."""
    files: set[str] = set()
    third_party: set[str] = set()
    todo = [str(p.relative_to(ROOT)) for p in (ROOT / "bot").rglob("*.py")]
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in ("bot", "runner"):
                    if top not in sys.stdlib_module_names and top != "__future__":
                        third_party.add(top)
                    continue
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # the packages, then the module
                    module = ROOT.joinpath(*parts[:depth])
                    for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                        if candidate.is_file():
                            todo.append(str(candidate.relative_to(ROOT)))
    return files, third_party


def test_gcloudignore_uploads_the_app_and_nothing_else() -> None:
    files = [*repository_files(), "app-credentials/key.pem", ".venv/bin/python"]
    files += ["bot/__pycache__/app.cpython-312.pyc", "data/hsc/set1/blend-0.npz"]
    upload = uploaded(files)
    leaked = [f for f in upload if f.startswith(NOT_UPLOADED) or "__pycache__" in f]
    assert not leaked
    shipped = {"app.yaml", "requirements.txt", "bot/app.py", "bot/pages/static/trends.js"}
    assert shipped <= set(upload)
    needed, _ = bot_imports()
    assert {"runner/__init__.py", "runner/store/__init__.py"} <= needed
    assert needed <= set(upload)  # every module the bot can import is there
    assert not [f for f in upload if f.startswith("runner/") and f not in needed]


def build_upload(files: list[str]) -> list[str]:
    """The files of ``files`` that ``gcloud builds submit`` uploads as the README runs it:
    its ``--ignore-file``, read (as gcloud reads it) relative to the uploaded directory."""
    (build,) = [(f, a) for n, f, a in gcloud_calls() if n == ("builds", "submit")]
    flags, (source,) = build
    assert source == "."  # the repository root
    lines = (ROOT / flags["--ignore-file"]).read_text().splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    return [f for f in files if not spec.match_file(f)]


def test_cloud_build_uploads_the_dockerfile_and_what_it_copies() -> None:
    files = repository_files()
    bogus = ["app-credentials/key.pem", ".venv/bin/python", "bot/__pycache__/app.pyc"]
    upload = build_upload([*files, *bogus, "data/hsc/set1/blend-0.npz", "tests/x.py"])
    config = load_yaml(DEPLOY / "cloudbuild.yaml")
    (step,) = config["steps"]
    args = step["args"]
    dockerfile, context = args[args.index("-f") + 1], args[-1]
    assert context == "." and {dockerfile, dockerfile + ".dockerignore"} <= set(upload)
    copied = []
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            copied += line.split()[1:-1]
    assert {"runner", "bot", "pyproject.toml", "README.md"} <= set(copied)
    needed = [f for f in files if any(f == c or f.startswith(c + "/") for c in copied)]
    needed = [f for f in needed if "__pycache__" not in f]
    assert needed and set(needed) <= set(upload)
    assert set(upload) == {*needed, dockerfile, dockerfile + ".dockerignore"}
    # The root .gcloudignore (App Engine's allow-list) would leave the Dockerfile out.
    assert dockerfile not in uploaded(files)


NOT_UPLOADED = ("data/", "tests/", "benchmarks/", "app-credentials/", ".venv/", "deploy/", ".git")


def test_app_credentials_are_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "app-credentials/key.pem"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


def pins() -> dict[str, tuple[str, str]]:
    """requirements.txt's pins: name -> (version, what the compiler says needs it)."""
    found: dict[str, tuple[str, str]] = {}
    entries = re.split(r"^(?=[A-Za-z0-9])", (ROOT / "requirements.txt").read_text(), flags=re.M)
    for entry in entries:
        pin = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry)
        if pin:
            via = " ".join(re.findall(r"^\s+#\s+(?:via )?(.+)$", entry, re.M))
            found[canonicalize_name(pin.group(1))] = (pin.group(2), via)
    return found


def test_requirements_pin_the_bots_dependencies_from_pyproject() -> None:
    """requirements.txt is pyproject.toml's base dependencies compiled (every package
    pinned, with hashes): the direct ones are exactly those, at versions they allow."""
    text = (ROOT / "requirements.txt").read_text()
    assert "uv pip compile pyproject.toml --universal --generate-hashes -o requirements.txt" in text
    pinned = pins()
    assert len(pinned) > 10 and text.count("==") == len(pinned)
    assert all(
        line.strip().startswith(("--hash", "#")) or "==" in line
        for line in text.splitlines()
        if line.strip()
    )
    direct = {
        n: v for n, (v, via) in pinned.items() if "scarlet-regression (pyproject.toml)" in via
    }
    wanted = {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
    assert set(direct) == set(wanted)
    for name, requirement in wanted.items():
        assert requirement.specifier.contains(direct[name]), (name, direct[name])
    runner_only = {
        canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["runner"]
    }
    # App Engine installs nothing the bot never imports: a runner dependency is pinned only
    # where a dependency of the bot's own needs it too (packaging, for plotly).
    for name in runner_only & set(pinned):
        assert "scarlet-regression" not in pinned[name][1], (name, pinned[name])


def test_requirements_install_everything_the_bot_imports() -> None:
    _, modules = bot_imports()
    assert {"aiohttp", "gidgethub", "google"} <= modules
    distributions = importlib.metadata.packages_distributions()
    pinned = pins()
    missing = [
        m for m in modules if not {canonicalize_name(d) for d in distributions[m]} & set(pinned)
    ]
    assert not missing


# -- the bot as App Engine installs and starts it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(app_root: Path, venv: Path, env: dict[str, str]) -> subprocess.Popen:
    """app.yaml's entrypoint, run by a shell in ``app_root`` with ``venv`` on PATH."""
    entrypoint = load_yaml(ROOT / "app.yaml")["entrypoint"]
    path = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return subprocess.Popen(
        ["bash", "-c", entrypoint],
        cwd=app_root,
        env={"PATH": path, "HOME": str(app_root), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.buildpack
def test_the_uploaded_app_installs_and_serves_as_on_app_engine(tmp_path: Path) -> None:
    """Only the files .gcloudignore uploads, `pip install -r requirements.txt` in a fresh
    venv (the buildpack's command), then gunicorn as app.yaml starts it."""
    app_root = tmp_path / "app"
    for name in uploaded(repository_files()):
        (app_root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, app_root / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-r", "requirements.txt"], cwd=app_root, check=True)
    subprocess.run([*pip, "check"], check=True)
    for absent in ("numpy", "scipy", "matplotlib", "astropy", "uv"):
        found = subprocess.run([python, "-c", f"import {absent}"], capture_output=True)
        assert found.returncode != 0, absent

    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    port = free_port()
    env = {
        "PORT": str(port),
        "GITHUB_APP_ID": "1",
        "GITHUB_APP_PRIVATE_KEY_FILE": str(key),
        "GITHUB_WEBHOOK_SECRET": "s3cret",
        "SCARLET_BOT_DATASETS": "/datasets/hsc/set1",
        "SCARLET_BOT_DATA": str(tmp_path / "data"),
    }
    server = serve(app_root, venv, env)
    try:
        for _ in range(300):
            assert server.poll() is None, server.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ah/start") as answer:
                    assert answer.status == 200
                break
            except OSError:
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as answer:
            health = json.load(answer)
        assert health["ok"] is True and health["watcher"]["failures"] == 0, health
    finally:
        server.terminate()
        server.communicate(timeout=30)

    # A required secret that cannot be read (no credentials here): one line, gunicorn stops.
    del env["GITHUB_WEBHOOK_SECRET"]
    env["GITHUB_WEBHOOK_SECRET_SECRET"] = HOOK
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "absent.json")
    stopped = serve(app_root, venv, env)
    out, err = stopped.communicate(timeout=120)
    assert stopped.returncode == WORKER_BOOT_ERROR, err
    (line,) = out.splitlines()
    assert json.loads(line)["severity"] == "CRITICAL" and HOOK in line
    assert "Traceback" not in err
