"""The artifact store: the same behaviour from the local directory and from GCS (emulated)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runner.store import (
    IMMUTABLE,
    MUTABLE,
    ArtifactStore,
    GCSStore,
    KeyNotFound,
    LocalStore,
    StoreError,
    open_store,
    run_prefix,
    store_run,
)
from support import fast_retry

SHA = "0123456789abcdef0123456789abcdef01234567"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def stored_bytes(store: ArtifactStore, prefix: str = "") -> int:
    return sum(store.stat(key).size for key in store.list(prefix))


def test_both_backends_are_artifact_stores(store):
    assert isinstance(store, ArtifactStore)


def test_image_keys_are_content_addressed(store):
    key = store.put_image(PNG)
    assert key == f"images/{hashlib.sha256(PNG).hexdigest()}.png"
    assert store.get(key) == PNG
    assert store.exists(key)
    assert store.stat(key).content_type == "image/png"
    svg = store.put_image(b"<svg/>", suffix=".svg")
    assert svg.endswith(".svg")
    assert store.stat(svg).content_type == "image/svg+xml"
    with pytest.raises(ValueError):
        store.put_image(PNG, suffix="png")


def test_identical_images_are_stored_once(store):
    first = store.put_image(PNG)
    version = store.stat(first).version
    assert store.put_image(PNG) == first
    other = store.put_image(PNG + b"!")
    assert store.list("images/") == sorted([first, other])
    assert stored_bytes(store) == 2 * len(PNG) + 1
    assert store.stat(first).version == version  # not rewritten


def test_cache_control(store):
    image = store.put_image(PNG)
    info = store.stat(image)
    assert info.cache_control == IMMUTABLE == "public, max-age=31536000, immutable"
    store.put("runs/a/b/commit/x/result.json", b"{}", "application/json")
    info = store.stat("runs/a/b/commit/x/result.json")
    assert (info.cache_control, info.content_type) == (MUTABLE, "application/json")
    store.put("doc.txt", b"hi", "text/plain", cache_control="public, max-age=60")
    assert store.stat("doc.txt").cache_control == "public, max-age=60"


def test_get_exists_list_by_prefix(store):
    keys = ["runs/o/r/pr/1/a/result.json", "runs/o/r/pr/12/b/result.json", "runs/o/s/x.txt"]
    for key in keys:
        store.put(key, key.encode(), "text/plain")
    assert store.list() == sorted(keys)
    assert store.list("runs/o/r/") == keys[:2]
    assert store.list("runs/o/r/pr/1") == keys[:2]  # a plain string prefix, as on GCS
    assert store.list("runs/o/r/pr/1/") == keys[:1]
    assert store.list("nothing/") == []
    assert store.get(keys[2]) == keys[2].encode()
    assert store.exists(keys[0])
    assert not store.exists("runs/o/r/pr/1")  # a "directory" is no key
    assert not store.exists("missing.txt")
    with pytest.raises(KeyNotFound, match=r"get 'missing\.txt'"):
        store.get("missing.txt")
    with pytest.raises(KeyNotFound):
        store.stat("missing.txt")


def test_put_is_idempotent_and_replaces(store):
    store.put("a/doc.json", b"1", "application/json")
    store.put("a/doc.json", b"1", "application/json")
    assert store.list("a/") == ["a/doc.json"]
    assert store.get("a/doc.json") == b"1"
    store.put("a/doc.json", b"22", "application/json")
    assert store.get("a/doc.json") == b"22"
    assert stored_bytes(store) == 2


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "../a", "a/./b", ".store/x", "a\\b"])
def test_invalid_keys_are_rejected(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x", "text/plain")
    with pytest.raises(ValueError):
        store.get(key)


def test_concurrent_identical_images_make_one_object(store):
    with ThreadPoolExecutor(20) as pool:
        keys = set(pool.map(lambda _: store.put_image(PNG), range(20)))
    assert len(keys) == 1
    assert store.list() == list(keys)
    assert store.get(keys.pop()) == PNG


def test_concurrent_puts_leave_one_whole_document(store):
    payloads = [bytes([i]) * 10_000 for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda data: store.put("doc.bin", data, "text/plain"), payloads))
    assert store.list() == ["doc.bin"]
    assert store.get("doc.bin") in payloads


def test_create_writes_only_what_is_absent(store):
    assert store.create("leases/a.json", b"first", "application/json")
    assert not store.create("leases/a.json", b"second", "application/json")
    assert store.get("leases/a.json") == b"first"
    assert store.stat("leases/a.json").content_type == "application/json"


def test_concurrent_creates_have_one_winner(store):
    with ThreadPoolExecutor(10) as pool:
        won = list(pool.map(lambda i: store.create("lease", b"%d" % i, "text/plain"), range(10)))
    assert won.count(True) == 1
    assert store.get("lease") == b"%d" % won.index(True)


def test_replace_rewrites_only_the_version_read(store):
    store.put("doc", b"1", "text/plain")
    old = store.stat("doc").version
    store.put("doc", b"2", "text/plain")
    assert not store.replace("doc", b"3", "text/plain", old), "rewritten since that version"
    assert store.get("doc") == b"2"
    assert store.replace("doc", b"3", "text/plain", store.stat("doc").version)
    assert store.get("doc") == b"3"
    assert not store.replace("absent", b"3", "text/plain", old)
    assert not store.exists("absent")


def test_concurrent_replaces_of_one_version_have_one_winner(store):
    store.put("lease", b"stale", "text/plain")
    version = store.stat("lease").version
    with ThreadPoolExecutor(10) as pool:
        won = list(
            pool.map(lambda i: store.replace("lease", b"%d" % i, "text/plain", version), range(10))
        )
    assert won.count(True) == 1
    assert store.get("lease") == b"%d" % won.index(True)


def test_delete(store):
    assert not store.delete("absent")
    store.put("doc", b"1", "text/plain")
    assert store.delete("doc")
    assert not store.exists("doc") and store.list() == []
    assert not store.delete("doc")
    assert store.create("doc", b"2", "text/plain"), "a deleted key can be created again"


def test_files_are_streamed_both_ways(store, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 2**20))  # beyond GCS's one-shot upload: resumable
    assert store.put_file("env/big.tar", big, "application/octet-stream", create_only=True)
    assert store.stat("env/big.tar").size == big.stat().st_size
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    assert not store.put_file("env/big.tar", other, "application/octet-stream", create_only=True)
    back = tmp_path / "back" / "big.bin"
    back.parent.mkdir()
    store.get_file("env/big.tar", back)
    assert back.read_bytes() == big.read_bytes()
    assert store.put_file("env/big.tar", other, "application/octet-stream")
    store.get_file("env/big.tar", back)
    assert back.read_bytes() == b"other"
    with pytest.raises(KeyNotFound):
        store.get_file("env/missing.tar", tmp_path / "missing.bin")
    assert sorted(p.name for p in back.parent.iterdir()) == ["big.bin"], "no partial file"
    assert not (tmp_path / "missing.bin").exists()


def test_store_run(store, tmp_path):
    run = tmp_path / "run"
    (run / "report" / "img").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"ok": True}))
    (run / "report" / "index.html").write_text("<html></html>")
    (run / "report" / "img" / "a.png").write_bytes(PNG)
    (run / "blends").mkdir()
    (run / "blends" / "x.npz").write_bytes(b"not uploaded")

    stored = store_run(store, run, "pmelchior/scarlet", 42, SHA)
    prefix = f"runs/pr/pmelchior/scarlet/42/{SHA}/"
    assert stored["prefix"] == prefix
    assert stored["keys"] == {
        "report/img/a.png": prefix + "report/img/a.png",
        "report/index.html": prefix + "report/index.html",
        "result.json": prefix + "result.json",
    }
    assert store.list(prefix) == sorted(stored["keys"].values())
    assert json.loads(store.get(prefix + "result.json")) == {"ok": True}
    assert store.stat(prefix + "report/index.html").content_type == "text/html"
    assert store.stat(prefix + "result.json").cache_control == MUTABLE
    assert stored["urls"]["result.json"] == store.url(prefix + "result.json")

    baseline = store_run(store, run, "pmelchior/scarlet", None, SHA)
    assert baseline["prefix"] == f"runs/commit/pmelchior/scarlet/{SHA}/"
    with pytest.raises(FileNotFoundError):
        store_run(store, tmp_path / "empty", "pmelchior/scarlet", None, SHA)


def test_run_prefix():
    assert run_prefix("o/r", 7, SHA) == f"runs/pr/o/r/7/{SHA}/"
    assert run_prefix("org/.github", None, SHA) == f"runs/commit/org/.github/{SHA}/"
    assert run_prefix("o/r", None, "a" * 64) == f"runs/commit/o/r/{'a' * 64}/"
    for repository in ["o", "o/r/x", "/r", "o/", "../r", "o/r r"]:
        with pytest.raises(ValueError, match="owner/name"):
            run_prefix(repository, 1, SHA)
    for sha in ["abc1234", SHA.upper(), SHA + "0", "../" + SHA]:
        with pytest.raises(ValueError, match="sha"):
            run_prefix("o/r", 1, sha)
    for pr in [0, -1, True, "1"]:
        with pytest.raises(ValueError, match="pr"):
            run_prefix("o/r", pr, SHA)


def test_local_urls_and_layout(tmp_path):
    store = LocalStore(tmp_path)
    key = store.put_image(PNG)
    assert store.url(key) == (tmp_path / key).as_uri()
    assert (tmp_path / key).read_bytes() == PNG
    assert LocalStore(tmp_path, base_url="https://x.org/a").url(key) == "https://x.org/a/" + key
    store.put("d/doc.json", b"{}", "application/json")
    assert store.list() == sorted([key, "d/doc.json"])  # bookkeeping stays out of sight
    assert list((tmp_path / ".store" / "tmp").iterdir()) == []  # no temporary files left


def test_local_files_put_by_hand_are_served(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(PNG)
    info = LocalStore(tmp_path).stat("images/x.png")
    assert (info.size, info.content_type, info.cache_control) == (len(PNG), "image/png", IMMUTABLE)


def test_gcs_urls(gcs_client):
    store = GCSStore("bkt", "/pre/fix/", client=gcs_client)
    assert store.prefix == "pre/fix/"
    assert store.url("images/a b.png") == (
        "https://storage.googleapis.com/bkt/pre/fix/images/a%20b.png"
    )
    store = GCSStore("bkt", client=gcs_client, base_url="https://cdn.example.org")
    assert store.url("images/a.png") == "https://cdn.example.org/images/a.png"


def test_open_store(tmp_path, gcs_emulator, gcs_bucket, monkeypatch):
    local = open_store(str(tmp_path / "s"))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "s"
    assert open_store((tmp_path / "a b").as_uri()).root == tmp_path / "a b"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    gcs = open_store(f"gs://{gcs_bucket.name}/some/prefix")
    assert isinstance(gcs, GCSStore)
    assert (gcs.bucket_name, gcs.prefix) == (gcs_bucket.name, "some/prefix/")
    key = gcs.put_image(PNG)
    assert gcs_bucket.get_blob("some/prefix/" + key).size == len(PNG)
    with pytest.raises(ValueError):
        open_store("gs://")


def unreachable_store(endpoint: str) -> GCSStore:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )
    return GCSStore("bkt", client=client, retry=fast_retry(0.4), timeout=1)


@pytest.fixture
def refusing_endpoint():
    """An address where nothing listens: a bound socket that never accepts."""
    pytest.importorskip("google.cloud.storage")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def expect_store_errors(store: GCSStore, requests: list | None = None) -> None:
    """Every operation fails with a StoreError naming it, within the retry deadline (and,
    when the server counts ``requests``, after more than one try)."""
    calls = {
        "put_image": lambda: store.put_image(PNG),
        "put": lambda: store.put("runs/x.json", b"{}", "application/json"),
        "get": lambda: store.get("runs/x.json"),
        "exists": lambda: store.exists("runs/x.json"),
        "stat": lambda: store.stat("runs/x.json"),
        "list": lambda: store.list("runs/"),
    }
    for op, call in calls.items():
        start, tries = time.monotonic(), len(requests or [])
        with pytest.raises(StoreError) as caught:
            call()
        assert time.monotonic() - start < 3, op
        if requests is not None:
            assert len(requests) - tries >= 2, op
        assert not isinstance(caught.value, KeyNotFound)
        assert caught.value.op == op
        assert str(caught.value).startswith(f"{op} '")
        assert "gs://bkt/" in str(caught.value)


def test_gcs_unreachable_raises_store_error(refusing_endpoint):
    expect_store_errors(unreachable_store(refusing_endpoint))


class _Unavailable(http.server.BaseHTTPRequestHandler):
    requests: list[str]

    def _fail(self) -> None:
        self.requests.append(self.command)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = b'{"error": {"code": 503, "message": "try later"}}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _fail

    def log_message(self, *args) -> None:
        pass


def test_gcs_5xx_is_retried_then_store_error():
    pytest.importorskip("google.cloud.storage")
    handler = type("Handler", (_Unavailable,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = unreachable_store(f"http://127.0.0.1:{server.server_address[1]}")
        expect_store_errors(store, handler.requests)
    finally:
        server.shutdown()
        server.server_close()


def test_gcs_missing_bucket_is_a_store_error(gcs_client):
    store = GCSStore("no-such-bucket-here", client=gcs_client, retry=fast_retry())
    with pytest.raises(StoreError) as caught:
        store.put("a.json", b"{}", "application/json")
    assert not isinstance(caught.value, KeyNotFound)
    assert "no-such-bucket-here" in str(caught.value)


def test_gcs_store_writes_under_its_prefix(gcs_client, gcs_bucket):
    store = GCSStore(gcs_bucket.name, "a/b", client=gcs_client)
    key = store.put_image(PNG)
    blob = gcs_bucket.get_blob(f"a/b/{key}")
    assert (blob.cache_control, blob.content_type, blob.size) == (IMMUTABLE, "image/png", len(PNG))
    assert [b.name for b in gcs_client.list_blobs(gcs_bucket)] == [f"a/b/{key}"]


def test_local_store_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert LocalStore(Path("rel")).root == tmp_path / "rel"
