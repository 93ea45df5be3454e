"""Tests of components.storage against a real GCS emulator, real local files and loopback HTTP servers.

https:// is tested through plain http:// on 127.0.0.1, which the module accepts only for the
hosts in storage.PLAIN_HTTP_HOSTS; the tests add 127.0.0.1 there. The code path is the same
as for https:// apart from TLS.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import multiprocessing
import threading
import urllib.parse
from pathlib import Path

import pytest

from components import storage
from tests.conftest import DEFAULT_SOURCE_BUCKET, DEFAULT_SOURCE_OBJECT, MINI_ARCHIVE

FAST_RETRIES = storage.RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05, deadline_s=10.0)
PAYLOAD = bytes(range(256)) * 256  # 64 KiB, big enough to be cut off in the middle
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
HTTP_TIMEOUT_S = 10
DEFAULT_SOURCE_URI = f"gs://{DEFAULT_SOURCE_BUCKET}/{DEFAULT_SOURCE_OBJECT}"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_POLICY", FAST_RETRIES)
    monkeypatch.setattr(storage, "PLAIN_HTTP_HOSTS", frozenset({"127.0.0.1"}))


@pytest.fixture(params=["gs", "local", "file"])
def root(request, tmp_path) -> str:
    """A writable folder URI: in a fresh emulator bucket, as a plain path, or as a file:// URI."""
    if request.param == "gs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/data"
    if request.param == "local":
        return str(tmp_path / "data")
    return (tmp_path / "data").as_uri()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class names it so)
        pass


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server for a folder; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()

    def make_handler(*args, **kwargs):
        return _QuietHandler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=HTTP_TIMEOUT_S)


class FaultProxy(http.server.ThreadingHTTPServer):
    """An HTTP proxy in front of the emulator that injects faults and counts requests.

    statuses: HTTP status codes returned to the next requests, one each, instead of passing them through.
    truncate_media: cut every object download (alt=media) off after half of its body.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.statuses: list[int] = []
        self.truncate_media = False
        self.request_count = 0
        self.lock = threading.Lock()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format, *args):  # noqa: A002 (the base class names it so)
        pass

    def _handle(self) -> None:
        with self.server.lock:
            self.server.request_count += 1
            injected = self.server.statuses.pop(0) if self.server.statuses else None
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if injected is not None:
            self._reply(injected, [("Content-Type", "application/json")], b'{"error": {"code": %d}}' % injected)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=HTTP_TIMEOUT_S)
        try:
            headers = {key: value for key, value in self.headers.items() if key.lower() != "host"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            content = response.read()
            passed = [(k, v) for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")]
        finally:
            upstream.close()
        truncate = self.server.truncate_media and "alt=media" in self.path
        self._reply(response.status, passed, content, truncate=truncate)

    def _reply(self, status: int, headers, content: bytes, *, truncate: bool = False) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        if truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(content[: len(content) // 2] if truncate else content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture
def fault_proxy(gcs_server, monkeypatch):
    """A FaultProxy that STORAGE_EMULATOR_HOST points at for one test."""
    proxy = FaultProxy(gcs_server.port)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.server_port}")
    # google-cloud-storage 3.17 fetches bucket metadata for its tracing in a background thread on
    # a client's first call per bucket. That extra request would make the counts below vary.
    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=HTTP_TIMEOUT_S)


def _put_on_emulator(gcs_server, bucket: str, key: str, data: bytes) -> str:
    """Write an object straight to the emulator, around any proxy, and return its URI."""
    gcs_server.client().bucket(bucket).blob(key).upload_from_string(data)
    return f"gs://{bucket}/{key}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --- Read, write, list, stat, copy on every backend ---------------------------------------------


def test_write_bytes_then_read_round_trip(root):
    uri = storage.join(root, "nested", "hello.txt")
    storage.write_bytes(uri, "grüße\n".encode("utf-8"))

    assert storage.read_bytes(uri) == "grüße\n".encode("utf-8")
    assert storage.read_text(uri) == "grüße\n"


def test_write_bytes_returns_generation_that_stat_reports(root):
    uri = storage.join(root, "a.bin")
    generation = storage.write_bytes(uri, PAYLOAD)
    info = storage.stat(uri)

    assert info == storage.ObjectInfo(uri=uri, size=len(PAYLOAD), generation=generation)


def test_write_bytes_overwrite_increases_generation(root):
    uri = storage.join(root, "a.bin")
    first = storage.write_bytes(uri, b"one")
    second = storage.write_bytes(uri, b"two")

    assert second > first
    assert storage.read_with_generation(uri) == (b"two", second)


def test_exists_before_and_after_write(root):
    uri = storage.join(root, "maybe.txt")
    assert not storage.exists(uri)

    storage.write_bytes(uri, b"x")
    assert storage.exists(uri)


def test_stat_missing_raises_not_found(root):
    uri = storage.join(root, "missing.txt")
    with pytest.raises(storage.ObjectNotFoundError, match=f"{uri} not found"):
        storage.stat(uri)


def test_read_with_generation_missing_raises_not_found(root):
    uri = storage.join(root, "missing.txt")
    with pytest.raises(storage.ObjectNotFoundError, match=f"{uri} not found"):
        storage.read_with_generation(uri)


def test_list_uris_recursive_sorted_folder_only(root):
    for name in ("b.txt", "a/2.txt", "a/1.txt"):
        storage.write_bytes(storage.join(root, name), b"x")
    storage.write_bytes(root + "-old/outside.txt", b"x")
    expected = [storage.join(root, name) for name in ("a/1.txt", "a/2.txt", "b.txt")]

    assert storage.list_uris(root) == expected
    assert storage.list_uris(root + "/") == expected


def test_list_uris_missing_folder_empty(root):
    assert storage.list_uris(storage.join(root, "nothing-here")) == []


def test_open_read_streams_content(root):
    uri = storage.join(root, "stream.bin")
    storage.write_bytes(uri, PAYLOAD)
    with storage.open_read(uri) as stream:
        head = stream.read(10)
        rest = stream.read()

    assert head + rest == PAYLOAD


def test_copy_within_backend(root):
    source = storage.join(root, "source.bin")
    target = storage.join(root, "copies", "target.bin")
    storage.write_bytes(source, PAYLOAD)
    generation = storage.copy(source, target)

    assert storage.read_with_generation(target) == (PAYLOAD, generation)


@pytest.mark.parametrize("direction", ["local_to_gs", "gs_to_local"])
def test_copy_across_backends(direction, gcs_bucket, tmp_path):
    local_uri = str(tmp_path / "local.bin")
    gs_uri = f"gs://{gcs_bucket}/remote.bin"
    source, target = (local_uri, gs_uri) if direction == "local_to_gs" else (gs_uri, local_uri)
    storage.write_bytes(source, PAYLOAD)
    generation = storage.copy(source, target)

    assert storage.read_with_generation(target) == (PAYLOAD, generation)


def test_upload_file_to_gs(gcs_bucket, tmp_path):
    local = tmp_path / "up.bin"
    local.write_bytes(PAYLOAD)
    uri = f"gs://{gcs_bucket}/up.bin"
    generation = storage.upload_file(local, uri, if_generation_match=0)

    assert storage.stat(uri).generation == generation
    assert storage.read_bytes(uri) == PAYLOAD


def test_upload_file_missing_source_raises(gcs_bucket, tmp_path):
    with pytest.raises(storage.ObjectNotFoundError, match="nope.bin not found"):
        storage.upload_file(tmp_path / "nope.bin", f"gs://{gcs_bucket}/x")


def test_local_write_leaves_only_target_file(tmp_path):
    storage.write_bytes(str(tmp_path / "f.txt"), b"x")

    assert _leftovers(tmp_path) == ["f.txt"]
    assert storage.list_uris(str(tmp_path)) == [str(tmp_path / "f.txt")]


def test_default_source_uri_served_by_emulator(gcs_server, tmp_path):
    archive_sha256 = hashlib.sha256(MINI_ARCHIVE.read_bytes()).hexdigest()
    target = storage.download(DEFAULT_SOURCE_URI, tmp_path / "flowers.tgz", expected_sha256=archive_sha256)

    assert storage.stat(DEFAULT_SOURCE_URI).size == MINI_ARCHIVE.stat().st_size
    assert target.read_bytes() == MINI_ARCHIVE.read_bytes()


# --- Preconditions ---------------------------------------------------------------------------------


def test_create_only_write_twice_second_fails(root):
    uri = storage.join(root, "once.txt")
    first = storage.write_bytes(uri, b"first", if_generation_match=0)

    with pytest.raises(storage.PreconditionFailedError, match=f"{uri}.*exists with generation {first}"):
        storage.write_bytes(uri, b"second", if_generation_match=0)
    assert storage.read_bytes(uri) == b"first"


def test_stale_generation_write_fails(root):
    uri = storage.join(root, "pointer.txt")
    stale = storage.write_bytes(uri, b"v1")
    current = storage.write_bytes(uri, b"v2")

    with pytest.raises(
        storage.PreconditionFailedError,
        match=f"{uri}: if_generation_match={stale}, but its current generation is {current}",
    ):
        storage.write_bytes(uri, b"v3", if_generation_match=stale)
    assert storage.read_bytes(uri) == b"v2"


def test_current_generation_write_succeeds(root):
    uri = storage.join(root, "pointer.txt")
    current = storage.write_bytes(uri, b"v1")
    newer = storage.write_bytes(uri, b"v2", if_generation_match=current)

    assert storage.read_with_generation(uri) == (b"v2", newer)


def test_generation_match_on_missing_object_fails(root):
    uri = storage.join(root, "absent.txt")
    with pytest.raises(storage.PreconditionFailedError, match="but it does not exist"):
        storage.write_bytes(uri, b"x", if_generation_match=12345)


@pytest.mark.parametrize("kind", ["local", "gs"])
def test_copy_create_only_onto_existing_fails(kind, gcs_bucket, tmp_path):
    # NOTE: only a local-to-gs copy is checked on gs: fake-gcs-server ignores ifGenerationMatch on
    # server-side copies (rewriteTo, copyTo) and on resumable uploads, which real GCS enforces.
    source = tmp_path / "source.bin"
    source.write_bytes(b"new")
    target = str(tmp_path / "target.bin") if kind == "local" else f"gs://{gcs_bucket}/target.bin"
    storage.write_bytes(target, b"old")

    with pytest.raises(storage.PreconditionFailedError, match="if_generation_match=0 requires that it does not exist"):
        storage.copy(str(source), target, if_generation_match=0)
    assert storage.read_bytes(target) == b"old"


def test_negative_generation_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"invalid if_generation_match -1: use None"):
        storage.write_bytes(str(tmp_path / "x"), b"x", if_generation_match=-1)


def _race_writer(path: str, expected: int, start: multiprocessing.Event, results: multiprocessing.Queue) -> None:
    start.wait(timeout=HTTP_TIMEOUT_S)
    name = multiprocessing.current_process().name
    try:
        storage.write_bytes(path, name.encode(), if_generation_match=expected)
        results.put(("won", name))
    except storage.PreconditionFailedError:
        results.put(("lost", name))


@pytest.mark.parametrize("existing", [False, True])
def test_local_race_exactly_one_writer_wins(existing, tmp_path):
    path = str(tmp_path / "contested.txt")
    expected = storage.write_bytes(path, b"base") if existing else 0
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_race_writer, args=(path, expected, start, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=HTTP_TIMEOUT_S) for _ in workers]
    for worker in workers:
        worker.join(timeout=HTTP_TIMEOUT_S)

    winners = [name for outcome, name in outcomes if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert storage.read_bytes(path) == winners[0].encode()
    assert all(worker.exitcode == 0 for worker in workers)


# --- Downloads and checksums ---------------------------------------------------------------------


@pytest.fixture(params=["gs", "local", "http"])
def payload_uri(request, tmp_path) -> str:
    """A 64 KiB object on the emulator, in a local file, or on a loopback HTTP server."""
    if request.param == "gs":
        uri = f"gs://{request.getfixturevalue('gcs_bucket')}/payload.bin"
        storage.write_bytes(uri, PAYLOAD)
        return uri
    if request.param == "local":
        path = tmp_path / "source" / "payload.bin"
        path.parent.mkdir()
        path.write_bytes(PAYLOAD)
        return str(path)
    folder, base_url = request.getfixturevalue("http_root")
    (folder / "payload.bin").write_bytes(PAYLOAD)
    return f"{base_url}/payload.bin"


def test_download_right_sha256_succeeds(payload_uri, tmp_path):
    target = tmp_path / "out" / "payload.bin"
    result = storage.download(payload_uri, target, expected_sha256=PAYLOAD_SHA256, expected_size=len(PAYLOAD))

    assert result == target
    assert target.read_bytes() == PAYLOAD
    assert _leftovers(target.parent) == ["payload.bin"]


def test_download_wrong_sha256_leaves_nothing(payload_uri, tmp_path):
    target = tmp_path / "out" / "payload.bin"
    wrong = "0" * 64
    message = (
        f"sha256 mismatch for {payload_uri}: expected {wrong}, got {PAYLOAD_SHA256}; "
        "pass the right sha256, or leave it empty to skip the check"
    )
    with pytest.raises(storage.StorageError, match=f"^{message}$"):
        storage.download(payload_uri, target, expected_sha256=wrong)

    assert _leftovers(target.parent) == []


def test_download_wrong_size_leaves_nothing(payload_uri, tmp_path):
    target = tmp_path / "out" / "payload.bin"
    with pytest.raises(storage.StorageError, match=f"size mismatch for {payload_uri}: expected 10 bytes, got {len(PAYLOAD)}"):
        storage.download(payload_uri, target, expected_size=10)

    assert _leftovers(target.parent) == []


def test_download_invalid_sha256_rejected_before_work(tmp_path):
    with pytest.raises(ValueError, match="invalid expected_sha256 'abc' .* use 64 hex digits"):
        storage.download(str(tmp_path / "never-read"), tmp_path / "out", expected_sha256="abc")


def test_http_read_and_open_read(http_root):
    folder, base_url = http_root
    (folder / "page.txt").write_text("served over loopback", encoding="utf-8")
    uri = f"{base_url}/page.txt"

    assert storage.read_text(uri) == "served over loopback"
    assert storage.stat(uri).size == len("served over loopback")
    with storage.open_read(uri) as stream:
        assert stream.read() == b"served over loopback"


def test_http_missing_raises_not_found(http_root):
    uri = f"{http_root[1]}/missing.txt"
    with pytest.raises(storage.ObjectNotFoundError, match=f"{uri} not found"):
        storage.read_bytes(uri)


def test_http_write_rejected(http_root):
    uri = f"{http_root[1]}/upload.txt"
    with pytest.raises(ValueError, match=f"{uri} is read-only: write to a gs:// URI or a local path"):
        storage.write_bytes(uri, b"x")


# --- Transient and permanent faults through the proxy --------------------------------------------


def test_download_retries_two_503_then_succeeds(gcs_server, gcs_bucket, fault_proxy, tmp_path, caplog):
    uri = _put_on_emulator(gcs_server, gcs_bucket, "flaky.bin", PAYLOAD)
    fault_proxy.statuses = [503, 503]
    with caplog.at_level("WARNING", logger="components.storage"):
        target = storage.download(uri, tmp_path / "flaky.bin", expected_sha256=PAYLOAD_SHA256)

    assert target.read_bytes() == PAYLOAD
    assert fault_proxy.request_count == 4  # two 503s, then stat and media download
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2


def test_download_cut_off_every_time_fails_and_leaves_nothing(gcs_server, gcs_bucket, fault_proxy, tmp_path):
    uri = _put_on_emulator(gcs_server, gcs_bucket, "cut.bin", PAYLOAD)
    fault_proxy.truncate_media = True
    target = tmp_path / "out" / "cut.bin"

    with pytest.raises(storage.StorageError, match=f"downloading {uri} failed after 3 attempts"):
        storage.download(uri, target)
    assert _leftovers(target.parent) == []
    assert fault_proxy.request_count == 6  # stat and media download, three times


def test_missing_object_fails_at_once(gcs_bucket, fault_proxy, tmp_path):
    uri = f"gs://{gcs_bucket}/missing.bin"
    with pytest.raises(storage.ObjectNotFoundError, match=f"{uri} not found"):
        storage.download(uri, tmp_path / "missing.bin")

    assert fault_proxy.request_count == 1
    assert _leftovers(tmp_path) == []


def test_forbidden_fails_at_once_naming_credentials(gcs_bucket, fault_proxy):
    uri = f"gs://{gcs_bucket}/secret.bin"
    fault_proxy.statuses = [403]
    with pytest.raises(storage.StorageError, match=f"access denied to {uri} .*GOOGLE_APPLICATION_CREDENTIALS"):
        storage.read_bytes(uri)

    assert fault_proxy.request_count == 1


def test_unconditional_write_not_retried(gcs_bucket, fault_proxy):
    uri = f"gs://{gcs_bucket}/once.bin"
    fault_proxy.statuses = [503]
    with pytest.raises(storage.StorageError, match=f"writing {uri} failed: ServiceUnavailable"):
        storage.write_bytes(uri, b"x")

    assert fault_proxy.request_count == 1


def test_conditional_write_retried(gcs_bucket, fault_proxy):
    uri = f"gs://{gcs_bucket}/guarded.bin"
    fault_proxy.statuses = [503]
    generation = storage.write_bytes(uri, b"x", if_generation_match=0)

    assert storage.stat(uri).generation == generation
    assert fault_proxy.request_count == 3  # 503, the upload, the stat


# --- URIs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://", "it names no bucket"),
        ("gs:///key", "it names no bucket"),
        ("gs://Bad_Bucket/key", "invalid bucket name 'Bad_Bucket'"),
        ("gs://ab/key", "invalid bucket name 'ab'"),
        ("gs://bucket", "it names a bucket but no object"),
        ("gs://bucket/line\nbreak", "contain no control characters"),
        ("s3://bucket/key", "unsupported URI scheme 's3'"),
        ("http://127.0.0.2/x", r"plain http:// is not supported: http://127.0.0.2/x; use https://"),
        ("", "invalid URI ''"),
    ],
)
def test_invalid_uri_rejected(uri, message):
    with pytest.raises(ValueError, match=message):
        storage.stat(uri)


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("gs://b1b/a", ("x",), "gs://b1b/a/x"),
        ("gs://b1b", ("x", "y/z"), "gs://b1b/x/y/z"),
        ("gs://b1b/a/", ("/x/",), "gs://b1b/a/x"),
        ("/tmp/a", ("x", "y"), "/tmp/a/x/y"),
        ("file:///tmp/a", ("x",), "/tmp/a/x"),
        ("https://127.0.0.1:8443/a", ("x",), "https://127.0.0.1:8443/a/x"),
    ],
)
def test_join_cases(base, parts, expected):
    assert storage.join(base, *parts) == expected


def test_is_local_cases():
    assert storage.is_local("relative/path")
    assert storage.is_local("file:///tmp/x")
    assert not storage.is_local("gs://bucket/x")


def test_to_local_path_decodes_file_uri():
    assert storage.to_local_path("file:///tmp/a%20b") == Path("/tmp/a b")


def test_to_local_path_rejects_gs():
    with pytest.raises(ValueError, match="gs://bucket/x is not a local path or file:// URI"):
        storage.to_local_path("gs://bucket/x")
