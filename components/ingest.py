"""Ingest step: turn a photo archive or folder sorted into class folders into an image Dataset.

The source is a .tar, .tar.gz/.tgz (or .tar.bz2/.tar.xz) or .zip archive, or an unpacked folder,
given as a local path, file://, gs:// or https:// URI. The archive type comes from the file's first
bytes, so the name does not matter. A remote archive is downloaded to a work folder first. When
expected_sha256 is given, the archive is verified before any photo is read.

Layout: the class of a photo is its first folder under the archive's single top folder
(flower_photos/daisy/x.jpg is a daisy), or its first folder at the root when there is no single
top folder. Deeper folders belong to their class. Files outside any class folder (such as
flower_photos/LICENSE.txt), hidden files (a name starting with "." or a __MACOSX folder) and files
without an image extension are skipped and counted in the report.

Each entry is processed as it streams: its bytes go to one file in the work folder while they are
hashed, then Pillow decodes that file. Memory therefore stays bounded by one decoded photo plus the
bookkeeping of one small record per entry, and nothing from the archive is written under a name
that the archive chose, so no entry can write outside the output folder.

Bad entries: an entry with an absolute path or a ".." component, a link whose target lies outside
the archive, and a device file, FIFO or socket fail the whole run with the entry named. A photo
archive never needs them, so such an archive was made by mistake or to attack the reader.
A link that stays inside the archive is skipped and reported (links are never followed). A file
that does not decode, is truncated or is a decompression bomb is quarantined: left out of the
Dataset and named in the report with the reason, so one bad photo does not stop the run.

Duplicates: byte-identical photos (same sha256) within one class are kept once (the copy with the
smallest source path), and a photo found under two or more classes is left out of all of them,
because its label is ambiguous.

The Dataset layout is documented in components/artifacts.py. The manifest and then the report
are written last, each under a temporary name and renamed, so a run that fails midway leaves no
folder that looks like a finished Dataset.
"""

# No `from __future__ import annotations`: KFP reads ingest_component's annotations as types,
# and string annotations would break the component's interface.
import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, NamedTuple

from kfp.dsl import Dataset, Output

from components import artifacts, images, storage

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_URI = "gs://download.tensorflow.org/example_images/flower_photos.tgz"
# Two images is the least with which a class can be both learned from and evaluated on. A
# pipeline that needs more per class (for a validation split, say) passes a higher minimum.
DEFAULT_MIN_IMAGES_PER_CLASS = 2
# Sized for real photo archives, with room to spare: the full flowers archive has 3,670 photos,
# and large labelled photo collections have a few hundred thousand files (an estimate).
DEFAULT_MAX_TOTAL_BYTES = 20 * 1024**3
DEFAULT_MAX_ENTRIES = 500_000

DOWNLOADED_ARCHIVE_NAME = "source-archive"
STAGING_DIR = "staging"
# Reasons for a skipped file, as they appear in the report.
SKIP_TOP_LEVEL = "outside_class_folder"
SKIP_HIDDEN = "hidden_file"
SKIP_NOT_IMAGE = "not_an_image"
SKIP_LINK = "link"

_CHUNK_BYTES = 1024 * 1024
_MAX_LINK_TARGET_BYTES = 4096
_MAX_STORED_STEM_BYTES = 150
_MAX_LOGGED_QUARANTINES = 20
_PROGRESS_INTERVAL_S = 10.0
_SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_HIDDEN_FOLDERS = frozenset({"__MACOSX"})
# Errors of the decompressors and archive readers on truncated or corrupt data.
_ARCHIVE_ERRORS = (
    tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
)


class IngestError(Exception):
    """The source cannot become a Dataset: it is missing, corrupt, over a limit or too small."""


class UnsafeEntryError(IngestError):
    """An archive entry that could write or read outside the archive, or is no regular file."""


@dataclasses.dataclass
class IngestOptions:
    """Parameters of the ingest step."""

    source_uri: str = DEFAULT_SOURCE_URI
    # Hex sha256 of the archive file; None skips the check. Not valid for a folder.
    expected_sha256: str | None = None
    min_images_per_class: int = DEFAULT_MIN_IMAGES_PER_CLASS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES  # of all files in the source, as extracted
    max_entries: int = DEFAULT_MAX_ENTRIES  # files, folders and links in the source
    max_image_pixels: int = images.DEFAULT_MAX_IMAGE_PIXELS  # width * height of one photo


@dataclasses.dataclass
class IngestReport:
    """Summary of one ingest run: the source, the stored counts and every file left out.

    Written as ingest_report.json.
    """

    source_uri: str
    source_kind: str  # "tar", "zip" or "folder"
    source_sha256: str | None  # of the archive file; None for a folder
    num_images: int
    num_classes: int
    class_counts: dict[str, int]
    num_skipped: int
    skipped_counts: dict[str, int]  # reason -> files
    skipped: list[dict]  # {"path", "reason"}
    num_quarantined: int
    quarantined: list[dict]  # {"path", "reason"}
    num_duplicates: int  # files left out as duplicates, within and across classes
    duplicates_within_class: list[dict]  # {"label", "sha256", "kept", "dropped"}
    duplicates_across_classes: list[dict]  # {"sha256", "labels", "paths"}
    elapsed_seconds: float


# --- Options -------------------------------------------------------------------------------------


def validate_options(options: IngestOptions) -> None:
    """Raise ValueError for an option that no source could satisfy, before any work starts."""
    if not isinstance(options.source_uri, str) or not options.source_uri.strip():
        raise ValueError(
            f"source_uri={options.source_uri!r} is empty: pass an archive or folder URI, "
            f"e.g. {DEFAULT_SOURCE_URI}"
        )
    storage.is_local(options.source_uri)  # raises ValueError for an unsupported scheme
    expected = options.expected_sha256
    if expected is not None and not _SHA256_PATTERN.match(expected):
        raise ValueError(
            f"expected_sha256={expected!r} is invalid: pass 64 hex digits "
            "(the output of `sha256sum ARCHIVE`), or leave it empty to skip the check"
        )
    limits = {
        "min_images_per_class": options.min_images_per_class,
        "max_total_bytes": options.max_total_bytes,
        "max_entries": options.max_entries,
        "max_image_pixels": options.max_image_pixels,
    }
    for name, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: pass a whole number of 1 or more")


# --- Source entries ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One member of an archive or one file or folder of a source folder."""

    name: str  # as the source spells it
    kind: str  # "file", "dir", "link" or "special"
    size: int | None = None  # bytes, as declared by the archive; None when unknown
    link_target: str | None = None
    link_from_root: bool = False  # a tar hard link's target is relative to the archive root
    open: Callable[[], ContextManager[BinaryIO]] | None = None


@dataclasses.dataclass
class _Source:
    kind: str  # "tar", "zip" or "folder"
    entries: Iterator[_Entry]
    sha256: Callable[[], str | None]  # valid once entries are exhausted


class _HashingReader:
    """A read-only stream that hashes everything read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        """Read the rest of the stream (the padding after a tar's end marker) and return the hash."""
        while self.read(_CHUNK_BYTES):
            pass
        return self.hash.hexdigest()


def _open_source(options: IngestOptions, work_dir: Path) -> _Source:
    uri = options.source_uri
    if storage.is_local(uri):
        path = storage.to_local_path(uri)
        if path.is_dir():
            _check_no_sha256_for_folder(options)
            return _Source("folder", _local_folder_entries(path), lambda: None)
        if not path.is_file():
            raise IngestError(f"source {uri} not found: pass an existing archive file or folder")
        if options.expected_sha256 is not None:
            _verify_sha256(path, expected=options.expected_sha256, uri=uri)
    else:
        if _is_remote_folder(uri):
            _check_no_sha256_for_folder(options)
            return _Source("folder", _remote_folder_entries(uri), lambda: None)
        path = _download(uri, work_dir=work_dir, expected_sha256=options.expected_sha256)
    return _open_archive(path, uri=uri)


def _check_no_sha256_for_folder(options: IngestOptions) -> None:
    if options.expected_sha256 is not None:
        raise ValueError(
            f"expected_sha256 is set, but {options.source_uri} is a folder, which has no single "
            "sha256: leave expected_sha256 empty, or pass the archive file instead"
        )


def _is_remote_folder(uri: str) -> bool:
    if uri.endswith("/"):
        return True
    if uri.startswith(("https://", "http://")) or storage.exists(uri):
        return False
    return bool(storage.list_uris(uri))


def _download(uri: str, *, work_dir: Path, expected_sha256: str | None) -> Path:
    destination = work_dir / DOWNLOADED_ARCHIVE_NAME
    try:
        return storage.download(uri, destination, expected_sha256=expected_sha256)
    except storage.ObjectNotFoundError as error:
        raise IngestError(
            f"source {uri} not found: check the URI, or pass a folder URI ending in '/' "
            f"({error})"
        ) from error
    except storage.StorageError as error:
        raise IngestError(f"downloading source {uri} failed: {error}") from error


def _verify_sha256(path: Path, *, expected: str, uri: str) -> None:
    actual = _sha256_of_file(path)
    if actual != expected.lower():
        raise IngestError(
            f"sha256 mismatch for {uri}: expected {expected}, got {actual}; the file is not the "
            "expected archive, so fetch it again or correct expected_sha256"
        )


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _open_archive(path: Path, *, uri: str) -> _Source:
    with open(path, "rb") as stream:
        head = stream.read(512)
    is_zip = head.startswith((b"PK\x03\x04", b"PK\x05\x06"))
    is_tar = (
        head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
        or head[257:262] == b"ustar"
        or uri.lower().endswith(".tar")  # a pre-POSIX tar has no magic bytes
    )
    # A self-extracting zip starts with a program, so is_zipfile looks for the zip's end record.
    # It runs after the tar checks because a tar whose last member is a zip can pass it too.
    if is_zip or (not is_tar and zipfile.is_zipfile(path)):
        return _Source("zip", _zip_entries(path, uri=uri), lambda: _sha256_of_file(path))
    if is_tar:
        reader = _TarReader(path, uri=uri)
        return _Source("tar", reader.entries(), lambda: reader.sha256)
    raise IngestError(
        f"source {uri} is not a .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz or .zip archive "
        f"(its first bytes are {head[:8].hex(' ')}): pass one of those, or an unpacked folder"
    )


class _TarReader:
    """Streams a tar archive's members once, in order, hashing the file as it is read."""

    def __init__(self, path: Path, *, uri: str) -> None:
        self.path, self.uri = path, uri
        self.sha256: str | None = None

    def entries(self) -> Iterator[_Entry]:
        with open(self.path, "rb") as stream:
            reader = _HashingReader(stream)
            with _archive_errors(self.uri, "reading the archive"):
                archive = tarfile.open(fileobj=reader, mode="r|*")
            with archive:
                yield from self._members(archive)
            self.sha256 = reader.drain()

    def _members(self, archive: tarfile.TarFile) -> Iterator[_Entry]:
        members = iter(archive)
        last_name = None
        while True:
            after = f"after entry {last_name}" if last_name else "at its first entry"
            with _archive_errors(self.uri, after):
                member = next(members, None)
            if member is None:
                return
            last_name = member.name
            yield _tar_entry(archive, member)


def _tar_entry(archive: tarfile.TarFile, member: tarfile.TarInfo) -> _Entry:
    if member.isfile():
        return _Entry(member.name, "file", size=member.size,
                      open=lambda: contextlib.closing(archive.extractfile(member)))
    if member.isdir():
        return _Entry(member.name, "dir")
    if member.issym() or member.islnk():
        return _Entry(member.name, "link", link_target=member.linkname, link_from_root=member.islnk())
    return _Entry(member.name, "special")


def _zip_entries(path: Path, *, uri: str) -> Iterator[_Entry]:
    with _archive_errors(uri, "reading the archive's central directory"):
        archive = zipfile.ZipFile(path)
    with archive:
        for info in archive.infolist():
            yield _zip_entry(archive, info, uri=uri)


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, uri: str) -> _Entry:
    mode = info.external_attr >> 16  # Unix mode bits, when the archiver stored them
    if info.is_dir() or stat.S_ISDIR(mode):
        return _Entry(info.filename, "dir")
    if stat.S_ISLNK(mode):
        with _archive_errors(uri, f"reading link {info.filename}"), archive.open(info) as stream:
            target = stream.read(_MAX_LINK_TARGET_BYTES).decode("utf-8", errors="replace")
        return _Entry(info.filename, "link", link_target=target)
    # Many archivers store permission bits without a file type; only a stored type counts.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return _Entry(info.filename, "special")
    return _Entry(info.filename, "file", size=info.file_size, open=lambda: archive.open(info))


def _local_folder_entries(root: Path) -> Iterator[_Entry]:
    for folder, dir_names, file_names in os.walk(root, followlinks=False):
        dir_names.sort()  # os.walk descends in this order, so the entries come sorted
        for name in dir_names + sorted(file_names):
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                yield _Entry(relative, "link", link_target=os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                yield _Entry(relative, "dir")
            elif stat.S_ISREG(info.st_mode):
                yield _Entry(relative, "file", size=info.st_size, open=lambda path=path: open(path, "rb"))
            else:
                yield _Entry(relative, "special")


def _remote_folder_entries(prefix_uri: str) -> Iterator[_Entry]:
    prefix = prefix_uri if prefix_uri.endswith("/") else prefix_uri + "/"
    uris = storage.list_uris(prefix_uri)
    if not uris:
        raise IngestError(f"source {prefix_uri} not found: no object has the prefix {prefix}")
    for uri in uris:
        yield _Entry(uri[len(prefix):], "file", open=lambda uri=uri: storage.open_read(uri))


@contextlib.contextmanager
def _archive_errors(uri: str, where: str) -> Iterator[None]:
    """Turn a decompressor's or archive reader's error into an IngestError that names the source."""
    try:
        yield
    except _ARCHIVE_ERRORS as error:
        raise IngestError(
            f"source {uri} is truncated or corrupt ({where}: {type(error).__name__}: {error}); "
            "fetch the archive again and compare its sha256 with the published one"
        ) from error


# --- Scanning entries ----------------------------------------------------------------------------


@dataclasses.dataclass
class _ScannedFile:
    parts: tuple[str, ...]  # path components inside the source
    source: str  # the path as written in the manifest and report
    outcome: str  # "image", "quarantined" or "not_an_image"
    reason: str = ""  # why it was quarantined
    sha256: str = ""  # of the source bytes
    stored_sha256: str = ""
    staged_path: Path | None = None
    width: int = 0
    height: int = 0


@dataclasses.dataclass
class _Scan:
    files: list[_ScannedFile] = dataclasses.field(default_factory=list)
    folders: set[tuple[str, ...]] = dataclasses.field(default_factory=set)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)
    num_entries: int = 0
    num_bytes: int = 0


def _scan_source(source: _Source, *, options: IngestOptions, staging_dir: Path) -> _Scan:
    scan = _Scan()
    last_logged = time.monotonic()
    for entry in source.entries:
        _scan_entry(entry, scan=scan, options=options, staging_dir=staging_dir)
        if time.monotonic() - last_logged >= _PROGRESS_INTERVAL_S:
            last_logged = time.monotonic()
            logger.info("read %d entries (%d bytes) of %s", scan.num_entries, scan.num_bytes,
                        options.source_uri)
    return scan


def _scan_entry(entry: _Entry, *, scan: _Scan, options: IngestOptions, staging_dir: Path) -> None:
    parts = _safe_parts(entry.name, uri=options.source_uri)
    if not parts:
        return  # the archive's root folder itself, "." or "./"
    scan.num_entries += 1
    _check_entry_limit(scan, options=options)
    source = "/".join(parts)

    if entry.kind == "special":
        raise UnsafeEntryError(
            f"entry {entry.name!r} of {options.source_uri} is a device file, FIFO or socket, which "
            "a photo archive never contains; remove it from the archive"
        )
    if entry.kind == "link":
        _check_link(entry, parts, uri=options.source_uri)
        scan.skipped.append((source, SKIP_LINK))
        return
    if entry.kind == "file" and entry.size is not None:
        scan.num_bytes += entry.size
        _check_size_limit(scan.num_bytes, options=options)
    if any(part.startswith(".") or part in _HIDDEN_FOLDERS for part in parts):
        if entry.kind == "file":
            scan.skipped.append((source, SKIP_HIDDEN))
        return
    if entry.kind == "dir":
        scan.folders.add(parts)
        return

    scan.folders.update(parts[:depth] for depth in range(1, len(parts)))
    if len(parts) == 1:
        scan.skipped.append((source, SKIP_TOP_LEVEL))
    elif not images.is_image_name(parts[-1]):
        scan.files.append(_ScannedFile(parts=parts, source=source, outcome=SKIP_NOT_IMAGE))
    else:
        staged = _stage_image(entry, scan=scan, options=options, staging_dir=staging_dir)
        scan.files.append(dataclasses.replace(staged, parts=parts, source=source))


def _safe_parts(name: str, *, uri: str) -> tuple[str, ...]:
    """Split an entry name into path components, rejecting absolute paths and '..'."""
    # Windows archivers may write "\" as the separator, so treat it as one for these checks.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _WINDOWS_DRIVE.match(normalized):
        raise UnsafeEntryError(
            f"entry {name!r} of {uri} has an absolute path, which could write outside the "
            "extraction folder; rebuild the archive with relative paths"
        )
    parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeEntryError(
            f"entry {name!r} of {uri} contains '..', which could write outside the extraction "
            "folder; rebuild the archive without '..' in its paths"
        )
    return parts


def _check_link(entry: _Entry, parts: tuple[str, ...], *, uri: str) -> None:
    target = (entry.link_target or "").replace("\\", "/")
    base = "" if entry.link_from_root else posixpath.dirname("/".join(parts))
    resolved = posixpath.normpath(posixpath.join(base, target)) if target else ""
    outside = target.startswith("/") or resolved == ".." or resolved.startswith("../")
    if outside or _WINDOWS_DRIVE.match(target):
        raise UnsafeEntryError(
            f"entry {entry.name!r} of {uri} is a link to {entry.link_target!r}, outside the "
            "archive; replace the link with the file it points to"
        )


def _check_entry_limit(scan: _Scan, *, options: IngestOptions) -> None:
    if scan.num_entries > options.max_entries:
        raise IngestError(
            f"source {options.source_uri} has more than max_entries={options.max_entries} files, "
            "folders and links; raise max_entries if the archive is genuine"
        )


def _check_size_limit(num_bytes: int, *, options: IngestOptions) -> None:
    if num_bytes > options.max_total_bytes:
        raise IngestError(
            f"source {options.source_uri} extracts to more than max_total_bytes="
            f"{options.max_total_bytes} bytes; raise max_total_bytes if the archive is genuine"
        )


def _stage_image(entry: _Entry, *, scan: _Scan, options: IngestOptions, staging_dir: Path) -> _ScannedFile:
    """Copy an entry to the staging folder, decode it and keep it as a JPEG, or quarantine it."""
    index = len(scan.files)
    raw_path = staging_dir / f"{index}.source"
    source_sha256 = _copy_entry(entry, raw_path, scan=scan, options=options)

    try:
        decoded = images.decode_image(raw_path, max_pixels=options.max_image_pixels)
    except images.ImageDecodeError as error:
        raw_path.unlink()
        return _ScannedFile(parts=(), source="", outcome="quarantined", reason=str(error))

    stored_path = staging_dir / f"{index}.jpg"
    if decoded.needs_reencode:
        data = images.encode_jpeg(decoded.image)
        stored_path.write_bytes(data)
        stored_sha256 = hashlib.sha256(data).hexdigest()
        raw_path.unlink()
    else:
        raw_path.rename(stored_path)
        stored_sha256 = source_sha256
    width, height = decoded.image.size
    return _ScannedFile(
        parts=(), source="", outcome="image", sha256=source_sha256, stored_sha256=stored_sha256,
        staged_path=stored_path, width=width, height=height,
    )


def _copy_entry(entry: _Entry, destination: Path, *, scan: _Scan, options: IngestOptions) -> str:
    """Write an entry's bytes to destination in chunks; returns their sha256.

    An entry of unknown size (an object of a remote folder) counts towards max_total_bytes here,
    as it is read. The declared size of any other entry was counted when it was scanned.
    """
    digest = hashlib.sha256()
    with _archive_errors(options.source_uri, f"reading entry {entry.name}"):
        with entry.open() as stream, open(destination, "wb") as output:
            while chunk := stream.read(_CHUNK_BYTES):
                if entry.size is None:
                    scan.num_bytes += len(chunk)
                    _check_size_limit(scan.num_bytes, options=options)
                digest.update(chunk)
                output.write(chunk)
    return digest.hexdigest()


# --- Planning the Dataset ------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    labels: list[str]
    images_by_label: dict[str, list[_ScannedFile]]  # label -> images, sorted by source path
    skipped: list[tuple[str, str]]
    quarantined: list[tuple[str, str]]
    within_class: list[dict]
    across_classes: list[dict]


def _plan_dataset(scan: _Scan, *, options: IngestOptions) -> _Plan:
    depth = _class_depth(scan.folders)
    labels = sorted({folder[depth] for folder in scan.folders if len(folder) > depth})
    for label in labels:
        _check_label(label, uri=options.source_uri)
    plan = _Plan(labels=labels, images_by_label={label: [] for label in labels}, skipped=list(scan.skipped),
                 quarantined=[], within_class=[], across_classes=[])

    candidates: list[_ScannedFile] = []
    for scanned in scan.files:
        if len(scanned.parts) <= depth + 1:
            plan.skipped.append((scanned.source, SKIP_TOP_LEVEL))
        elif scanned.outcome == SKIP_NOT_IMAGE:
            plan.skipped.append((scanned.source, SKIP_NOT_IMAGE))
        elif scanned.outcome == "quarantined":
            plan.quarantined.append((scanned.source, scanned.reason))
        else:
            candidates.append(scanned)

    _drop_duplicates(candidates, plan=plan, depth=depth)
    plan.skipped.sort()
    plan.quarantined.sort()
    return plan


def _class_depth(folders: set[tuple[str, ...]]) -> int:
    """Return 1 when the class folders are inside a single top folder, else 0."""
    top_folders = {folder[0] for folder in folders}
    has_subfolders = any(len(folder) >= 2 for folder in folders)
    return 1 if len(top_folders) == 1 and has_subfolders else 0


def _check_label(label: str, *, uri: str) -> None:
    if _CONTROL_CHARACTERS.search(label):
        raise IngestError(
            f"class folder {label!r} in {uri} has a control character in its name, which cannot "
            "be a line of labels.txt; rename the folder"
        )


def _drop_duplicates(candidates: list[_ScannedFile], *, plan: _Plan, depth: int) -> None:
    """Keep one copy of each photo per class, and no copy of a photo found in two classes."""
    by_sha256: dict[str, list[_ScannedFile]] = {}
    for scanned in sorted(candidates, key=lambda item: item.source):
        by_sha256.setdefault(scanned.sha256, []).append(scanned)

    for sha256, copies in by_sha256.items():
        labels = sorted({duplicate.parts[depth] for duplicate in copies})
        if len(labels) > 1:
            plan.across_classes.append(
                {"sha256": sha256, "labels": labels, "paths": [duplicate.source for duplicate in copies]}
            )
            continue
        kept, dropped = copies[0], copies[1:]
        plan.images_by_label[labels[0]].append(kept)
        if dropped:
            plan.within_class.append({
                "label": labels[0], "sha256": sha256, "kept": kept.source,
                "dropped": [duplicate.source for duplicate in dropped],
            })

    for files in plan.images_by_label.values():
        files.sort(key=lambda item: item.source)
    plan.within_class.sort(key=lambda item: item["kept"])
    plan.across_classes.sort(key=lambda item: item["paths"][0])


def _check_class_counts(plan: _Plan, *, options: IngestOptions) -> None:
    uri = options.source_uri
    if len(plan.labels) < 2:
        found = ", ".join(plan.labels) or "none"
        raise IngestError(
            f"source {uri} has {len(plan.labels)} class folder(s) ({found}), but a classifier "
            "needs at least 2: put each class's photos in its own folder, e.g. "
            "flower_photos/daisy/ and flower_photos/roses/"
        )
    small = {label: len(plan.images_by_label[label]) for label in plan.labels
             if len(plan.images_by_label[label]) < options.min_images_per_class}
    if small:
        counts = ", ".join(f"{label!r} has {count}" for label, count in small.items())
        raise IngestError(
            f"classes in {uri} with fewer usable images than min_images_per_class="
            f"{options.min_images_per_class}: {counts}; add photos to those class folders, remove "
            "them, or lower min_images_per_class (duplicates and quarantined files do not count)"
        )


# --- Writing the Dataset -------------------------------------------------------------------------


def _write_dataset(plan: _Plan, output_dir: Path) -> list[artifacts.ManifestRow]:
    rows = []
    for label in plan.labels:
        label_dir = output_dir / artifacts.IMAGES_DIR / label
        label_dir.mkdir(parents=True)
        used_names: set[str] = set()
        for scanned in plan.images_by_label[label]:
            name = _stored_name(scanned, used_names=used_names)
            shutil.move(scanned.staged_path, label_dir / name)
            rows.append(artifacts.ManifestRow(
                path=f"{artifacts.IMAGES_DIR}/{label}/{name}", label=label,
                sha256=scanned.stored_sha256, width=scanned.width, height=scanned.height,
                source=scanned.source,
            ))
    artifacts.write_labels(output_dir / artifacts.LABELS_FILE, plan.labels)
    _write_atomically(output_dir / artifacts.MANIFEST_FILE,
                      lambda path: artifacts.write_manifest(path, rows))
    return rows


def _stored_name(scanned: _ScannedFile, *, used_names: set[str]) -> str:
    """Name a stored photo after its source file; a clash gets the sha256's first digits."""
    stem = _CONTROL_CHARACTERS.sub("_", Path(scanned.parts[-1]).stem)
    # Most filesystems allow 255 bytes in a name; cut the stem well below that, in UTF-8 bytes.
    stem = stem.encode("utf-8")[:_MAX_STORED_STEM_BYTES].decode("utf-8", errors="ignore")
    name = f"{stem}.jpg"
    if name in used_names:
        name = f"{stem}-{scanned.sha256[:12]}.jpg"
    # Two different photos in one class never share a sha256, so this loop runs only when a
    # source file is itself named like "<stem>-<sha256 digits>". Numbers keep the names unique.
    number = 2
    while name in used_names:
        name = f"{stem}-{scanned.sha256[:12]}-{number}.jpg"
        number += 1
    used_names.add(name)
    return name


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def _build_report(plan: _Plan, *, source: _Source, options: IngestOptions, started: float) -> IngestReport:
    skipped_counts: dict[str, int] = {}
    for _, reason in plan.skipped:
        skipped_counts[reason] = skipped_counts.get(reason, 0) + 1
    num_duplicates = sum(len(item["dropped"]) for item in plan.within_class)
    num_duplicates += sum(len(item["paths"]) for item in plan.across_classes)
    class_counts = {label: len(plan.images_by_label[label]) for label in plan.labels}
    return IngestReport(
        source_uri=options.source_uri, source_kind=source.kind, source_sha256=source.sha256(),
        num_images=sum(class_counts.values()), num_classes=len(plan.labels),
        class_counts=class_counts,
        num_skipped=len(plan.skipped), skipped_counts=dict(sorted(skipped_counts.items())),
        skipped=[{"path": path, "reason": reason} for path, reason in plan.skipped],
        num_quarantined=len(plan.quarantined),
        quarantined=[{"path": path, "reason": reason} for path, reason in plan.quarantined],
        num_duplicates=num_duplicates,
        duplicates_within_class=plan.within_class, duplicates_across_classes=plan.across_classes,
        elapsed_seconds=round(time.monotonic() - started, 3),
    )


def write_report(report: IngestReport, output_dir: str | Path) -> None:
    """Write the report as ingest_report.json, under a temporary name first."""
    text = json.dumps(dataclasses.asdict(report), indent=2, sort_keys=True)
    _write_atomically(Path(output_dir) / artifacts.INGEST_REPORT_FILE,
                      lambda path: path.write_text(text, encoding="utf-8"))


def read_report(dataset_dir: str | Path) -> IngestReport:
    """Read ingest_report.json of an image Dataset folder."""
    path = Path(dataset_dir) / artifacts.INGEST_REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {dataset_dir} is not a Dataset written by ingest")
    return IngestReport(**json.loads(path.read_text(encoding="utf-8")))


# --- The step ------------------------------------------------------------------------------------


def ingest(
    options: IngestOptions, output_dir: str | Path, *, work_dir: str | Path | None = None
) -> IngestReport:
    """Read the source, validate and convert its photos, and write an image Dataset to output_dir.

    output_dir must be absent or empty. The downloaded archive and the photos being converted go
    to a temporary folder inside work_dir (by default the system's temporary folder), which is
    removed afterwards. Raises ValueError for invalid options and IngestError for a source that
    cannot become a Dataset. After an error, output_dir contains nothing that ingest wrote.
    """
    validate_options(options)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    started = time.monotonic()
    logger.info("reading %s", options.source_uri)

    with _work_folder(work_dir) as work:
        staging_dir = work / STAGING_DIR
        staging_dir.mkdir()
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            report = _run_ingest(options, output_dir=output_dir, work=work, staging_dir=staging_dir,
                                 started=started)
        except BaseException:
            _remove_partial_output(output_dir)
            raise
        finally:
            shutil.rmtree(staging_dir, ignore_errors=True)

    logger.info(
        "ingested %d images in %d classes %s, %d skipped, %d quarantined, %d duplicates left out, "
        "in %.1f s; wrote %s", report.num_images, report.num_classes, report.class_counts,
        report.num_skipped, report.num_quarantined, report.num_duplicates, report.elapsed_seconds,
        output_dir,
    )
    return report


def _run_ingest(options: IngestOptions, *, output_dir: Path, work: Path, staging_dir: Path,
                started: float) -> IngestReport:
    source = _open_source(options, work)
    scan = _scan_source(source, options=options, staging_dir=staging_dir)
    plan = _plan_dataset(scan, options=options)
    _log_quarantined(plan.quarantined)
    _check_class_counts(plan, options=options)

    _write_dataset(plan, output_dir)
    report = _build_report(plan, source=source, options=options, started=started)
    # The report goes last: its presence marks a finished Dataset.
    write_report(report, output_dir)
    return report


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(
            f"output folder {output_dir} exists and is not an empty folder: pass a new or empty "
            "folder, because ingest removes what it wrote there when it fails"
        )


@contextlib.contextmanager
def _work_folder(work_dir: str | Path | None) -> Iterator[Path]:
    if work_dir is not None:
        path = Path(work_dir)
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ingest-", dir=path) as folder:
            yield Path(folder)
    else:
        with tempfile.TemporaryDirectory(prefix="ingest-") as folder:
            yield Path(folder)


def _remove_partial_output(output_dir: Path) -> None:
    shutil.rmtree(output_dir / artifacts.IMAGES_DIR, ignore_errors=True)
    for name in (artifacts.LABELS_FILE, artifacts.MANIFEST_FILE, artifacts.INGEST_REPORT_FILE):
        (output_dir / name).unlink(missing_ok=True)
        (output_dir / f".{name}.partial").unlink(missing_ok=True)


def _log_quarantined(quarantined: list[tuple[str, str]]) -> None:
    for path, reason in quarantined[:_MAX_LOGGED_QUARANTINES]:
        logger.warning("quarantined %s: %s", path, reason)
    if len(quarantined) > _MAX_LOGGED_QUARANTINES:
        logger.warning("%d more files quarantined; ingest_report.json names them all",
                       len(quarantined) - _MAX_LOGGED_QUARANTINES)


# --- KFP component -------------------------------------------------------------------------------


def ingest_component(
    source_uri: str,
    expected_sha256: str,
    min_images_per_class: int,
    dataset: Output[Dataset],
) -> NamedTuple("IngestOutputs", [("num_images", int), ("num_classes", int)]):
    """Turn a photo archive or folder sorted into class folders into an image Dataset."""
    import logging

    from components import ingest as step

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = step.IngestOptions(
        source_uri=source_uri,
        expected_sha256=expected_sha256 or None,
        min_images_per_class=min_images_per_class,
    )
    report = step.ingest(options, dataset.path)

    dataset.metadata["num_images"] = report.num_images
    dataset.metadata["num_classes"] = report.num_classes
    dataset.metadata["class_counts"] = report.class_counts
    dataset.metadata["num_quarantined"] = report.num_quarantined
    dataset.metadata["num_duplicates"] = report.num_duplicates
    dataset.metadata["num_skipped"] = report.num_skipped
    dataset.metadata["source_sha256"] = report.source_sha256 or ""
    logging.getLogger("ingest_component").info(
        "ingested %d images in %d classes from %s (%d quarantined, %d duplicates, %d skipped)",
        report.num_images, report.num_classes, source_uri, report.num_quarantined,
        report.num_duplicates, report.num_skipped,
    )
    return (report.num_images, report.num_classes)
