"""Reading images the same way everywhere (validation, training, prediction)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5..8 rotate by 90 or 270 degrees, which swaps width and height.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112

# What PIL raises for files that are missing, truncated, not an image, or too large to trust.
IMAGE_ERRORS: tuple[type[Exception], ...] = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


class UnreadableImageError(ValueError):
    """An image file is missing or cannot be decoded; the message names the file."""


def read_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully, apply its EXIF orientation and convert to RGB.

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded; the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except IMAGE_ERRORS as e:
        raise UnreadableImageError(f"cannot read image {path}: {e}") from e


def check_image(path: str | Path) -> str | None:
    """Whether training will be able to read ``path``: None if so, else the reason (PIL's message).

    Cheaper than :func:`read_rgb` yet reads every byte that decoding needs, so truncated and corrupt files are found:
    a JPEG is decoded in draft mode (all entropy-coded data, the inverse DCT at 1/8 scale: ~0.6 ms for 640x640
    against 1.7 ms for a full decode, measured on strawberry); a PNG has every chunk's CRC checked without inflating
    it (``verify``); other formats are decoded fully.
    """
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                img.verify()
            else:
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except (*IMAGE_ERRORS, SyntaxError) as e:  # PIL raises SyntaxError for some broken PNG chunks
        return str(e) or type(e).__name__
    return None


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image after its EXIF orientation is applied, without decoding pixels."""
    width, height = img.size
    if img.getexif().get(_EXIF_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height
