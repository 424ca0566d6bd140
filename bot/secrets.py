"""The bot's secrets from Google Secret Manager, read once at start.

In production the private key and the webhook secret never appear in ``app.yaml``: it
names their Secret Manager versions instead, and :func:`load_secrets` fills them in::

    GITHUB_APP_PRIVATE_KEY_SECRET=projects/P/secrets/S/versions/latest  -> GITHUB_APP_PRIVATE_KEY
    GITHUB_WEBHOOK_SECRET_SECRET=projects/P/secrets/S/versions/latest   -> GITHUB_WEBHOOK_SECRET

The private key and the webhook secret are required: one that cannot be read fails the
start. The scheduler token is optional: unreadable, it only disables ``/schedule/drift``
(a warning names it). The Google client library is imported only when a secret is
actually referenced, so local runs and tests need neither it nor credentials; tests pass
a fake ``client``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

SECRET_VARIABLES: dict[str, str] = {
    "GITHUB_APP_PRIVATE_KEY_SECRET": "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_WEBHOOK_SECRET_SECRET": "GITHUB_WEBHOOK_SECRET",
    "SCARLET_BOT_SCHEDULER_SECRET_SECRET": "SCARLET_BOT_SCHEDULER_SECRET",
}
"""Variable naming a secret version -> the variable it fills."""

OPTIONAL = {"SCARLET_BOT_SCHEDULER_SECRET_SECRET": "drift scheduling (POST /schedule/drift)"}
"""References whose secret only enables a feature -> that feature."""

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"projects/[^/]+/secrets/[A-Za-z0-9_-]+/versions/[A-Za-z0-9_-]+")
SECRET_NAME = re.compile(r"projects/[^/]+/secrets/[A-Za-z0-9_-]+")


class SecretsError(ValueError):
    """A secret reference that is malformed, ambiguous or could not be read."""


def _client(client: Any, doing: str) -> Any:
    """``client``, or Secret Manager's; a failure to make one (no credentials) is a
    :class:`SecretsError` about ``doing``."""
    if client is not None:
        return client
    try:
        from google.cloud import secretmanager

        return secretmanager.SecretManagerServiceClient()
    except Exception as error:
        raise SecretsError(f"{doing}: {error}") from error


def access_secret(name: str, client: Any = None) -> str:
    """The UTF-8 payload of the secret version ``name``
    (``projects/P/secrets/S/versions/V``), its CRC32C checked when the service sent one."""
    if not VERSION_NAME.fullmatch(name):
        raise SecretsError(f"{name!r} is not projects/P/secrets/S/versions/V")
    client = _client(client, f"reading {name}")
    try:
        response = client.access_secret_version(request={"name": name})
    except Exception as error:
        raise SecretsError(f"reading {name}: {error}") from error
    data: bytes = response.payload.data
    expected = getattr(response.payload, "data_crc32c", None)
    if expected:
        import google_crc32c

        if google_crc32c.value(data) != int(expected):
            raise SecretsError(f"reading {name}: the payload's CRC32C does not match")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise SecretsError(f"{name} is not UTF-8 text") from None


def load_secrets(environ: Mapping[str, str], client: Any = None) -> dict[str, str]:
    """A copy of ``environ`` with every referenced secret read into its variable.

    A variable set both directly and through its ``*_SECRET`` reference is an error
    (one source of truth). Without references, nothing is imported and nothing read. An
    optional secret that cannot be read is left unset, with a warning.
    """
    env = dict(environ)
    for reference, target in SECRET_VARIABLES.items():
        name = env.get(reference)
        if not name:
            continue
        if env.get(target):
            raise SecretsError(f"set {target} or {reference}, not both")
        try:
            client = _client(client, f"reading {name}")
            env[target] = access_secret(name, client)
        except SecretsError as error:
            if reference not in OPTIONAL:
                raise
            log.warning("%s is disabled: %s", OPTIONAL[reference], error)
    return env


def add_secret_version(secret: str, data: bytes, client: Any = None) -> str:
    """Store ``data`` as a new version of ``secret`` (``projects/P/secrets/S``, which must
    exist); returns the new version's name."""
    if not SECRET_NAME.fullmatch(secret):
        raise SecretsError(f"{secret!r} is not projects/P/secrets/S")
    client = _client(client, f"adding a version to {secret}")
    try:
        version = client.add_secret_version(request={"parent": secret, "payload": {"data": data}})
    except Exception as error:
        raise SecretsError(f"adding a version to {secret}: {error}") from error
    return str(version.name)
