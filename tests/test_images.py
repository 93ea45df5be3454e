"""Tests of components.images: decoding photos of every accepted kind to 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import images


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """Build a PNG that declares width x height pixels but contains the data of one row only."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = zlib.compress(b"\x00" * (width + 1))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def test_is_image_name_any_case():
    assert images.is_image_name("a.JPG")
    assert images.is_image_name("a.Jpeg")
    assert images.is_image_name("a.webp")
    assert not images.is_image_name("LICENSE.txt")
    assert not images.is_image_name("a.tiff")


def test_rgb_jpeg_kept_unchanged(tmp_path):
    path = save(Image.new("RGB", (16, 8), (10, 200, 30)), tmp_path / "a.jpg", quality=90)

    decoded = images.decode_image(path)

    assert not decoded.needs_reencode
    assert decoded.source_format == "JPEG"
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (16, 8)


def test_jpeg_orientation_one_kept_unchanged(tmp_path):
    path = save(Image.new("RGB", (16, 8)), tmp_path / "a.jpg", exif=exif_with_orientation(1))

    assert not images.decode_image(path).needs_reencode


def test_exif_rotated_jpeg_swaps_dimensions(tmp_path):
    # EXIF orientation 6: a viewer rotates the stored pixels 90 degrees clockwise to show the
    # photo upright.
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    path = save(image, tmp_path / "a.jpg", exif=exif_with_orientation(6))

    decoded = images.decode_image(path)

    assert decoded.needs_reencode
    assert decoded.image.size == (20, 40)
    red, _, blue = decoded.image.getpixel((10, 5))  # the stored left half is now on top
    assert red > 200
    assert blue < 60


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "a.jpg")  # pure red ink

    decoded = images.decode_image(path)

    assert decoded.source_mode == "CMYK"
    assert decoded.needs_reencode
    assert decoded.image.mode == "RGB"
    red, green, blue = decoded.image.getpixel((4, 4))
    assert red > 200
    assert green < 60
    assert blue < 60


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    path = save(Image.new("L", (8, 8), 100), tmp_path / "a.jpg")

    decoded = images.decode_image(path)

    assert decoded.needs_reencode
    assert decoded.image.mode == "RGB"
    red, green, blue = decoded.image.getpixel((4, 4))
    assert red == green == blue
    assert abs(red - 100) <= 2


def test_rgba_png_composited_on_white(tmp_path):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent
    image.putpixel((1, 1), (255, 0, 0, 255))  # one opaque red pixel
    image.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    path = save(image, tmp_path / "a.png")

    rgb = images.decode_image(path).image

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 1)) == (255, 0, 0)
    assert rgb.getpixel((2, 2)) == (127, 127, 127)


def test_la_png_composited_on_white(tmp_path):
    image = Image.new("LA", (4, 4), (0, 0))
    path = save(image, tmp_path / "a.png")

    assert images.decode_image(path).image.getpixel((0, 0)) == (255, 255, 255)


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "a.png")

    decoded = images.decode_image(path)

    assert decoded.source_mode.startswith("I")
    pixels = np.asarray(decoded.image)
    assert pixels.dtype == np.uint8
    assert pixels[0, :, 0].tolist() == [0, 128, 255, 3]


def test_palette_gif_becomes_rgb(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 128, 0] + [255, 255, 0] * 255)
    path = save(image, tmp_path / "a.gif")

    decoded = images.decode_image(path)

    assert decoded.source_format == "GIF"
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((0, 0)) == (0, 128, 0)


def test_palette_png_transparency_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30, 200, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((1, 1), 1)
    path = save(image, tmp_path / "a.png", transparency=0)

    rgb = images.decode_image(path).image

    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 1)) == (200, 0, 0)


@pytest.mark.parametrize("suffix", [".bmp", ".webp"])
def test_bmp_and_webp_decode(tmp_path, suffix):
    path = save(Image.new("RGB", (8, 6), (0, 0, 200)), tmp_path / f"a{suffix}", lossless=True)

    decoded = images.decode_image(path)

    assert decoded.needs_reencode
    assert decoded.image.size == (8, 6)
    assert decoded.image.getpixel((0, 0)) == (0, 0, 200)


def test_truncated_png_rejected(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = (tmp_path / "full.png")
    Image.fromarray(noise).save(data)
    path = tmp_path / "a.png"
    path.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    with pytest.raises(images.ImageDecodeError, match=r"cannot decode: .*truncated"):
        images.decode_image(path)


def test_corrupt_jpeg_rejected(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a photo" * 20)

    with pytest.raises(images.ImageDecodeError, match=r"cannot decode: \w+Error"):
        images.decode_image(path)


def test_tiff_rejected(tmp_path):
    path = save(Image.new("RGB", (4, 4)), tmp_path / "a.jpg", format="TIFF")

    with pytest.raises(images.ImageDecodeError, match="cannot decode"):
        images.decode_image(path)


def test_decompression_bomb_header_rejected(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(50_000, 50_000))  # 2.5 gigapixels declared, under 1 KiB

    with pytest.raises(images.ImageDecodeError, match=r"decompression bomb: .*2500000000 pixels"):
        images.decode_image(path)
    assert path.stat().st_size < 1024


def test_pixel_limit_warning_range_rejected(tmp_path):
    # 64 * 64 = 4096 pixels is over a limit of 3000 but under twice it, where Pillow only warns.
    path = save(Image.new("RGB", (64, 64)), tmp_path / "a.png")

    with pytest.raises(images.ImageDecodeError, match="max_image_pixels"):
        images.decode_image(path, max_pixels=3000)


def test_pixel_limit_restored_after_decode(tmp_path):
    path = save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    before = Image.MAX_IMAGE_PIXELS

    images.decode_image(path, max_pixels=20)

    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_zero_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"max_pixels=0 is invalid"):
        images.decode_image(tmp_path / "a.png", max_pixels=0)


def test_encode_jpeg_roundtrip():
    data = images.encode_jpeg(Image.new("RGB", (8, 8), (0, 200, 0)))

    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "JPEG"
        assert decoded.mode == "RGB"
        assert "exif" not in decoded.info
        green = decoded.getpixel((4, 4))[1]
    assert abs(green - 200) <= 2


def test_encode_jpeg_rejects_rgba():
    with pytest.raises(ValueError, match=r"mode 'RGBA' is invalid: convert it with to_rgb"):
        images.encode_jpeg(Image.new("RGBA", (2, 2)))
