"""The artifact store: where runs put their results and images for the world to fetch.

One small interface, :class:`ArtifactStore` (:mod:`runner.store.protocol`), with two
backends: :class:`LocalStore` (:mod:`runner.store.local`), a directory (the embedded
default), and :class:`GCSStore` (:mod:`runner.store.gcs`), a Google Cloud Storage bucket.
:func:`open_store` picks one from ``gs://bucket/prefix`` or a local path. The key layout
is :mod:`runner.store.layout`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from runner.store.gcs import APPEND_ATTEMPTS, GCS_PUBLIC_URL, GCSStore
from runner.store.layout import image_key, run_prefix, store_run
from runner.store.local import LocalStore
from runner.store.protocol import (
    APPEND_TYPE,
    IMMUTABLE,
    MUTABLE,
    ArtifactStore,
    KeyNotFound,
    ObjectInfo,
    StoreError,
    guess_content_type,
)

__all__ = [
    "APPEND_ATTEMPTS",
    "APPEND_TYPE",
    "GCS_PUBLIC_URL",
    "IMMUTABLE",
    "MUTABLE",
    "ArtifactStore",
    "GCSStore",
    "KeyNotFound",
    "LocalStore",
    "ObjectInfo",
    "StoreError",
    "guess_content_type",
    "image_key",
    "open_store",
    "run_prefix",
    "store_run",
]


def open_store(
    spec: str, *, base_url: str | None = None, deadline: float | None = None
) -> ArtifactStore:
    """A store from ``gs://bucket[/prefix]``, ``file:///path`` or a local directory path;
    ``deadline`` bounds the seconds a GCS call keeps retrying (default: the client's)."""
    if spec.startswith("gs://"):
        bucket, _, prefix = spec.removeprefix("gs://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {spec!r}")
        retry = None
        if deadline is not None:
            from google.cloud.storage.retry import DEFAULT_RETRY

            retry = DEFAULT_RETRY.with_timeout(deadline)
        return GCSStore(bucket, prefix, base_url=base_url, retry=retry)
    if spec.startswith("file://"):
        spec = unquote(urlparse(spec).path)
    return LocalStore(Path(spec), base_url=base_url)
