"""Calibration images for full-integer INT8: the user's own pictures, preprocessed exactly as ``predict()`` does.

A calibration source is a Roboflow COCO dataset folder (its ``train/`` images, else ``valid/``), a YOLO dataset folder
(its train images, else valid), one split folder (a YOLO one: its ``images/``), or any folder of images. The images
used are spread evenly over the sorted list (the same ones on every run); files that cannot be read are skipped,
counted and logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rfdetr.data.image_io import read_rgb
from rfdetr.deploy.runtime.processing import load_images, preprocess

__all__ = ["IMAGE_SUFFIXES", "calibration_arrays", "calibration_files"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def calibration_files(source: str | os.PathLike[str], count: int) -> list[Path]:
    """Up to ``count`` image files of ``source``, spread evenly over its sorted images.

    Raises:
        FileNotFoundError: ``source`` is not a folder.
        ValueError: ``count`` < 1, or the folder holds no image files.
    """
    if count < 1:
        raise ValueError(f"--calibration_images must be >= 1, got {count}")
    root = Path(source).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"calibration folder {os.fspath(source)!r} does not exist (pass a dataset folder or a "
                                "folder of images)")
    folder, files = root, []
    for split in ("train", "valid"):
        if (root / split / "_annotations.coco.json").is_file():
            folder = root / split
            break
    else:
        yolo = _yolo_images(root)
        if yolo is not None:
            folder, files = yolo
    if not files and (folder / "images").is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES
                                                               for p in folder.iterdir()):
        folder = folder / "images"  # a YOLO split folder (images/ + labels/)
    files = files or sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"calibration folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); pass a "
                         "dataset folder or a folder of the images the model will see")
    if len(files) <= count:
        return files
    picks = np.linspace(0, len(files) - 1, count).round().astype(int)
    return [files[i] for i in sorted(set(picks.tolist()))]


def _yolo_images(root: Path) -> tuple[Path, list[Path]] | None:
    """The train (else valid) images folder of a YOLO dataset at ``root`` and its images; None if ``root`` is not
    one, or has neither split."""
    from rfdetr.data.yolo import find_data_yaml, find_split, list_images, read_data_yaml

    if find_data_yaml(root) is None:
        return None
    config = read_data_yaml(root)
    for split in ("train", "valid"):
        found = find_split(root, split, config)
        if found is not None:
            return found.images_dir, list_images(found.images_dir)
    return None


def calibration_arrays(files: Sequence[Path], resolution: int, mean: Sequence[float],
                       std: Sequence[float]) -> list[np.ndarray]:
    """The files as network inputs: float32 [1, 3, R, R] each, resized and normalised as ``predict()`` does.

    Raises:
        ValueError: none of the files could be read as an image.
    """
    arrays, skipped = [], []
    for path in files:
        try:
            image = np.asarray(read_rgb(path))
        except ValueError as err:
            skipped.append(path)
            logger.warning("calibration: skipping %s: %s", path, err)
            continue
        tensors, _ = load_images(image)
        arrays.append(preprocess(tensors[0], resolution, "cpu", mean, std).numpy().astype(np.float32))
    if skipped:
        logger.warning("calibration: %d of %d files could not be read and were skipped", len(skipped), len(files))
    if not arrays:
        folder = files[0].parent if files else "the calibration folder"
        raise ValueError(f"none of the {len(files)} calibration files in {folder} could be read as an image")
    return arrays
