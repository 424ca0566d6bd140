""":class:`GCSStore`: the artifact store as a Google Cloud Storage bucket, through the
official ``google-cloud-storage`` client.

GCS calls are retried on transient failures with the client's ``DEFAULT_RETRY``
(create-only uploads through a ``ConditionalRetryPolicy``, so they are retried because
they carry a generation precondition).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from runner.store.layout import image_key
from runner.store.protocol import (
    APPEND_TYPE,
    IMMUTABLE,
    MUTABLE,
    KeyNotFound,
    ObjectInfo,
    StoreError,
    _base,
    _check_key,
    _check_prefix,
    _into,
    guess_content_type,
)

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.storage import Blob, Bucket, Client

APPEND_ATTEMPTS = 30
GCS_PUBLIC_URL = "https://storage.googleapis.com"


def _gcs_errors() -> tuple[type[BaseException], ...]:
    """What a GCS call raises when the service or the network fails (not our own bugs)."""
    import requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

    return (
        GoogleAPIError,
        GoogleAuthError,
        InvalidResponse,
        DataCorruption,
        requests.RequestException,
        OSError,
    )


@dataclass(frozen=True)
class GCSStore:
    """A bucket (and optional key prefix) on Google Cloud Storage.

    ``client`` defaults to ``google.cloud.storage.Client()`` (application default
    credentials; ``STORAGE_EMULATOR_HOST`` is honoured). ``retry``, a plain
    ``google.api_core.retry.Retry``, defaults to the client's ``DEFAULT_RETRY`` (120 s
    deadline); ``timeout`` is per HTTP request. ``url`` is
    ``https://storage.googleapis.com/<bucket>/<prefix><key>`` unless ``base_url`` (which
    stands for the store's root, prefix included) is given.
    """

    bucket_name: str
    prefix: str = ""
    client: Client | None = field(default=None, repr=False, compare=False)
    base_url: str | None = None
    retry: Retry | None = field(default=None, repr=False, compare=False)
    timeout: float = 60.0
    _bucket: Bucket = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        prefix = self.prefix.strip("/")
        object.__setattr__(self, "prefix", _check_prefix(prefix + "/") if prefix else "")
        object.__setattr__(self, "base_url", _base(self.base_url))
        if self.retry is None:
            object.__setattr__(self, "retry", DEFAULT_RETRY)
        if self.client is None:
            try:
                object.__setattr__(self, "client", storage.Client())
            except _gcs_errors() as exc:  # no credentials, no project, ...
                raise StoreError("connect to", self.prefix, self, exc) from exc
        object.__setattr__(self, "_bucket", self.client.bucket(self.bucket_name))

    def __str__(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}"

    def _blob(self, key: str) -> Blob:
        return self._bucket.blob(self.prefix + _check_key(key))

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        from google.api_core.exceptions import NotFound

        if isinstance(exc, NotFound) and op in ("get", "get_file", "stat"):
            return KeyNotFound(op, key, self)
        return StoreError(op, key, self, exc)

    def put_image(self, data: bytes, suffix: str = ".png") -> str:
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

        key = image_key(data, suffix)
        blob = self._blob(key)
        blob.cache_control = IMMUTABLE
        # Create-only: the generation precondition makes the upload safe to retry.
        retry = ConditionalRetryPolicy(self.retry, is_generation_specified, ["query_params"])
        try:
            blob.upload_from_string(
                data,
                content_type=guess_content_type(key),
                if_generation_match=0,
                retry=retry,
                timeout=self.timeout,
            )
        except PreconditionFailed:
            pass  # already stored (by us on an earlier try, or by anyone): same bytes
        except _gcs_errors() as exc:
            raise self._fail("put_image", key, exc) from exc
        return key

    def put(self, key: str, data: bytes, content_type: str, cache_control: str = MUTABLE) -> None:
        blob = self._blob(key)
        blob.cache_control = cache_control
        try:
            # Unconditional retry: a replayed write stores the same bytes again.
            blob.upload_from_string(
                data, content_type=content_type, retry=self.retry, timeout=self.timeout
            )
        except _gcs_errors() as exc:
            raise self._fail("put", key, exc) from exc

    def _create_retry(self) -> Retry:
        """Retries for a create-only write: safe, as it carries a generation precondition."""
        from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

        return ConditionalRetryPolicy(self.retry, is_generation_specified, ["query_params"])

    def _upload_if(
        self, op: str, key: str, data: bytes, content_type: str, cache_control: str, generation: int
    ) -> bool:
        """Upload only over the object's ``generation`` (0: none there); False otherwise."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._blob(key)
        blob.cache_control = cache_control
        try:
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=generation,
                retry=self._create_retry(),
                timeout=self.timeout,
            )
        except (NotFound, PreconditionFailed):
            return False
        except _gcs_errors() as exc:
            raise self._fail(op, key, exc) from exc
        return True

    def create(
        self, key: str, data: bytes, content_type: str, cache_control: str = MUTABLE
    ) -> bool:
        return self._upload_if("create", key, data, content_type, cache_control, 0)

    def put_file(
        self,
        key: str,
        path: Path,
        content_type: str,
        cache_control: str = MUTABLE,
        create_only: bool = False,
    ) -> bool:
        """A large file goes as a resumable upload in chunks; the object appears when the
        last one has landed."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob(key)
        blob.cache_control = cache_control
        try:
            blob.upload_from_filename(
                str(path),
                content_type=content_type,
                if_generation_match=0 if create_only else None,
                retry=self._create_retry() if create_only else self.retry,
                timeout=self.timeout,
            )
        except PreconditionFailed:
            return False
        except _gcs_errors() as exc:
            raise self._fail("put_file", key, exc) from exc
        return True

    def get(self, key: str) -> bytes:
        blob = self._blob(key)
        try:
            return blob.download_as_bytes(retry=self.retry, timeout=self.timeout)
        except _gcs_errors() as exc:
            raise self._fail("get", key, exc) from exc

    def get_file(self, key: str, path: Path) -> None:
        """Streamed and checksummed by the client."""
        blob = self._blob(key)

        def fill(tmp: Path) -> None:
            blob.download_to_filename(str(tmp), retry=self.retry, timeout=self.timeout)

        try:
            _into(Path(path), fill)
        except _gcs_errors() as exc:
            raise self._fail("get_file", key, exc) from exc

    def replace(
        self, key: str, data: bytes, content_type: str, version: str, cache_control: str = MUTABLE
    ) -> bool:
        return self._upload_if("replace", key, data, content_type, cache_control, int(version))

    def delete(self, key: str) -> bool:
        """Retried: a delete replayed after it landed finds nothing (and answers False)."""
        from google.api_core.exceptions import NotFound

        try:
            self._blob(key).delete(retry=self.retry, timeout=self.timeout)
        except NotFound:
            return False
        except _gcs_errors() as exc:
            raise self._fail("delete", key, exc) from exc
        return True

    def exists(self, key: str) -> bool:
        blob = self._blob(key)
        try:
            return blob.exists(retry=self.retry, timeout=self.timeout)
        except _gcs_errors() as exc:
            raise self._fail("exists", key, exc) from exc

    def stat(self, key: str) -> ObjectInfo:
        name = self.prefix + _check_key(key)
        try:
            blob = self._bucket.get_blob(name, retry=self.retry, timeout=self.timeout)
        except _gcs_errors() as exc:
            raise self._fail("stat", key, exc) from exc
        if blob is None:
            raise KeyNotFound("stat", key, self)
        return ObjectInfo(
            key=key,
            size=blob.size or 0,
            content_type=blob.content_type or "",
            cache_control=blob.cache_control or "",
            version=str(blob.generation),
        )

    def list(self, prefix: str = "") -> list[str]:
        full = self.prefix + _check_prefix(prefix)
        try:
            blobs = self.client.list_blobs(
                self._bucket,
                prefix=full,
                retry=self.retry,
                timeout=self.timeout,
            )
            return sorted(b.name.removeprefix(self.prefix) for b in blobs)
        except _gcs_errors() as exc:
            raise self._fail("list", prefix, exc) from exc

    def append(self, key: str, line: bytes) -> None:
        """Read, extend and write back under a generation precondition (0: the object
        must not exist yet); when another writer got in between (412), start again."""
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

        retry = ConditionalRetryPolicy(self.retry, is_generation_specified, ["query_params"])
        name = self.prefix + _check_key(key)
        for attempt in range(APPEND_ATTEMPTS):
            try:
                current = self._bucket.get_blob(name, retry=self.retry, timeout=self.timeout)
                generation = current.generation if current is not None else 0
                data = b""
                if current is not None:
                    data = current.download_as_bytes(
                        if_generation_match=generation, retry=retry, timeout=self.timeout
                    )
                if data and not data.endswith(b"\n"):
                    data += b"\n"
                blob = self._bucket.blob(name)
                blob.cache_control = MUTABLE
                blob.upload_from_string(
                    data + line,
                    content_type=APPEND_TYPE,
                    if_generation_match=generation,
                    retry=retry,
                    timeout=self.timeout,
                )
                return
            except PreconditionFailed:
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
            except _gcs_errors() as exc:
                raise self._fail("append", key, exc) from exc
        raise StoreError("append", key, self, f"still contended after {APPEND_ATTEMPTS} tries")

    def url(self, key: str) -> str:
        if self.base_url is not None:
            return self.base_url + quote(_check_key(key))
        return f"{GCS_PUBLIC_URL}/{self.bucket_name}/{quote(self.prefix + _check_key(key))}"
