""":class:`LocalStore`: the artifact store as a directory (the embedded default).

Local writes are atomic (temporary file, then ``os.replace`` or ``os.link``). A
:class:`LocalStore` keeps its bookkeeping under ``<root>/.store/`` (temporary files and
each object's content type and cache control), so ``.store`` is not a valid first key
segment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from runner.store.layout import image_key
from runner.store.protocol import (
    _RESERVED,
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


def _ends_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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
