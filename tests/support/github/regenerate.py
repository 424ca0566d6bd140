"""Regenerate the pinned GitHub descriptions the fake GitHub
(``tests/support/fake_github.py``) uses.

Run ``python tests/support/github/regenerate.py``: it ``npm pack``s the pinned octokit
packages into a temporary directory and writes, next to this script:

- ``openapi.json``: the dereferenced REST description trimmed to the operations in
  ``OPERATIONS`` (parameters, request bodies, response schemas; examples dropped);
- ``webhook-schemas.json``: the whole draft-07 webhook schema (one definition per
  ``event$action``, ``push$event`` for push);
- ``webhooks/<event>.<action>.json`` (``push.json``): one example delivery per event and
  action in ``WEBHOOKS``, valid against its schema definition, adapted minimally (see
  ``adapt``); an action without an example is made from another's (``DERIVED``).

Needs ``npm`` on the ``PATH`` and network access to the npm registry.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
from openapi_spec_validator import validate as validate_spec

HERE = Path(__file__).resolve().parent

OPENAPI_VERSION = "23.0.2"
WEBHOOKS_VERSION = "7.6.1"

OPERATIONS: list[tuple[str, str]] = [
    ("POST", "/app/installations/{installation_id}/access_tokens"),
    ("GET", "/app/installations"),
    ("GET", "/installation/repositories"),
    ("GET", "/repos/{owner}/{repo}/installation"),
    ("POST", "/repos/{owner}/{repo}/check-runs"),
    ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"),
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("GET", "/repos/{owner}/{repo}/pulls"),
    ("GET", "/repos/{owner}/{repo}/commits/{commit_sha}/pulls"),
    ("POST", "/repos/{owner}/{repo}/issues"),
    ("PATCH", "/repos/{owner}/{repo}/issues/{issue_number}"),
    ("GET", "/repos/{owner}/{repo}/issues"),
    ("GET", "/repos/{owner}/{repo}/branches/{branch}"),
    ("POST", "/app-manifests/{code}/conversions"),
]

# event -> actions (None: the event has no action). File name: ``event.action.json``.
WEBHOOKS: dict[str, list[str | None]] = {
    "pull_request": ["opened", "synchronize", "reopened", "closed", "ready_for_review", "edited"],
    "issue_comment": ["created", "edited"],
    "check_run": ["rerequested", "requested_action"],
    "check_suite": ["rerequested"],
    "push": [None],
    "installation": ["created", "deleted", "suspend"],
    "installation_repositories": ["removed"],
}

# Actions the examples lack, made from another action's example: (source action, changes).
DERIVED: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("pull_request", "edited"): ("opened", {"title": {"from": "An older title"}}),
}

# Every delivery to a GitHub App carries its installation; examples without one get this.
INSTALLATION_LITE = {"id": 1, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}


def npm_pack(spec: str, into: Path) -> Path:
    """``npm pack`` one package at an exact version into ``into``; the unpacked folder."""
    out = subprocess.run(
        ["npm", "pack", "--silent", spec],
        cwd=into,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    target = into / out.removesuffix(".tgz")
    with tarfile.open(into / out) as archive:
        archive.extractall(target, filter="data")
    return target / "package"


def strip_examples(node: Any) -> Any:
    """A copy of an OpenAPI node without ``examples`` of media types (they are bulky)."""
    if isinstance(node, dict):
        return {
            key: strip_examples(value)
            for key, value in node.items()
            if not (key == "examples" and isinstance(value, dict))
        }
    if isinstance(node, list):
        return [strip_examples(item) for item in node]
    return node


def trim_openapi(full: dict[str, Any]) -> dict[str, Any]:
    """The description reduced to ``OPERATIONS``, keeping ``openapi``, ``info``, ``servers``."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path in OPERATIONS:
        item = full["paths"][path]
        kept = paths.setdefault(path, {k: v for k, v in item.items() if k == "parameters"})
        kept[method.lower()] = strip_examples(item[method.lower()])
    return {
        "openapi": full["openapi"],
        "info": full["info"],
        "servers": full["servers"],
        "paths": paths,
    }


def definition_name(event: str, action: str | None) -> str:
    """The schema definition of one event/action (``push$event`` for push)."""
    return f"{event}${action or 'event'}"


def adapt(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Minimal changes so the example is a GitHub App delivery on a pull request."""
    payload = copy.deepcopy(payload)
    if event != "installation":
        payload.setdefault("installation", dict(INSTALLATION_LITE))
    if event == "issue_comment":
        issue = payload["issue"]
        html = issue["html_url"].replace("/issues/", "/pull/")
        api = issue["url"].replace("/issues/", "/pulls/")
        issue["pull_request"] = {
            "url": api,
            "html_url": html,
            "diff_url": html + ".diff",
            "patch_url": html + ".patch",
            "merged_at": None,
        }
    return payload


def pick_example(
    examples: list[dict[str, Any]], event: str, action: str | None, validator: Any
) -> dict[str, Any]:
    """The first example of the action that validates once adapted, preferring ones that
    already carry an installation and, for push, a branch rather than a tag."""

    def rank(example: dict[str, Any]) -> tuple[int, int]:
        tag = str(example.get("ref", "")).startswith("refs/tags/")
        return ("installation" not in example, tag)

    candidates = [e for e in examples if e.get("action") == action]
    if not candidates and (event, action) in DERIVED:
        source, changes = DERIVED[(event, action)]
        candidates = [
            {**e, "action": action, "changes": changes}
            for e in examples
            if e.get("action") == source
        ]
    for example in sorted(candidates, key=rank):
        adapted = adapt(event, example)
        if not list(validator.iter_errors(adapted)):
            return adapted
    raise SystemExit(f"no valid example for {definition_name(event, action)}")


def main() -> int:
    """Fetch the packages and write every pinned file; prints what it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        openapi_dir = npm_pack(f"@octokit/openapi@{OPENAPI_VERSION}", root)
        examples_dir = npm_pack(f"@octokit/webhooks-examples@{WEBHOOKS_VERSION}", root)
        schemas_dir = npm_pack(f"@octokit/webhooks-schemas@{WEBHOOKS_VERSION}", root)

        full = json.loads((openapi_dir / "generated/api.github.com.deref.json").read_text())
        trimmed = trim_openapi(full)
        validate_spec(trimmed)  # openapi-spec-validator: the trimmed file is a valid 3.0 spec
        schema = json.loads((schemas_dir / "schema.json").read_text())
        index = json.loads((examples_dir / "api.github.com/index.json").read_text())

    written = [HERE / "openapi.json", HERE / "webhook-schemas.json"]
    written[0].write_text(
        json.dumps(trimmed, indent=0, separators=(",", ":"), ensure_ascii=False) + "\n"
    )
    written[1].write_text(
        json.dumps(schema, indent=0, separators=(",", ":"), ensure_ascii=False) + "\n"
    )

    by_event = {entry["name"]: entry["examples"] for entry in index}
    hooks = HERE / "webhooks"
    hooks.mkdir(exist_ok=True)
    for old in hooks.glob("*.json"):
        old.unlink()
    for event, actions in WEBHOOKS.items():
        for action in actions:
            name = definition_name(event, action)
            validator = jsonschema.Draft7Validator(
                {"definitions": schema["definitions"], "$ref": f"#/definitions/{name}"}
            )
            payload = pick_example(by_event[event], event, action, validator)
            path = hooks / (f"{event}.{action}.json" if action else f"{event}.json")
            path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
            written.append(path)
    for path in written:
        print(f"{path.relative_to(HERE)}: {path.stat().st_size / 1e6:.3f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
