"""Decode photos with Pillow and turn each into an 8-bit RGB image ready to store as JPEG.

Accepted formats are JPEG (with MPO, the multi-picture JPEG that many cameras write), PNG, GIF,
BMP and WebP. Every image is decoded in full, so a truncated or corrupt file raises here instead
of in the middle of training. Grayscale, palette, CMYK, 16-bit and images with an alpha channel
(composited on white) become 8-bit RGB, and the EXIF orientation is applied, because TensorFlow's
decoders ignore EXIF and would feed the model a rotated photo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

# Lower-case file name extensions of the accepted formats; a name matches in any case (.JPG).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
# Pillow format names that decode_image opens; any other format is rejected before decoding.
# Pillow's JPEG opener also returns MPO files (format "MPO"), so MPO needs no entry here.
PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
JPEG_QUALITY = 95
# 100 megapixels: above the photos of most cameras and phones (an estimate: most write 50
# megapixels or fewer), so real photos pass while a decompression bomb is stopped before its
# pixels are allocated.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientations 2 to 8 flip or rotate the stored pixels; 1 and invalid values leave them as is.
_ROTATING_ORIENTATIONS = frozenset(range(2, 9))


class ImageDecodeError(ValueError):
    """A file that is not a complete image in an accepted format, or one over the pixel limit."""


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """A photo decoded to 8-bit RGB with its EXIF orientation applied."""

    image: Image.Image
    source_format: str  # Pillow's format name, e.g. "JPEG" or "PNG"
    source_mode: str  # Pillow's mode of the file as decoded, e.g. "RGB", "CMYK" or "I;16"
    # False only for an 8-bit RGB JPEG with no EXIF rotation to apply: its bytes can be stored
    # unchanged. Every other image has to be encoded again as JPEG.
    needs_reencode: bool


def is_image_name(name: str) -> bool:
    """Tell whether a file name has the extension of an accepted image format, in any case."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def decode_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedImage:
    """Decode the image file at path in full and convert it to 8-bit RGB.

    Raises ImageDecodeError for a file in another format, a corrupt or truncated file, and an
    image with more than max_pixels pixels (a decompression bomb), with the reason in the message.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels} is invalid: pass a positive pixel count")
    try:
        with _pixel_limit(max_pixels), Image.open(path, formats=PILLOW_FORMATS) as image:
            image.load()
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            rgb = to_rgb(ImageOps.exif_transpose(image))
            source_format, source_mode = image.format, image.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(
            f"decompression bomb: {error} If the photo is genuine, raise the pixel limit "
            "(max_image_pixels of the ingest step)."
        ) from error
    except Exception as error:
        # Pillow's plugins raise many exception types on malformed data (OSError, SyntaxError,
        # ValueError, struct.error, EOFError and more). Each means the file is unusable, so the
        # caller records the reason and goes on with the next photo.
        raise ImageDecodeError(f"cannot decode: {type(error).__name__}: {error}") from error

    needs_reencode = not (
        source_format == "JPEG" and source_mode == "RGB" and orientation not in _ROTATING_ORIENTATIONS
    )
    return DecodedImage(
        image=rgb, source_format=source_format, source_mode=source_mode, needs_reencode=needs_reencode
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB, compositing alpha on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I"):
        return _high_bit_depth_to_rgb(image)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    # "1", "L", "P", "CMYK", "YCbCr", "LAB" and "HSV" have a direct conversion to RGB.
    return image.convert("RGB")


def encode_jpeg(image: Image.Image) -> bytes:
    """Encode an RGB image as a baseline JPEG at JPEG_QUALITY, with no EXIF data."""
    if image.mode != "RGB":
        raise ValueError(f"image mode {image.mode!r} is invalid: convert it with to_rgb first")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    # Of the accepted formats only 16-bit grayscale PNG decodes to an "I" mode. Pillow's own
    # conversion to "L" clips values above 255 instead of scaling them, which turns most of a
    # 16-bit photo white, so scale 0..65535 to 0..255 here.
    values = np.asarray(image).astype(np.int64)
    gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make Pillow's own decompression bomb check use max_pixels, with its warning as an error.

    Pillow checks the size in the header when it opens a file, before it allocates anything,
    but its limit is the process-wide Image.MAX_IMAGE_PIXELS, so it is set here for the call.
    """
    # NOTE: Image.MAX_IMAGE_PIXELS is process-wide, so two threads that decode with different
    # limits at the same time can see each other's limit. The ingest step decodes in one thread.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
