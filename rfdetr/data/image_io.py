"""Reading images the same way everywhere (validation, training, prediction)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5..8 rotate by 90 or 270 degrees, which swaps width and height.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112

# What PIL raises for files that are missing, truncated, not an image, or too large to trust.
IMAGE_ERRORS: tuple[type[Exception], ...] = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def read_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully, apply its EXIF orientation and convert to RGB.

    Raises:
        ValueError: the file is missing or cannot be decoded; the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except IMAGE_ERRORS as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image after its EXIF orientation is applied, without decoding pixels."""
    width, height = img.size
    if img.getexif().get(_EXIF_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height
