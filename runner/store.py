"""The artifact store: where runs put their results and images for the world to fetch.

One small interface, :class:`ArtifactStore`, with two backends: :class:`LocalStore`, a
directory (the embedded default), and :class:`GCSStore`, a Google Cloud Storage bucket
through the official ``google-cloud-storage`` client. :func:`open_store` picks one from
``gs://bucket/prefix`` or a local path.

Layout (keys are ``/``-separated, relative to the store's root or bucket prefix)::

    images/<sha256>.<ext>                      content-addressed, immutable
    runs/pr/<owner>/<name>/<number>/<sha>/...  a run of a pull request at head <sha>
    runs/commit/<owner>/<name>/<sha>/...       a run without a PR (e.g. a branch baseline)
    history/<owner>/<name>.jsonl               one summary record a run, appended (trends)
    environments/<key>/...                     built environments shared by a run's tasks
                                               (runner.deblend.shared)

(the kind of run comes first so that one literal lifecycle prefix, ``runs/pr/``, lets
pull requests' runs expire while the default branch's history stays)

    .../result.json                            the run result (written last by store_run)
    .../report/...                             the run's rendered report files, if any

``<owner>/<name>`` is any repository name of that shape and ``<sha>`` a full 40- or
64-digit lowercase hex commit id; the store knows nothing of GitHub.

Images are named by the SHA-256 of their bytes and served with
``Cache-Control: public, max-age=31536000, immutable``: the bytes behind an address never
change, so identical images are stored once and no cache (GitHub's image proxy included)
can show a stale one. Storing existing bytes again writes nothing: GCS uploads are
create-only (``if_generation_match=0``; a 412 means the object is already there, which is
success), local writes hard-link a finished temporary file into place, which also fails
when the name exists. Other documents are mutable and get ``Cache-Control: no-cache``.

Beyond plain writes: :meth:`ArtifactStore.create` writes only what is not there yet and
says whether it did and :meth:`ArtifactStore.replace` rewrites only the version read
(atomic test-and-set, for leases), and files too large to hold in memory are
streamed to and from disk (:meth:`ArtifactStore.put_file`, :meth:`ArtifactStore.get_file`).

Every write is idempotent. Local writes are atomic (temporary file, then ``os.replace``
or ``os.link``); GCS calls are retried on transient failures with the client's
``DEFAULT_RETRY`` (create-only uploads through a ``ConditionalRetryPolicy``, so they are
retried because they carry a generation precondition). Any failure raises
:class:`StoreError` naming the operation and key; a missing key raises its subclass
:class:`KeyNotFound`.

A :class:`LocalStore` keeps its bookkeeping under ``<root>/.store/`` (temporary files and
each object's content type and cache control), so ``.store`` is not a valid first key
segment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mimetypes
import os
import random
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlparse

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.storage import Blob, Bucket, Client

IMMUTABLE = "public, max-age=31536000, immutable"
"""Cache-Control of content-addressed images."""
MUTABLE = "no-cache"
"""Cache-Control of mutable documents (caches must revalidate)."""
APPEND_TYPE = "application/x-ndjson"
"""Content type of the JSON-lines documents that :meth:`ArtifactStore.append` extends."""
APPEND_ATTEMPTS = 30
GCS_PUBLIC_URL = "https://storage.googleapis.com"

_RESERVED = ".store"
_SUFFIX = re.compile(r"\.[a-z0-9]{1,16}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
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


def image_key(data: bytes, suffix: str = ".png") -> str:
    """The content-addressed key of image bytes: ``images/<sha256 hex><suffix>``."""
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"bad image suffix {suffix!r} (want e.g. '.png')")
    return f"images/{hashlib.sha256(data).hexdigest()}{suffix}"


def guess_content_type(name: str) -> str:
    """A content type from a file name, ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def run_prefix(repository: str, pr: int | None, sha: str, drift: bool = False) -> str:
    """The key prefix (ending in ``/``) of one run of ``repository`` at ``sha`` (of its
    latest drift run at ``sha`` with ``drift``)."""
    owner, slash, name = repository.partition("/")
    if not slash or not all(_NAME.fullmatch(p) and p not in (".", "..") for p in (owner, name)):
        raise ValueError(f"repository must be 'owner/name', got {repository!r}")
    if not _SHA.fullmatch(sha):
        raise ValueError(f"sha must be a full lowercase hex commit id, got {sha!r}")
    if drift:
        return f"runs/drift/{owner}/{name}/{sha}/"
    if pr is None:
        return f"runs/commit/{owner}/{name}/{sha}/"
    if isinstance(pr, bool) or not isinstance(pr, int) or pr < 1:
        raise ValueError(f"pr must be a positive int or None, got {pr!r}")
    return f"runs/pr/{owner}/{name}/{pr}/{sha}/"


def store_run(
    store: ArtifactStore,
    run_dir: Path,
    repository: str,
    pr: int | None,
    sha: str,
    drift: bool = False,
) -> dict[str, Any]:
    """Upload a run directory's ``result.json`` and ``report/`` files under its run prefix.

    Report files go first and ``result.json`` last, so a stored result means a complete
    upload. Returns ``{"prefix": ..., "keys": {relpath: key}, "urls": {relpath: url}}``.
    """
    prefix = run_prefix(repository, pr, sha, drift)
    run_dir = Path(run_dir)
    result = run_dir / "result.json"
    if not result.is_file():
        raise FileNotFoundError(f"no result.json in {run_dir}")
    report = run_dir / "report"
    files = (
        sorted(p for p in report.rglob("*") if p.is_file() and not p.is_symlink())
        if report.is_dir()
        else []
    )
    keys: dict[str, str] = {}
    for path in [*files, result]:
        rel = path.relative_to(run_dir).as_posix()
        key = prefix + rel
        store.put(key, path.read_bytes(), guess_content_type(path.name))
        keys[rel] = key
    return {"prefix": prefix, "keys": keys, "urls": {rel: store.url(k) for rel, k in keys.items()}}


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


def _ends_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}"


@dataclass(frozen=True)
class LocalStore:
    """A directory: key ``a/b`` is the file ``root/a/b``. ``url`` is ``file://`` unless a
    ``base_url`` (where the directory is served) is given."""

    root: Path
    base_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        object.__setattr__(self, "base_url", _base(self.base_url))

    def __str__(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _meta(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / _RESERVED / "meta" / digest[:2] / (digest + ".json")

    def _temp(self, data: bytes | Path) -> Path:
        """A finished, synced temporary file on the store's filesystem with ``data``, the
        bytes or a file's (copied in chunks)."""
        tmp_dir = self.root / _RESERVED / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / secrets.token_hex(12)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
                else:
                    with open(data, "rb") as source:
                        shutil.copyfileobj(source, f, 2**20)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _replace(self, path: Path, data: bytes | Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp(data)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_meta(self, key: str, content_type: str, cache_control: str) -> None:
        meta = {"content_type": content_type, "cache_control": cache_control}
        self._replace(self._meta(key), json.dumps(meta).encode())

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Hold the key's file lock (appends and conditional deletes take it)."""
        locks = self.root / _RESERVED / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / hashlib.sha256(key.encode()).hexdigest(), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _create(self, key: str, data: bytes | Path, content_type: str, cache_control: str) -> bool:
        """Hard-link a finished temporary file into place: fails if the name exists."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._write_meta(key, content_type, cache_control)
        return True

    def put_image(self, data: bytes, suffix: str = ".png") -> str:
        key = image_key(data, suffix)
        path = self._path(key)
        if path.is_file():
            return key
        try:
            self._write_meta(key, guess_content_type(key), IMMUTABLE)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._temp(data)
            try:
                os.link(tmp, path)  # create-only: fails if another writer got there first
            except FileExistsError:
                pass
            except OSError:  # no hard links here: same bytes, so replacing is harmless
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError("put_image", key, self, exc) from exc
        return key

    def put(self, key: str, data: bytes, content_type: str, cache_control: str = MUTABLE) -> None:
        path = self._path(key)
        try:
            self._write_meta(key, content_type, cache_control)
            self._replace(path, data)
        except OSError as exc:
            raise StoreError("put", key, self, exc) from exc

    def create(
        self, key: str, data: bytes, content_type: str, cache_control: str = MUTABLE
    ) -> bool:
        try:
            return self._create(key, data, content_type, cache_control)
        except OSError as exc:
            raise StoreError("create", key, self, exc) from exc

    def put_file(
        self,
        key: str,
        path: Path,
        content_type: str,
        cache_control: str = MUTABLE,
        create_only: bool = False,
    ) -> bool:
        try:
            if create_only:
                return self._create(key, Path(path), content_type, cache_control)
            self._write_meta(key, content_type, cache_control)
            self._replace(self._path(key), Path(path))
        except OSError as exc:
            raise StoreError("put_file", key, self, exc) from exc
        return True

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise KeyNotFound("get", key, self) from exc
        except OSError as exc:
            raise StoreError("get", key, self, exc) from exc

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise KeyNotFound("get_file", key, self)
        try:
            _into(Path(path), lambda tmp: shutil.copyfile(source, tmp))
        except OSError as exc:
            raise StoreError("get_file", key, self, exc) from exc

    def replace(
        self, key: str, data: bytes, content_type: str, version: str, cache_control: str = MUTABLE
    ) -> bool:
        """Under the key's lock (a plain :meth:`put` does not take it)."""
        path = self._path(key)
        try:
            with self._locked(key):
                if _version(path.stat()) != version:
                    return False
                self._write_meta(key, content_type, cache_control)
                self._replace(path, data)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StoreError("replace", key, self, exc) from exc
        return True

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            with self._locked(key):
                path.unlink()
                self._meta(key).unlink(missing_ok=True)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StoreError("delete", key, self, exc) from exc
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise KeyNotFound("stat", key, self) from exc
        except OSError as exc:
            raise StoreError("stat", key, self, exc) from exc
        if not path.is_file():
            raise KeyNotFound("stat", key, self)
        try:
            meta = json.loads(self._meta(key).read_text())
        except (OSError, ValueError):  # written by hand or interrupted: fall back to names
            meta = {}
        return ObjectInfo(
            key=key,
            size=st.st_size,
            content_type=meta.get("content_type", guess_content_type(key)),
            cache_control=meta.get(
                "cache_control", IMMUTABLE if key.startswith("images/") else MUTABLE
            ),
            version=_version(st),
        )

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        top = self.root / prefix.rpartition("/")[0]
        keys = []
        for dirpath, dirnames, filenames in os.walk(top):
            base = Path(dirpath).relative_to(self.root).as_posix()
            if base == ".":
                dirnames[:] = [d for d in dirnames if d != _RESERVED]
                base = ""
            else:
                base += "/"
            keys.extend(base + name for name in filenames if (base + name).startswith(prefix))
        return sorted(keys)

    def append(self, key: str, line: bytes) -> None:
        path = self._path(key)
        try:
            with self._locked(key):
                self._write_meta(key, APPEND_TYPE, MUTABLE)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab") as f:
                    if f.tell() and not _ends_line(path):
                        f.write(b"\n")  # a line cut short by a crash stays alone
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError("append", key, self, exc) from exc

    def url(self, key: str) -> str:
        if self.base_url is not None:
            return self.base_url + quote(_check_key(key))
        return self._path(key).as_uri()


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
