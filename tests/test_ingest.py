"""Tests of components.ingest: archives and folders of photos in, an image Dataset out.

Each test builds a small real archive with tarfile or zipfile and real images with Pillow.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import stat
import tarfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import artifacts, ingest, storage
from tests.conftest import DEV_ARCHIVE
from tests.test_images import png_header_only

CLASSES = ("daisy", "roses")


# --- Builders ------------------------------------------------------------------------------------


def photo(seed: int, *, size: tuple[int, int] = (12, 10), mode: str = "RGB", image_format: str = "JPEG",
          **params) -> bytes:
    """Encode a noise image that differs for every seed, so no two test photos are duplicates."""
    width, height = size
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "CMYK":
        image = Image.frombytes("CMYK", (width, height), pixels.tobytes())
    else:
        image = Image.fromarray(pixels.squeeze(axis=2) if channels == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def class_files(*, classes=CLASSES, per_class: int = 2, top: str = "flower_photos", first_seed: int = 0) -> dict:
    """Name -> bytes of per_class distinct JPEG photos in each class folder under top."""
    files = {}
    seed = first_seed
    for label in classes:
        for index in range(per_class):
            files[f"{top}/{label}/{label}_{index}.jpg" if top else f"{label}/{label}_{index}.jpg"] = photo(seed)
            seed += 1
    return files


def write_tar(path: Path, files: dict[str, bytes], *, mode: str = "w:gz",
              members: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    """Write files, then members that carry no data (links, FIFOs, folders), as a tar archive."""
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for member in members:
            archive.addfile(member)
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def member(name: str, kind: bytes, *, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def run(source: Path | str, output_dir: Path, **options) -> ingest.IngestReport:
    return ingest.ingest(ingest.IngestOptions(source_uri=str(source), **options), output_dir)


def stored_rows(output_dir: Path) -> dict[str, artifacts.ManifestRow]:
    """Manifest rows by source path."""
    return {row.source: row for row in artifacts.read_manifest(output_dir)}


def assert_nothing_finished(output_dir: Path) -> None:
    left = sorted(path.name for path in output_dir.iterdir()) if output_dir.exists() else []
    assert left == []


# --- Real data -----------------------------------------------------------------------------------


def test_mini_archive_counts_add_up(mini_archive, tmp_path):
    out = tmp_path / "out"

    report = run(mini_archive, out)

    assert report.source_kind == "tar"
    assert report.source_sha256 == hashlib.sha256(mini_archive.read_bytes()).hexdigest()
    assert artifacts.read_labels(out) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    dropped = {label: 0 for label in report.class_counts}
    for item in report.duplicates_within_class:
        dropped[item["label"]] += len(item["dropped"])
    assert report.class_counts == {label: 20 - dropped[label] for label in dropped}
    assert report.duplicates_across_classes == []
    assert report.num_images == 100 - report.num_duplicates
    assert report.skipped == [{"path": "flower_photos/LICENSE.txt", "reason": ingest.SKIP_TOP_LEVEL}]
    assert report.quarantined == []


def test_mini_archive_manifest_matches_files(mini_archive, tmp_path):
    out = tmp_path / "out"

    report = run(mini_archive, out)

    rows = artifacts.read_manifest(out)
    assert len(rows) == report.num_images
    for row in rows:
        stored = (out / row.path).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row.sha256, row.path
        with Image.open(out / row.path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (row.width, row.height))
    saved = json.loads((out / artifacts.INGEST_REPORT_FILE).read_text())
    assert saved["num_images"] == report.num_images
    assert ingest.read_report(out) == report


@pytest.mark.slow
def test_dev_archive_sunflower_duplicates(tmp_path):
    # The dev archive contains two byte-identical pairs of photos, both in sunflowers.
    report = run(DEV_ARCHIVE, tmp_path / "out")

    assert report.num_duplicates == 2
    assert [item["label"] for item in report.duplicates_within_class] == ["sunflowers", "sunflowers"]
    assert report.class_counts["sunflowers"] == 398
    assert report.num_images == 1998


# --- The GCS emulator ----------------------------------------------------------------------------


def test_default_uri_from_emulator(gcs_server, mini_archive, tmp_path):
    out = tmp_path / "out"

    report = ingest.ingest(ingest.IngestOptions(), out)

    assert report.source_uri == ingest.DEFAULT_SOURCE_URI
    assert report.source_sha256 == hashlib.sha256(mini_archive.read_bytes()).hexdigest()
    assert report.num_images == 100 - report.num_duplicates
    assert len(report.class_counts) == 5
    assert len(artifacts.read_manifest(out)) == report.num_images


def test_missing_object_names_uri(gcs_bucket, tmp_path):
    uri = f"gs://{gcs_bucket}/photos/missing.tgz"

    with pytest.raises(ingest.IngestError, match=f"source {uri} not found"):
        run(uri, tmp_path / "out")
    assert_nothing_finished(tmp_path / "out")


def test_wrong_sha256_from_emulator(gcs_server, mini_archive, tmp_path):
    wrong = "0" * 64
    actual = hashlib.sha256(mini_archive.read_bytes()).hexdigest()

    with pytest.raises(ingest.IngestError) as raised:
        run(ingest.DEFAULT_SOURCE_URI, tmp_path / "out", expected_sha256=wrong)
    assert wrong in str(raised.value)
    assert actual in str(raised.value)
    assert_nothing_finished(tmp_path / "out")


def test_remote_folder_source(gcs_server, gcs_bucket, tmp_path):
    bucket = gcs_server.client().bucket(gcs_bucket)
    for name, data in class_files(top="").items():
        bucket.blob(f"photos/{name}").upload_from_string(data)

    report = run(f"gs://{gcs_bucket}/photos", tmp_path / "out")

    assert report.source_kind == "folder"
    assert report.source_sha256 is None
    assert report.class_counts == {"daisy": 2, "roses": 2}


def test_http_archive_source(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    archive = write_tar(served / "a.tgz", class_files())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    # storage reads plain http:// only from hosts in PLAIN_HTTP_HOSTS; the server here has no TLS.
    monkeypatch.setattr(storage, "PLAIN_HTTP_HOSTS", frozenset({"127.0.0.1"}))
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/a.tgz"
        report = run(uri, tmp_path / "out", expected_sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    assert report.source_uri == uri
    assert report.class_counts == {"daisy": 2, "roses": 2}


# --- Unsafe entries ------------------------------------------------------------------------------


def test_traversal_entry_fails_run(tmp_path):
    files = class_files() | {"flower_photos/daisy/../../x.jpg": photo(99)}
    archive = write_tar(tmp_path / "a.tgz", files)

    with pytest.raises(ingest.UnsafeEntryError, match=r"entry 'flower_photos/daisy/\.\./\.\./x\.jpg' .* contains '\.\.'"):
        run(archive, tmp_path / "out")
    assert_nothing_finished(tmp_path / "out")
    assert not (tmp_path / "x.jpg").exists()


def test_absolute_entry_fails_run(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files() | {"/tmp/evil.jpg": photo(99)})

    with pytest.raises(ingest.UnsafeEntryError, match=r"entry '/tmp/evil\.jpg' .* absolute path"):
        run(archive, tmp_path / "out")


def test_backslash_traversal_fails_run(tmp_path):
    archive = write_zip(tmp_path / "a.zip", class_files() | {"flower_photos\\..\\..\\x.jpg": photo(99)})

    with pytest.raises(ingest.UnsafeEntryError, match=r"contains '\.\.'"):
        run(archive, tmp_path / "out")


def test_symlink_outside_fails_run(tmp_path):
    link = member("flower_photos/daisy/passwd.jpg", tarfile.SYMTYPE, linkname="../../../etc/passwd")
    archive = write_tar(tmp_path / "a.tgz", class_files(), members=(link,))

    with pytest.raises(ingest.UnsafeEntryError, match=r"passwd\.jpg' .* is a link to '\.\./\.\./\.\./etc/passwd', outside"):
        run(archive, tmp_path / "out")
    assert_nothing_finished(tmp_path / "out")


def test_zip_symlink_outside_fails_run(tmp_path):
    archive = write_zip(tmp_path / "a.zip", class_files())
    link = zipfile.ZipInfo("flower_photos/daisy/x.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "a") as writer:
        writer.writestr(link, "../../../etc/hostname")

    with pytest.raises(ingest.UnsafeEntryError, match=r"is a link to '\.\./\.\./\.\./etc/hostname', outside"):
        run(archive, tmp_path / "out")


def test_absolute_symlink_fails_run(tmp_path):
    link = member("flower_photos/daisy/x.jpg", tarfile.SYMTYPE, linkname="/etc/hostname")

    with pytest.raises(ingest.UnsafeEntryError, match="outside the archive"):
        run(write_tar(tmp_path / "a.tgz", class_files(), members=(link,)), tmp_path / "out")


def test_hardlink_outside_fails_run(tmp_path):
    link = member("flower_photos/daisy/x.jpg", tarfile.LNKTYPE, linkname="../outside.jpg")

    with pytest.raises(ingest.UnsafeEntryError, match="outside the archive"):
        run(write_tar(tmp_path / "a.tgz", class_files(), members=(link,)), tmp_path / "out")


def test_symlink_inside_skipped(tmp_path):
    link = member("flower_photos/daisy/alias.jpg", tarfile.SYMTYPE, linkname="daisy_0.jpg")
    out = tmp_path / "out"

    report = run(write_tar(tmp_path / "a.tgz", class_files(), members=(link,)), out)

    assert report.skipped == [{"path": "flower_photos/daisy/alias.jpg", "reason": ingest.SKIP_LINK}]
    assert report.class_counts == {"daisy": 2, "roses": 2}


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_special_file_fails_run(tmp_path, kind):
    special = member("flower_photos/daisy/device.jpg", kind)

    with pytest.raises(ingest.UnsafeEntryError, match=r"'flower_photos/daisy/device\.jpg' .* device file, FIFO"):
        run(write_tar(tmp_path / "a.tgz", class_files(), members=(special,)), tmp_path / "out")


# --- Photos of every kind ------------------------------------------------------------------------


def test_rgb_jpeg_stored_byte_for_byte(tmp_path):
    files = class_files()
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", files), out)

    row = stored_rows(out)["flower_photos/daisy/daisy_0.jpg"]
    assert row.path == "images/daisy/daisy_0.jpg"
    assert (out / row.path).read_bytes() == files["flower_photos/daisy/daisy_0.jpg"]


def test_corrupt_jpeg_quarantined(tmp_path):
    corrupt = photo(99)[:20] + b"\x00" * 200
    out = tmp_path / "out"

    report = run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/daisy/bad.jpg": corrupt}), out)

    assert [item["path"] for item in report.quarantined] == ["flower_photos/daisy/bad.jpg"]
    assert report.quarantined[0]["reason"].startswith("cannot decode")
    assert report.class_counts == {"daisy": 2, "roses": 2}
    assert "flower_photos/daisy/bad.jpg" not in stored_rows(out)


def test_truncated_png_quarantined(tmp_path):
    full = photo(99, size=(64, 64), image_format="PNG")
    files = class_files() | {"flower_photos/roses/cut.png": full[: len(full) // 2]}

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out")

    assert report.quarantined == [
        {"path": "flower_photos/roses/cut.png", "reason": report.quarantined[0]["reason"]}
    ]
    assert "truncated" in report.quarantined[0]["reason"]


def test_decompression_bomb_quarantined(tmp_path):
    bomb = png_header_only(40_000, 40_000)  # 1.6 gigapixels declared in under 1 KiB
    files = class_files() | {"flower_photos/daisy/bomb.png": bomb}

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out")

    assert len(bomb) < 1024
    assert [item["path"] for item in report.quarantined] == ["flower_photos/daisy/bomb.png"]
    assert report.quarantined[0]["reason"].startswith("decompression bomb")
    assert report.class_counts == {"daisy": 2, "roses": 2}


def test_pixel_limit_option_applies(tmp_path):
    files = class_files() | {"flower_photos/daisy/wide.png": photo(99, size=(200, 100), image_format="PNG")}

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out", max_image_pixels=10_000)

    assert [item["path"] for item in report.quarantined] == ["flower_photos/daisy/wide.png"]


def test_cmyk_jpeg_converted(tmp_path):
    files = class_files() | {"flower_photos/daisy/cmyk.jpg": photo(99, mode="CMYK")}
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", files), out)

    row = stored_rows(out)["flower_photos/daisy/cmyk.jpg"]
    with Image.open(out / row.path) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
    assert row.sha256 != hashlib.sha256(files["flower_photos/daisy/cmyk.jpg"]).hexdigest()


def test_rgba_png_on_white(tmp_path):
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (8, 0, 16, 16))  # right half opaque blue
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/daisy/alpha.png": buffer.getvalue()}), out)

    row = stored_rows(out)["flower_photos/daisy/alpha.png"]
    assert row.path == "images/daisy/alpha.jpg"
    with Image.open(out / row.path) as stored:
        left = stored.getpixel((2, 8))
        right = stored.getpixel((13, 8))
    assert min(left) >= 250  # transparent became white
    assert right[2] >= 230
    assert max(right[:2]) <= 25


def test_grayscale_jpeg_converted(tmp_path):
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/daisy/gray.jpg": photo(99, mode="L")}), out)

    with Image.open(out / stored_rows(out)["flower_photos/daisy/gray.jpg"].path) as stored:
        assert stored.mode == "RGB"


def test_16bit_png_converted(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(buffer, format="PNG")
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/daisy/deep.png": buffer.getvalue()}), out)

    with Image.open(out / stored_rows(out)["flower_photos/daisy/deep.png"].path) as stored:
        assert stored.mode == "RGB"
        assert min(stored.getpixel((3, 3))) >= 250  # full scale stays white, not clipped or dark


def test_palette_gif_converted(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([200, 0, 0] * 256)
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/roses/red.gif": buffer.getvalue()}), out)

    with Image.open(out / stored_rows(out)["flower_photos/roses/red.gif"].path) as stored:
        red, green, blue = stored.getpixel((4, 4))
    assert red >= 190
    assert max(green, blue) <= 15


def test_uppercase_extension_accepted(tmp_path):
    out = tmp_path / "out"

    report = run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/daisy/UPPER.JPG": photo(99)}), out)

    assert report.class_counts["daisy"] == 3
    assert stored_rows(out)["flower_photos/daisy/UPPER.JPG"].path == "images/daisy/UPPER.jpg"


def test_exif_rotation_swaps_dimensions(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = photo(99, size=(30, 10), exif=exif)
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", class_files() | {"flower_photos/daisy/turned.jpg": rotated}), out)

    row = stored_rows(out)["flower_photos/daisy/turned.jpg"]
    assert (row.width, row.height) == (10, 30)
    with Image.open(out / row.path) as stored:
        assert stored.size == (10, 30)
        assert stored.getexif().get(0x0112) is None


# --- Skipped files -------------------------------------------------------------------------------


def test_hidden_files_skipped(tmp_path):
    files = class_files() | {
        "flower_photos/daisy/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "flower_photos/daisy/._daisy_0.jpg": b"\x00\x05\x16\x07",
        "__MACOSX/flower_photos/._roses": b"\x00\x05\x16\x07",
    }

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out")

    assert report.skipped_counts == {ingest.SKIP_HIDDEN: 3}
    assert report.class_counts == {"daisy": 2, "roses": 2}


def test_top_level_license_skipped(tmp_path):
    files = class_files() | {"flower_photos/LICENSE.txt": b"CC-BY", "README": b"read me"}

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out")

    assert report.skipped == [
        {"path": "README", "reason": ingest.SKIP_TOP_LEVEL},
        {"path": "flower_photos/LICENSE.txt", "reason": ingest.SKIP_TOP_LEVEL},
    ]
    assert report.num_skipped == 2


def test_non_image_in_class_skipped(tmp_path):
    files = class_files() | {"flower_photos/roses/notes.txt": b"pruned in May"}

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out")

    assert report.skipped == [{"path": "flower_photos/roses/notes.txt", "reason": ingest.SKIP_NOT_IMAGE}]


def test_classes_at_root_accepted(tmp_path):
    files = class_files(top="") | {"LICENSE.txt": b"CC-BY"}

    report = run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out")

    assert report.class_counts == {"daisy": 2, "roses": 2}
    assert report.skipped_counts == {ingest.SKIP_TOP_LEVEL: 1}


def test_nested_folders_belong_to_class(tmp_path):
    files = class_files() | {"flower_photos/daisy/2019/summer/late.jpg": photo(99)}
    out = tmp_path / "out"

    report = run(write_tar(tmp_path / "a.tgz", files), out)

    assert report.class_counts == {"daisy": 3, "roses": 2}
    assert stored_rows(out)["flower_photos/daisy/2019/summer/late.jpg"].label == "daisy"


# --- Classes -------------------------------------------------------------------------------------


def test_empty_class_fails(tmp_path):
    folder = member("flower_photos/tulips/", tarfile.DIRTYPE)
    archive = write_tar(tmp_path / "a.tgz", class_files(), members=(folder,))

    with pytest.raises(ingest.IngestError, match=r"min_images_per_class=2: 'tulips' has 0;"):
        run(archive, tmp_path / "out")
    assert_nothing_finished(tmp_path / "out")


def test_single_class_fails(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files(classes=("daisy",), per_class=3))

    with pytest.raises(ingest.IngestError, match=r"has 1 class folder\(s\) \(daisy\), but a classifier needs at least 2"):
        run(archive, tmp_path / "out")


def test_class_below_minimum_fails(tmp_path):
    files = class_files(classes=("daisy",), per_class=3)
    files |= class_files(classes=("roses",), first_seed=50, per_class=1)

    with pytest.raises(ingest.IngestError, match=r"min_images_per_class=3: 'roses' has 1; .*lower min_images_per_class"):
        run(write_tar(tmp_path / "a.tgz", files), tmp_path / "out", min_images_per_class=3)


def test_duplicate_within_class_kept_once(tmp_path):
    files = class_files() | {"flower_photos/daisy/copy.jpg": photo(0)}  # same bytes as daisy_0.jpg
    out = tmp_path / "out"

    report = run(write_tar(tmp_path / "a.tgz", files), out)

    assert report.duplicates_within_class == [{
        "label": "daisy", "sha256": hashlib.sha256(photo(0)).hexdigest(),
        "kept": "flower_photos/daisy/copy.jpg", "dropped": ["flower_photos/daisy/daisy_0.jpg"],
    }]
    assert report.num_duplicates == 1
    assert report.class_counts == {"daisy": 2, "roses": 2}
    assert len(artifacts.read_manifest(out)) == 4


def test_duplicate_across_classes_dropped(tmp_path):
    files = class_files(per_class=3) | {"flower_photos/roses/daisy_twin.jpg": photo(0)}
    out = tmp_path / "out"

    report = run(write_tar(tmp_path / "a.tgz", files), out)

    assert report.duplicates_across_classes == [{
        "sha256": hashlib.sha256(photo(0)).hexdigest(), "labels": ["daisy", "roses"],
        "paths": ["flower_photos/daisy/daisy_0.jpg", "flower_photos/roses/daisy_twin.jpg"],
    }]
    assert report.num_duplicates == 2
    assert report.class_counts == {"daisy": 2, "roses": 3}
    assert "flower_photos/daisy/daisy_0.jpg" not in stored_rows(out)


def test_name_clash_gets_hash_suffix(tmp_path):
    png = photo(99, image_format="PNG")
    files = class_files() | {"flower_photos/daisy/daisy_0.png": png}
    out = tmp_path / "out"

    run(write_tar(tmp_path / "a.tgz", files), out)

    rows = stored_rows(out)
    assert rows["flower_photos/daisy/daisy_0.jpg"].path == "images/daisy/daisy_0.jpg"
    suffix = hashlib.sha256(png).hexdigest()[:12]
    assert rows["flower_photos/daisy/daisy_0.png"].path == f"images/daisy/daisy_0-{suffix}.jpg"


def test_same_archive_same_manifest(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files(per_class=3))

    run(archive, tmp_path / "first")
    run(archive, tmp_path / "second")

    first = (tmp_path / "first" / artifacts.MANIFEST_FILE).read_text()
    assert first == (tmp_path / "second" / artifacts.MANIFEST_FILE).read_text()


# --- Archive formats and limits ------------------------------------------------------------------


def test_zip_source(tmp_path):
    archive = write_zip(tmp_path / "photos.zip", class_files())

    report = run(archive, tmp_path / "out")

    assert report.source_kind == "zip"
    assert report.source_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert report.class_counts == {"daisy": 2, "roses": 2}


def test_plain_tar_source(tmp_path):
    archive = write_tar(tmp_path / "photos.tar", class_files(), mode="w")

    report = run(archive, tmp_path / "out")

    assert report.source_kind == "tar"
    assert report.source_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert report.num_images == 4


def test_type_from_content_not_name(tmp_path):
    archive = write_zip(tmp_path / "photos.tgz", class_files())

    assert run(archive, tmp_path / "out").source_kind == "zip"


def test_folder_source(tmp_path):
    root = write_folder(tmp_path / "photos", class_files() | {"flower_photos/LICENSE.txt": b"CC-BY"})
    (root / "flower_photos" / "roses" / "link.jpg").symlink_to("roses_0.jpg")

    report = run(root, tmp_path / "out")

    assert report.source_kind == "folder"
    assert report.class_counts == {"daisy": 2, "roses": 2}
    assert report.skipped_counts == {ingest.SKIP_LINK: 1, ingest.SKIP_TOP_LEVEL: 1}


def test_folder_symlink_outside_fails(tmp_path):
    root = write_folder(tmp_path / "photos", class_files())
    (tmp_path / "secret.jpg").write_bytes(photo(99))
    (root / "flower_photos" / "daisy" / "secret.jpg").symlink_to(tmp_path / "secret.jpg")

    with pytest.raises(ingest.UnsafeEntryError, match="outside the archive"):
        run(root, tmp_path / "out")


def test_file_uri_source(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files())

    assert run(archive.as_uri(), tmp_path / "out").num_images == 4


def test_truncated_tgz_leaves_nothing(tmp_path):
    files = class_files(per_class=4)
    for index in range(3):
        files[f"flower_photos/daisy/big_{index}.png"] = photo(200 + index, size=(64, 64), image_format="PNG")
    full = write_tar(tmp_path / "full.tgz", files).read_bytes()
    archive = tmp_path / "cut.tgz"
    archive.write_bytes(full[: len(full) * 2 // 3])
    out = tmp_path / "out"

    with pytest.raises(ingest.IngestError, match=r"source .*cut\.tgz is truncated or corrupt"):
        run(archive, out)
    assert_nothing_finished(out)


def test_not_an_archive_fails(tmp_path):
    source = tmp_path / "photos.tgz"
    source.write_bytes(b"just some text, no archive here" * 30)

    with pytest.raises(ingest.IngestError, match=r"is not a \.tar, \.tar\.gz/\.tgz, .* or \.zip archive"):
        run(source, tmp_path / "out")


def test_missing_local_source_fails(tmp_path):
    with pytest.raises(ingest.IngestError, match=r"source .*nowhere\.tgz not found"):
        run(tmp_path / "nowhere.tgz", tmp_path / "out")


def test_local_wrong_sha256_names_both(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files())
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()

    with pytest.raises(ingest.IngestError, match=f"expected {'a' * 64}, got {actual}"):
        run(archive, tmp_path / "out", expected_sha256="a" * 64)


def test_local_right_sha256_accepted(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files())
    expected = hashlib.sha256(archive.read_bytes()).hexdigest().upper()

    assert run(archive, tmp_path / "out", expected_sha256=expected).num_images == 4


def test_entry_limit_exceeded_fails(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files(per_class=5))

    with pytest.raises(ingest.IngestError, match=r"more than max_entries=6 files, folders and links; raise max_entries"):
        run(archive, tmp_path / "out", max_entries=6)
    assert_nothing_finished(tmp_path / "out")


def test_size_limit_exceeded_fails(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", class_files())

    with pytest.raises(ingest.IngestError, match=r"more than max_total_bytes=1000 bytes; raise max_total_bytes"):
        run(archive, tmp_path / "out", max_total_bytes=1000)


def test_memory_bounded_on_large_archive(tmp_path):
    # 40 photos of 384 x 384 noise pixels, about 7 MB of JPEG in all. A reader that kept every
    # photo's bytes in memory would peak above that, while streaming keeps one photo and one
    # read buffer. tracemalloc counts only Python's allocations, such as those bytes, and not
    # Pillow's pixel buffers, which decode_image bounds with max_pixels instead.
    files = {
        f"flower_photos/{CLASSES[index % 2]}/{index}.jpg": photo(index, size=(384, 384), quality=95)
        for index in range(40)
    }
    archive = write_tar(tmp_path / "a.tar", files, mode="w")
    archive_bytes = archive.stat().st_size

    tracemalloc.start()
    try:
        report = run(archive, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert report.num_images == 40
    assert archive_bytes > 6_000_000
    assert peak < archive_bytes / 3


# --- Options and output folder -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source_uri": ""}, r"source_uri='' is empty"),
        ({"source_uri": "ftp://host/a.tgz"}, r"unsupported URI scheme 'ftp'"),
        ({"expected_sha256": "abc"}, r"expected_sha256='abc' is invalid: pass 64 hex digits"),
        ({"min_images_per_class": 0}, r"min_images_per_class=0 is invalid"),
        ({"max_entries": -1}, r"max_entries=-1 is invalid"),
        ({"max_total_bytes": 1.5}, r"max_total_bytes=1.5 is invalid"),
    ],
)
def test_invalid_options_rejected(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        ingest.ingest(ingest.IngestOptions(**options), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sha256_with_folder_rejected(tmp_path):
    root = write_folder(tmp_path / "photos", class_files())

    with pytest.raises(ValueError, match=r"expected_sha256 is set, but .*photos is a folder"):
        run(root, tmp_path / "out", expected_sha256="a" * 64)


def test_non_empty_output_rejected(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous run")

    with pytest.raises(ValueError, match=r"output folder .*out exists and is not an empty folder"):
        run(write_tar(tmp_path / "a.tgz", class_files()), out)
    assert (out / "old.txt").exists()


# --- KFP component -------------------------------------------------------------------------------


def test_component_local_runner(tmp_path):
    from kfp import dsl, local

    archive = write_tar(tmp_path / "a.tgz", class_files(per_class=3) | {"flower_photos/LICENSE.txt": b"CC-BY"})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    component = dsl.component(ingest.ingest_component, base_image="python:3.11", install_kfp_package=False)

    task = component(source_uri=str(archive), expected_sha256="", min_images_per_class=2)

    assert task.outputs["num_images"] == 6
    assert task.outputs["num_classes"] == 2
    dataset = task.outputs["dataset"]
    assert dataset.metadata["class_counts"] == {"daisy": 3, "roses": 3}
    assert dataset.metadata["num_skipped"] == 1
    assert dataset.metadata["source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert len(artifacts.read_manifest(dataset.path)) == 6
