"""Read and write objects by URI: gs://bucket/key, local paths and file:// URIs, and read-only https://.

gs:// goes through google-cloud-storage, which reads STORAGE_EMULATOR_HOST itself. Without
credentials the client is anonymous, so public buckets still work.

Writes return the object's new generation and take an optional if_generation_match precondition:
0 means "only if the object does not exist", any other number means "only if the current
generation is this one". gs:// enforces it on the server. For a local file the same guarantee
comes from an exclusive flock(2) on the file's folder, held while the precondition is checked
and the new content is renamed into place, so no lock file is left beside the data. That lock works between processes on one machine,
but not on NFS or other network filesystems. A local file's generation is its st_mtime_ns,
moved forward on every write so that it is strictly greater than the one before.

Transient errors (429, 408, 5xx, dropped or refused connections, timeouts) are retried with
exponential backoff under RETRY_POLICY, but only for operations that are safe to repeat: reads,
stat, list, downloads, and writes that carry a generation precondition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, TypeVar

import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Local writes leave these files beside the target; list_uris skips them.
TEMP_SUFFIX = ".storage-tmp"

CHUNK_SIZE = 1024 * 1024
REQUEST_TIMEOUT_S = 60.0
PROGRESS_INTERVAL_S = 5.0
LOCAL_LOCK_TIMEOUT_S = 60.0
MAX_REWRITE_CALLS = 100
# tempfile.mkstemp creates files with mode 0600 and os.replace keeps it, so new files get this mode.
LOCAL_FILE_MODE = 0o644

# Hosts that may be read over plain http:// instead of https://. Empty in production; tests
# add 127.0.0.1 to read from a loopback server without a TLS certificate.
PLAIN_HTTP_HOSTS: frozenset[str] = frozenset()

_TRANSIENT_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
_SCHEME_PATTERN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class StorageError(Exception):
    """A storage operation failed; the message names the URI."""


class ObjectNotFoundError(StorageError):
    """The object or file does not exist."""


class PreconditionFailedError(StorageError):
    """if_generation_match did not match the object's current generation."""


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int  # bytes
    # GCS object generation, or a local file's st_mtime_ns; 0 for https://, which has none.
    generation: int


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient errors; a retry stops at whichever bound comes first."""

    max_attempts: int = 5
    initial_delay_s: float = 1.0
    max_delay_s: float = 16.0
    multiplier: float = 2.0
    deadline_s: float = 120.0  # from the first attempt to the start of the last one


RETRY_POLICY = RetryPolicy()


# --- URIs -------------------------------------------------------------------------------------


def _scheme(uri: str) -> str:
    """Return "local", "gs" or "http" (for https:// and allowed http://), or raise ValueError."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"invalid URI {uri!r}: expected gs://bucket/key, https://..., file://... or a path")
    match = _SCHEME_PATTERN.match(uri)
    if match is None or match.group(1).lower() == "file":
        return "local"
    scheme = match.group(1).lower()
    if scheme == "gs":
        return "gs"
    if scheme == "https":
        return "http"
    if scheme == "http":
        host = urllib.parse.urlsplit(uri).hostname or ""
        if host in PLAIN_HTTP_HOSTS:
            return "http"
        raise ValueError(f"plain http:// is not supported: {uri}; use https:// instead")
    raise ValueError(
        f"unsupported URI scheme {scheme!r} in {uri}: use gs://, https://, file:// or a local path"
    )


def is_local(uri: str) -> bool:
    """Return True for a plain path or a file:// URI."""
    return _scheme(uri) == "local"


def to_local_path(uri: str) -> Path:
    """Convert a plain path or a file:// URI to a Path; raise ValueError for any other URI."""
    if _scheme(uri) != "local":
        raise ValueError(f"{uri} is not a local path or file:// URI, so it has no local path")
    if not uri.lower().startswith("file://"):
        return Path(uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"file URI {uri} names host {parts.netloc!r}: use file:///absolute/path for a local file"
        )
    return Path(urllib.request.url2pathname(parts.path))


def _split_gs(uri: str, *, object_required: bool = True) -> tuple[str, str]:
    """Split gs://bucket/key into (bucket, key), checking both against GCS's naming rules."""
    bucket, _, key = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"invalid GCS URI {uri}: it names no bucket; expected gs://bucket/key")
    max_length = 222 if "." in bucket else 63
    if not (3 <= len(bucket) <= max_length and _BUCKET_PATTERN.match(bucket)):
        raise ValueError(
            f"invalid bucket name {bucket!r} in {uri}: use 3-63 characters (up to 222 with dots) "
            "of lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    if object_required and not key:
        raise ValueError(f"invalid GCS URI {uri}: it names a bucket but no object; expected gs://bucket/key")
    if _CONTROL_CHARACTERS.search(key) or key in (".", "..") or len(key.encode("utf-8")) > 1024:
        raise ValueError(
            f"invalid object name {key!r} in {uri}: GCS object names are at most 1024 bytes of UTF-8, "
            "contain no control characters (such as newlines) and are not '.' or '..'"
        )
    return bucket, key


def _validate(uri: str, *, writable: bool = False) -> str:
    scheme = _scheme(uri)
    if scheme == "gs":
        _split_gs(uri)
    if writable and scheme == "http":
        raise ValueError(f"{uri} is read-only: write to a gs:// URI or a local path instead")
    return scheme


def join(base_uri: str, *parts: str) -> str:
    """Append path parts to a URI: join("gs://b/a", "x") is "gs://b/a/x"; a local base gives a path."""
    segments = [part.strip("/") for part in parts if part.strip("/")]
    scheme = _scheme(base_uri)
    if scheme == "local":
        return str(Path(to_local_path(base_uri), *segments))
    joined = "/".join([base_uri.rstrip("/"), *segments])
    if scheme == "gs":
        _split_gs(joined, object_required=False)
    return joined


# --- Retries and errors -------------------------------------------------------------------------


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in _TRANSIENT_STATUS_CODES
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code in _TRANSIENT_STATUS_CODES
    if isinstance(error, storage_exceptions.InvalidResponse):
        return error.response.status_code in _TRANSIENT_STATUS_CODES
    if isinstance(error, auth_exceptions.TransportError) and error.args:
        return isinstance(error.args[0], BaseException) and _is_transient(error.args[0])
    return isinstance(
        error,
        (
            ConnectionError,  # reset, refused, aborted, broken pipe
            TimeoutError,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            http.client.IncompleteRead,
            http.client.RemoteDisconnected,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.TimeoutError,
        ),
    )


def _status_code(error: BaseException) -> int | None:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code
    return None


def _translate(uri: str, action: str, error: Exception, *, attempts: int) -> StorageError | None:
    """Return the StorageError for a failed operation, or None for an error that is not about storage."""
    status = _status_code(error)
    if isinstance(error, FileNotFoundError) or status == 404:
        return ObjectNotFoundError(f"{uri} not found ({action} failed: {error})")
    if status == 412:
        return PreconditionFailedError(f"precondition failed for {uri}: {error}")
    if status in (401, 403):
        hint = (
            "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run "
            "`gcloud auth application-default login`, for an account that may access the bucket"
            if uri.startswith("gs://")
            else "this module sends only anonymous requests, so make the file public or copy it to a bucket"
        )
        return StorageError(f"access denied to {uri} ({action}, HTTP {status}): {hint}")
    storage_errors = (
        api_exceptions.GoogleAPICallError, requests.RequestException, OSError,
        http.client.HTTPException, urllib3.exceptions.HTTPError, auth_exceptions.TransportError,
        storage_exceptions.InvalidResponse, storage_exceptions.DataCorruption,
    )
    if not isinstance(error, storage_errors):
        return None
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return StorageError(f"{action} {uri} failed{tries}: {type(error).__name__}: {error}")


def _run(uri: str, action: str, operation: Callable[[], T], *, retryable: bool = True) -> T:
    """Call operation, retrying transient errors when retryable, and raise failures as StorageError."""
    policy = RETRY_POLICY
    started = time.monotonic()
    delay = policy.initial_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except StorageError:
            raise
        except Exception as error:
            elapsed = time.monotonic() - started
            may_retry = (
                retryable
                and _is_transient(error)
                and attempt < policy.max_attempts
                and elapsed + delay <= policy.deadline_s
            )
            if not may_retry:
                translated = _translate(uri, action, error, attempts=attempt)
                if translated is None:
                    raise
                raise translated from error
            logger.warning(
                "%s %s failed on attempt %d of %d (%s: %s); retrying in %.2f s",
                action, uri, attempt, policy.max_attempts, type(error).__name__, error, delay,
            )
            time.sleep(delay)
            delay = min(delay * policy.multiplier, policy.max_delay_s)


def _library_retry(uri: str) -> api_retry.Retry:
    """Build google-api-core's Retry from RETRY_POLICY, for streams that the library reads in chunks."""
    policy = RETRY_POLICY

    def log_retry(error: Exception) -> None:
        logger.warning("reading %s failed (%s: %s); retrying", uri, type(error).__name__, error)

    return api_retry.Retry(
        predicate=_is_transient,
        initial=policy.initial_delay_s,
        maximum=policy.max_delay_s,
        multiplier=policy.multiplier,
        timeout=policy.deadline_s,
        on_error=log_retry,
    )


# --- Clients and progress -----------------------------------------------------------------------


def _gcs_client() -> storage.Client:
    return _gcs_client_for(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.lru_cache(maxsize=4)
def _gcs_client_for(emulator_host: str | None) -> storage.Client:
    # The key is the emulator host, so tests that point STORAGE_EMULATOR_HOST elsewhere get a new
    # client. Object operations need no project, so none is looked up.
    try:
        return storage.Client(project=None)
    except auth_exceptions.DefaultCredentialsError:
        logger.info("no Google Cloud credentials found; using an anonymous client (public buckets only)")
        return storage.Client.create_anonymous_client()


def _blob(uri: str, *, generation: int | None = None) -> storage.Blob:
    bucket, key = _split_gs(uri)
    return _gcs_client().bucket(bucket).blob(key, generation=generation)


class _ProgressLog:
    """Progress log of one transfer: bytes so far, total and rate, at most once every PROGRESS_INTERVAL_S."""

    def __init__(self, uri: str, action: str, total: int | None) -> None:
        self.uri, self.action, self.total = uri, action, total
        self.done = 0
        self.started = self.last_logged = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last_logged >= PROGRESS_INTERVAL_S:
            self.last_logged = now
            self._log("%s %s: %d of %s bytes (%.1f MiB/s)", now)

    def finish(self) -> None:
        self._log("%s %s: %d of %s bytes done (%.1f MiB/s)", time.monotonic())

    def _log(self, message: str, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-6) / (1024 * 1024)
        total = "unknown" if self.total is None else str(self.total)
        logger.info(message, self.action, self.uri, self.done, total, rate)


class _HashingWriter:
    """A write-only file object that hashes, counts and reports what passes through it."""

    def __init__(self, stream: BinaryIO, progress: _ProgressLog) -> None:
        self.stream, self.progress = stream, progress
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.sha256.update(data)
        self.size += len(data)
        self.progress.advance(len(data))
        return len(data)


class _ProgressReader:
    """A seekable read-only file object that reports how much of it has been read."""

    def __init__(self, stream: BinaryIO, progress: _ProgressLog) -> None:
        self.stream, self.progress = stream, progress

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.progress.advance(len(data))
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


# --- Local files --------------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on path's folder, waiting at most LOCAL_LOCK_TIMEOUT_S.

    Locking the folder rather than a sibling lock file leaves nothing behind in a bucket folder.
    The cost is that writes to different files of one folder wait for each other.
    """
    lock_path = path.parent
    descriptor = os.open(lock_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + LOCAL_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"timed out after {LOCAL_LOCK_TIMEOUT_S} s waiting for the lock {lock_path}: "
                        "another process is writing the same file; retry when it has finished"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def _local_generation(path: Path) -> int:
    """Return the file's st_mtime_ns, or 0 when it does not exist."""
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def _advance_mtime(path: Path, *, after: int) -> int:
    """Set path's mtime to a value strictly greater than `after` and return it as stored."""
    # Filesystems store mtime at anything from 1 ns to 1 s resolution, so try bigger steps until
    # the stored value moves past `after`.
    for step in (1, 1_000, 1_000_000, 1_000_000_000, 2_000_000_000):
        requested = max(time.time_ns(), after + step)
        os.utime(path, ns=(requested, requested))
        stored = os.stat(path).st_mtime_ns
        if stored > after:
            return stored
    raise StorageError(f"could not move the mtime of {path} past {after}: the filesystem ignores os.utime")


def _precondition_error(uri: str, expected: int, current: int) -> PreconditionFailedError:
    if expected == 0:
        return PreconditionFailedError(
            f"precondition failed for {uri}: if_generation_match=0 requires that it does not exist, "
            f"but it exists with generation {current}"
        )
    found = "it does not exist" if current == 0 else f"its current generation is {current}"
    return PreconditionFailedError(
        f"precondition failed for {uri}: if_generation_match={expected}, but {found}; "
        "read the object again and retry with its current generation"
    )


def _write_local(uri: str, fill: Callable[[BinaryIO], None], *, if_generation_match: int | None) -> int:
    """Write a local file atomically via a temporary file, under the lock; returns the new generation."""
    path = to_local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(path):
        current = _local_generation(path)
        if if_generation_match is not None and current != if_generation_match:
            raise _precondition_error(uri, if_generation_match, current)
        descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                fill(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp_name, os.stat(path).st_mode & 0o7777 if current else LOCAL_FILE_MODE)
            generation = _advance_mtime(Path(temp_name), after=current)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
    return generation


def _stat_local(uri: str) -> ObjectInfo:
    path = to_local_path(uri)
    if path.is_dir():
        raise StorageError(f"{uri} is a folder, not a file: use list_uris to see the files in it")
    info = os.stat(path)
    return ObjectInfo(uri=uri, size=info.st_size, generation=info.st_mtime_ns)


def _list_local(prefix_uri: str) -> list[str]:
    root = to_local_path(prefix_uri)
    found = []
    for path in root.rglob("*") if root.is_dir() else []:
        if path.is_file() and not path.name.endswith(TEMP_SUFFIX):
            found.append(str(path))
    return sorted(found)


# --- gs:// and https:// -------------------------------------------------------------------------


def _stat_gs(uri: str) -> ObjectInfo:
    blob = _blob(uri)
    blob.reload(retry=None, timeout=REQUEST_TIMEOUT_S)
    return ObjectInfo(uri=uri, size=blob.size, generation=blob.generation)


def _list_gs(prefix_uri: str) -> list[str]:
    bucket, key = _split_gs(prefix_uri, object_required=False)
    # Folder semantics, as for local paths: gs://b/runs lists gs://b/runs/x, not gs://b/runs-old/x.
    prefix = key if not key or key.endswith("/") else key + "/"
    blobs = _gcs_client().list_blobs(bucket, prefix=prefix, retry=None, timeout=REQUEST_TIMEOUT_S)
    # Names ending in "/" are zero-byte folder placeholders that consoles create, not data.
    return sorted(f"gs://{bucket}/{blob.name}" for blob in blobs if not blob.name.endswith("/"))


def _http_get(uri: str, *, stream: bool = True, method: str = "GET") -> requests.Response:
    response = requests.request(method, uri, stream=stream, timeout=REQUEST_TIMEOUT_S, allow_redirects=True)
    if response.status_code >= 400:
        response.close()
        response.raise_for_status()
    return response


def _stat_http(uri: str) -> ObjectInfo:
    response = _http_get(uri, stream=False, method="HEAD")
    length = response.headers.get("Content-Length")
    if length is None:
        raise StorageError(f"{uri} sent no Content-Length, so its size is unknown; download it instead")
    return ObjectInfo(uri=uri, size=int(length), generation=0)


def _upload_gs(stream: BinaryIO, size: int, uri: str, *, if_generation_match: int | None) -> int:
    blob = _blob(uri)
    progress = _ProgressLog(uri, "uploading", size)
    blob.upload_from_file(
        _ProgressReader(stream, progress),
        size=size,
        if_generation_match=if_generation_match,
        retry=None,
        timeout=REQUEST_TIMEOUT_S,
    )
    progress.finish()
    return blob.generation


def _copy_gs(src_uri: str, dst_uri: str, *, if_generation_match: int | None) -> int:
    """Copy on the server side; big objects across locations take several rewrite calls."""
    source, destination = _blob(src_uri), _blob(dst_uri)
    token = None
    for _ in range(MAX_REWRITE_CALLS):
        token, copied, total = destination.rewrite(
            source, token=token, if_generation_match=if_generation_match, retry=None, timeout=REQUEST_TIMEOUT_S
        )
        logger.info("copying %s to %s: %s of %s bytes", src_uri, dst_uri, copied, total)
        if token is None:
            return destination.generation
    raise StorageError(f"copying {src_uri} to {dst_uri} did not finish after {MAX_REWRITE_CALLS} rewrite calls")


# --- Public API ---------------------------------------------------------------------------------


def exists(uri: str) -> bool:
    """Return True if the object or file exists; a local folder is not a file, so it gives False."""
    try:
        stat(uri)
    except ObjectNotFoundError:
        return False
    except StorageError:
        if is_local(uri) and to_local_path(uri).is_dir():
            return False
        raise
    return True


def stat(uri: str) -> ObjectInfo:
    """Return the size and generation of an object or file; raise ObjectNotFoundError when missing."""
    scheme = _validate(uri)
    if scheme == "local":
        return _run(uri, "stat", lambda: _stat_local(uri), retryable=False)
    if scheme == "gs":
        return _run(uri, "stat", lambda: _stat_gs(uri))
    return _run(uri, "stat", lambda: _stat_http(uri))


def list_uris(prefix_uri: str) -> list[str]:
    """Return every object or file under a folder, recursively and sorted; [] when there is none.

    A gs:// prefix is a folder: a "/" is added, so gs://b/a does not list gs://b/ab. Local
    folders, given as paths or file:// URIs, list as plain paths, as join returns them.
    """
    scheme = _scheme(prefix_uri)
    if scheme == "http":
        raise ValueError(f"cannot list {prefix_uri}: https:// has no listing; name each file instead")
    if scheme == "local":
        return _run(prefix_uri, "listing", lambda: _list_local(prefix_uri), retryable=False)
    _split_gs(prefix_uri, object_required=False)
    return _run(prefix_uri, "listing", lambda: _list_gs(prefix_uri))


@contextlib.contextmanager
def _open_read(uri: str) -> Iterator[BinaryIO]:
    scheme = _validate(uri)
    if scheme == "local":
        stream = _run(uri, "opening", lambda: open(to_local_path(uri), "rb"), retryable=False)
        with stream:
            yield stream
    elif scheme == "gs":
        # Stat first, so a missing object fails here with its URI, and pin the generation so that
        # every chunk comes from the same version of the object.
        info = stat(uri)
        with _blob(uri, generation=info.generation).open("rb", retry=_library_retry(uri)) as reader:
            yield reader
    else:
        response = _run(uri, "opening", lambda: _http_get(uri))
        with response:
            response.raw.decode_content = True
            yield response.raw


def open_read(uri: str) -> ContextManager[BinaryIO]:
    """Open an object or file for streaming reads, as a context manager.

    Opening is retried; for gs:// each chunk read is retried too. An error in the middle of an
    https:// or local stream is raised to the caller as is.
    """
    return _open_read(uri)


def read_bytes(uri: str) -> bytes:
    """Read a whole object or file into memory."""
    if _validate(uri) != "http":
        return read_with_generation(uri)[0]

    def fetch() -> bytes:
        with _http_get(uri) as response:
            return response.content

    return _run(uri, "reading", fetch)


def read_text(uri: str) -> str:
    """Read a whole object or file as UTF-8 text."""
    return read_bytes(uri).decode("utf-8")


def read_with_generation(uri: str) -> tuple[bytes, int]:
    """Read a whole object or file and the generation of exactly those bytes.

    Raises ObjectNotFoundError when it is missing, and ValueError for https://, which has no generations.
    """
    scheme = _validate(uri)
    if scheme == "http":
        raise ValueError(f"{uri} has no generation because https:// has none: use read_bytes")
    if scheme == "local":
        return _run(uri, "reading", lambda: _read_local_with_generation(uri), retryable=False)

    def fetch() -> tuple[bytes, int]:
        blob = _blob(uri)
        data = blob.download_as_bytes(retry=None, timeout=REQUEST_TIMEOUT_S)
        # The library sets the generation from the x-goog-generation header of that response.
        return data, blob.generation

    return _run(uri, "reading", fetch)


def _read_local_with_generation(uri: str) -> tuple[bytes, int]:
    # Writers replace the file instead of changing it, so the open inode's mtime belongs to its bytes.
    with open(to_local_path(uri), "rb") as stream:
        return stream.read(), os.fstat(stream.fileno()).st_mtime_ns


def write_bytes(uri: str, data: bytes, *, if_generation_match: int | None = None) -> int:
    """Write data to an object or file, replacing it atomically; returns the new generation.

    if_generation_match=0 writes only if it does not exist yet; any other value only if that is
    its current generation. A mismatch raises PreconditionFailedError.
    """
    scheme = _validate(uri, writable=True)
    _validate_generation(if_generation_match)
    if scheme == "local":
        return _run(
            uri, "writing",
            lambda: _write_local(uri, lambda stream: stream.write(data), if_generation_match=if_generation_match),
            retryable=False,
        )

    def upload() -> int:
        # Each attempt gets a fresh stream, so a retry starts from the first byte.
        return _upload_gs(io.BytesIO(data), len(data), uri, if_generation_match=if_generation_match)

    return _run_gs_write(uri, upload, if_generation_match)


def _validate_generation(if_generation_match: int | None) -> None:
    if if_generation_match is not None and (not isinstance(if_generation_match, int) or if_generation_match < 0):
        raise ValueError(
            f"invalid if_generation_match {if_generation_match!r}: use None (no precondition), "
            "0 (only if the object does not exist) or a generation returned by stat or a write"
        )


def _run_gs_write(uri: str, upload: Callable[[], int], if_generation_match: int | None) -> int:
    """Run a gs:// write; retry it only when a precondition makes repeating it safe."""
    try:
        return _run(uri, "writing", upload, retryable=if_generation_match is not None)
    except PreconditionFailedError as error:
        # NOTE: if an earlier attempt wrote the object but its response was lost, the retry fails
        # here although the write happened. The current generation in the message is that write's.
        raise _precondition_error(uri, if_generation_match, _current_generation(uri)) from error


def _current_generation(uri: str) -> int:
    try:
        return stat(uri).generation
    except ObjectNotFoundError:
        return 0


def upload_file(local_path: str | Path, uri: str, *, if_generation_match: int | None = None) -> int:
    """Copy a local file to a URI; returns the new generation. Preconditions work as in write_bytes."""
    path = Path(local_path)
    if not path.is_file():
        raise ObjectNotFoundError(f"{path} not found: upload_file needs an existing local file")
    return copy(str(path), uri, if_generation_match=if_generation_match)


def copy(src_uri: str, dst_uri: str, *, if_generation_match: int | None = None) -> int:
    """Copy an object or file to another URI, of any scheme; returns the destination's new generation.

    if_generation_match applies to the destination, as in write_bytes. gs:// to gs:// copies on the
    server; every other pair streams the bytes through this machine.
    """
    src_scheme = _validate(src_uri)
    dst_scheme = _validate(dst_uri, writable=True)
    _validate_generation(if_generation_match)
    if src_scheme == "gs" and dst_scheme == "gs":
        return _run_gs_write(
            dst_uri, lambda: _copy_gs(src_uri, dst_uri, if_generation_match=if_generation_match), if_generation_match
        )
    if src_scheme == "local":
        return _copy_from_local(to_local_path(src_uri), dst_uri, if_generation_match=if_generation_match)
    with tempfile.TemporaryDirectory(prefix="storage-copy-") as staging:
        staged = download(src_uri, Path(staging) / "object")
        return _copy_from_local(staged, dst_uri, if_generation_match=if_generation_match)


def _copy_from_local(path: Path, dst_uri: str, *, if_generation_match: int | None) -> int:
    if not path.is_file():
        raise ObjectNotFoundError(f"{path} not found: the source of a copy must be an existing file")
    if is_local(dst_uri):
        def fill(stream: BinaryIO) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, stream, CHUNK_SIZE)

        return _run(dst_uri, "writing", lambda: _write_local(dst_uri, fill, if_generation_match=if_generation_match),
                    retryable=False)

    def upload() -> int:
        with open(path, "rb") as stream:
            return _upload_gs(stream, path.stat().st_size, dst_uri, if_generation_match=if_generation_match)

    return _run_gs_write(dst_uri, upload, if_generation_match)


def download(
    uri: str,
    dest_path: str | Path,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
) -> Path:
    """Download an object, file or https:// URL to dest_path and return dest_path.

    The bytes go to a temporary file beside dest_path, which is renamed into place only after the
    size and sha256 checks pass. On any failure nothing is left at dest_path or beside it.
    """
    scheme = _validate(uri)
    expected_sha256 = _validate_sha256(uri, expected_sha256)
    if expected_size is not None and (not isinstance(expected_size, int) or expected_size < 0):
        raise ValueError(f"invalid expected_size {expected_size!r} for {uri}: use a byte count >= 0 or None")
    destination = Path(dest_path)
    destination.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> Path:
        return _download_once(uri, scheme, destination, expected_sha256=expected_sha256, expected_size=expected_size)

    _run(uri, "downloading", attempt, retryable=scheme != "local")
    return destination


def _validate_sha256(uri: str, expected_sha256: str | None) -> str | None:
    if not expected_sha256:
        return None
    normalized = expected_sha256.strip().lower()
    if not _SHA256_PATTERN.match(normalized):
        raise ValueError(
            f"invalid expected_sha256 {expected_sha256!r} for {uri}: use 64 hex digits "
            "(as printed by `sha256sum FILE`), or leave it empty to skip the check"
        )
    return normalized


def _download_once(
    uri: str, scheme: str, destination: Path, *, expected_sha256: str | None, expected_size: int | None
) -> Path:
    descriptor, temp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=TEMP_SUFFIX
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            writer = _transfer(uri, scheme, stream, expected_size=expected_size)
            stream.flush()
            os.fsync(stream.fileno())
        _check_download(uri, writer, expected_sha256=expected_sha256, expected_size=expected_size)
        os.chmod(temp_name, LOCAL_FILE_MODE)
        os.replace(temp_name, destination)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    writer.progress.finish()
    return destination


def _transfer(uri: str, scheme: str, stream: BinaryIO, *, expected_size: int | None) -> _HashingWriter:
    """Stream the object's bytes into stream through a _HashingWriter and return that writer."""
    if scheme == "gs":
        info = _stat_gs(uri)
        if expected_size is not None and info.size != expected_size:
            raise _size_error(uri, expected_size, info.size)
        writer = _HashingWriter(stream, _ProgressLog(uri, "downloading", info.size))
        # Pinning the generation keeps the bytes consistent with the size just read.
        _blob(uri, generation=info.generation).download_to_file(writer, retry=None, timeout=REQUEST_TIMEOUT_S)
        return writer
    if scheme == "http":
        with _http_get(uri) as response:
            length = response.headers.get("Content-Length")
            writer = _HashingWriter(stream, _ProgressLog(uri, "downloading", int(length) if length else None))
            for chunk in response.iter_content(CHUNK_SIZE):
                writer.write(chunk)
        return writer
    path = to_local_path(uri)
    writer = _HashingWriter(stream, _ProgressLog(uri, "copying", path.stat().st_size))
    with open(path, "rb") as source:
        shutil.copyfileobj(source, writer, CHUNK_SIZE)
    return writer


def _size_error(uri: str, expected: int, actual: int) -> StorageError:
    return StorageError(
        f"size mismatch for {uri}: expected {expected} bytes, got {actual}; "
        "pass the right expected_size, or None to skip the check"
    )


def _check_download(
    uri: str, writer: _HashingWriter, *, expected_sha256: str | None, expected_size: int | None
) -> None:
    if expected_size is not None and writer.size != expected_size:
        raise _size_error(uri, expected_size, writer.size)
    actual = writer.sha256.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise StorageError(
            f"sha256 mismatch for {uri}: expected {expected_sha256}, got {actual}; "
            "pass the right sha256, or leave it empty to skip the check"
        )
