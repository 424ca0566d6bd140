"""What every artifact store is and does: :class:`ArtifactStore`, its errors, its cache
headers and the rules for keys.

Beyond plain writes: :meth:`ArtifactStore.create` writes only what is not there yet and
says whether it did and :meth:`ArtifactStore.replace` rewrites only the version read
(atomic test-and-set, for leases), and files too large to hold in memory are
streamed to and from disk (:meth:`ArtifactStore.put_file`, :meth:`ArtifactStore.get_file`).

Every write is idempotent. Any failure raises :class:`StoreError` naming the operation and
key; a missing key raises its subclass :class:`KeyNotFound`.
"""

from __future__ import annotations

import mimetypes
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

IMMUTABLE = "public, max-age=31536000, immutable"
"""Cache-Control of content-addressed images."""
MUTABLE = "no-cache"
"""Cache-Control of mutable documents (caches must revalidate)."""
APPEND_TYPE = "application/x-ndjson"
"""Content type of the JSON-lines documents that :meth:`ArtifactStore.append` extends."""
_RESERVED = ".store"
_MAX_KEY_BYTES = 1024


class StoreError(Exception):
    """An operation on the artifact store failed."""

    def __init__(self, op: str, key: str, store: object, cause: object = None) -> None:
        self.op = op
        self.key = key
        reason = f": {cause}" if cause is not None else ""
        super().__init__(f"{op} {key!r} in {store} failed{reason}")


class KeyNotFound(StoreError):
    """The key does not exist in the store."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows of one object. ``version`` changes whenever it is rewritten."""

    key: str
    size: int
    content_type: str
    cache_control: str
    version: str


@runtime_checkable
class ArtifactStore(Protocol):
    """A flat key → bytes store with public URLs."""

    def put_image(self, data: bytes, suffix: str = ".png") -> str:
        """Store an image under ``images/<sha256><suffix>`` (once) and return its key."""
        ...

    def put(self, key: str, data: bytes, content_type: str, cache_control: str = MUTABLE) -> None:
        """Write (or overwrite) a document."""
        ...

    def create(
        self, key: str, data: bytes, content_type: str, cache_control: str = MUTABLE
    ) -> bool:
        """Write a document only if the key is absent; whether this call wrote it (a
        create retried after it had landed may answer False)."""
        ...

    def put_file(
        self,
        key: str,
        path: Path,
        content_type: str,
        cache_control: str = MUTABLE,
        create_only: bool = False,
    ) -> bool:
        """Upload a file, streamed from disk, as :meth:`put` (or as :meth:`create` with
        ``create_only``); the object appears only complete. Whether it was written."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`KeyNotFound` if absent."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Download an object to ``path``, streamed to disk (``path`` appears only
        complete); :class:`KeyNotFound` if absent."""
        ...

    def replace(
        self, key: str, data: bytes, content_type: str, version: str, cache_control: str = MUTABLE
    ) -> bool:
        """Rewrite a document only while it is still at ``version`` (as :meth:`stat` gave
        it); whether this call rewrote it (False: absent, or rewritten since)."""
        ...

    def delete(self, key: str) -> bool:
        """Remove an object; whether it was there."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the key exists."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and headers of an object; :class:`KeyNotFound` if absent."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix``, sorted."""
        ...

    def append(self, key: str, line: bytes) -> None:
        """Append a newline-terminated ``line`` to a JSON-lines document, creating it;
        writers appending at the same moment all land, in some order."""
        ...

    def url(self, key: str) -> str:
        """The public URL of a key."""
        ...


def guess_content_type(name: str) -> str:
    """A content type from a file name, ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _check_key(key: str) -> str:
    parts = key.split("/") if isinstance(key, str) else [""]
    if (
        any(p in ("", ".", "..") for p in parts)
        or parts[0] == _RESERVED
        or any(c in key for c in "\\\0\r\n")
        or len(key.encode()) > _MAX_KEY_BYTES
    ):
        raise ValueError(f"invalid store key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix:
        _check_key(prefix.removesuffix("/"))
    return prefix


def _base(base_url: str | None) -> str | None:
    return base_url if base_url is None or base_url.endswith("/") else base_url + "/"


def _into(path: Path, fill: Callable[[Path], object]) -> None:
    """Let ``fill`` write a temporary sibling of ``path``, then move it into place, so that
    ``path`` appears only complete."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        fill(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
