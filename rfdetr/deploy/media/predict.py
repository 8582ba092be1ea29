"""Predict on image files: a rendered picture per image and one COCO predictions JSON for the run.

For every image :func:`predict_images` writes a picture with the boxes, ``name score`` labels and translucent masks
(:func:`rfdetr.deploy.media.visualize.render_detections`) to the output folder (PNG sources as PNG, the rest as JPEG,
named after the source), and at the end one COCO-format ``predictions.json``: ``images`` (id, file_name, width,
height, path), ``categories`` and ``annotations`` with ``image_id``, ``category_id``, ``bbox`` (x, y, w, h in pixels),
``score``, ``area`` and, for models with masks, ``segmentation`` as compressed RLE. pycocotools reads it with
``COCO(path)``, and its ``annotations`` list is a valid ``loadRes`` result list. Category ids are the training
dataset's when the model records them (checkpoints trained here do; ``info.category_ids`` says ``dataset``), so the
dataset's own annotation file scores the predictions; otherwise they are the class indices (``class_index``: for
rfdetr's COCO checkpoints those are COCO's ids). Files that cannot be read as images are skipped, counted and logged.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from rfdetr.data.image_io import read_rgb
from rfdetr.data.masks import encode_masks
from rfdetr.deploy.media.visualize import render_detections
from rfdetr.deploy.runtime.detections import Detections
from rfdetr.deploy.runtime.timing import StageTimer
from rfdetr.util.run_dir import write_bytes_atomic, write_json_atomic

__all__ = ["IMAGE_SUFFIXES", "PredictSummary", "collect_images", "detections_to_coco", "predict_images"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PREDICTIONS_FILE = "predictions.json"


class Predictor(Protocol):
    """What the command needs from a model: :class:`rfdetr.detr.RFDETR` and
    :class:`rfdetr.deploy.runtime.runner.OnnxModel`."""

    class_names: list[str]
    category_ids: list[int] | None

    def predict(
        self, images: Any, threshold: float = 0.5, timer: StageTimer | None = None
    ) -> Detections | list[Detections]: ...


@dataclass
class PredictSummary:
    """What a run wrote.

    Attributes:
        pictures: rendered pictures, one per readable image.
        predictions: the COCO JSON file.
        num_images: images predicted.
        num_detections: detections above the threshold over all images.
        skipped: files that could not be read as images.
    """

    pictures: list[Path] = field(default_factory=list)
    predictions: Path | None = None
    num_images: int = 0
    num_detections: int = 0
    skipped: list[Path] = field(default_factory=list)


def collect_images(source: str | os.PathLike[str]) -> list[Path]:
    """The files a ``--source`` names, sorted.

    Args:
        source: an image file, a folder (its files with an image suffix, not recursive), or a glob pattern (every
            matching file; ``**`` recurses).

    Raises:
        FileNotFoundError: nothing exists at ``source`` and it matches no file.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():
        return [path]
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        files = [p for p in matches if p.is_file()]
        if files:
            return files
    raise FileNotFoundError(f"--source {text!r}: no such image file or folder, and no file matches it as a glob")


def detections_to_coco(detections: Detections, image_id: int, first_id: int = 1,
                       category_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """COCO result entries of one image.

    Args:
        detections: boxes in pixels; ``mask`` [N, H, W] bool when present.
        image_id: the image's id.
        first_id: annotation id of the first entry (ids are consecutive).
        category_ids: the dataset's category id of each class; ``None``: the class index is the id.

    Returns:
        One dict per detection: ``id``, ``image_id``, ``category_id`` (the class id), ``bbox`` [x, y, w, h],
        ``score``, ``area``, ``iscrowd`` 0 and, with masks, ``segmentation`` (RLE, ``counts`` a string).
    """
    entries = []
    rles = encode_masks(detections.mask) if detections.mask is not None and len(detections) else []
    for i in range(len(detections)):
        x0, y0, x1, y1 = (float(v) for v in detections.xyxy[i])
        entry: dict[str, Any] = {
            "id": first_id + i,
            "image_id": image_id,
            "category_id": category_id(int(detections.class_id[i]), category_ids),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": float(detections.confidence[i]),
            "area": round((x1 - x0) * (y1 - y0), 2),
            "iscrowd": 0,
        }
        if detections.mask is not None:
            entry["segmentation"] = rles[i]
            entry["area"] = int(detections.mask[i].sum())
        entries.append(entry)
    return entries


def category_id(class_id: int, category_ids: list[int] | None) -> int:
    """The dataset's category id of a class; the class index where the model records no ids.

    A class beyond the recorded ones (the spare logit no dataset class owns) gets an id above all of the dataset's,
    so that it never reads as one of the dataset's classes.
    """
    if category_ids is None:
        return class_id
    if class_id < len(category_ids):
        return category_ids[class_id]
    return max(category_ids) + 1 + class_id - len(category_ids)


def _picture_path(output: Path, source: Path, used: set[str]) -> Path:
    """``output/<stem>.png|jpg``, with ``_1``, ``_2`` ... appended when two sources share a stem."""
    suffix = ".png" if source.suffix.lower() == ".png" else ".jpg"
    name, n = source.stem + suffix, 0
    while name in used:
        n += 1
        name = f"{source.stem}_{n}{suffix}"
    used.add(name)
    return output / name


def predict_images(
    model: Predictor, paths: list[Path], output: str | os.PathLike[str], threshold: float = 0.5, progress: bool = True
) -> PredictSummary:
    """Predict every image of ``paths``, write its rendered picture and one COCO predictions JSON.

    Args:
        model: an :class:`rfdetr.detr.RFDETR` or :class:`rfdetr.deploy.runtime.runner.OnnxModel`.
        paths: image files (see :func:`collect_images`); unreadable ones are skipped and counted.
        output: folder for the pictures and ``predictions.json`` (created).
        threshold: keep detections with score > threshold.
        progress: show a progress bar.

    Returns:
        A :class:`PredictSummary`.

    Raises:
        ValueError: none of ``paths`` could be read as an image.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    used: set[str] = set()
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress):
        try:
            image = np.asarray(read_rgb(path))  # RGB uint8 [H, W, 3], EXIF orientation applied
        except ValueError as err:
            logger.warning("skipping %s: %s", path, err)
            summary.skipped.append(path)
            continue
        detections = model.predict(image, threshold=threshold)
        assert isinstance(detections, Detections)
        image_id = len(images) + 1
        picture = _picture_path(out, path, used)
        ok, encoded = cv2.imencode(
            picture.suffix, cv2.cvtColor(render_detections(image, detections), cv2.COLOR_RGB2BGR)
        )
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the picture of {path} as {picture.suffix}")
        write_bytes_atomic(picture, encoded.tobytes())
        summary.pictures.append(picture)
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height, "path": str(path)})
        annotations += detections_to_coco(detections, image_id, first_id=len(annotations) + 1,
                                          category_ids=getattr(model, "category_ids", None))
    if summary.skipped:
        logger.warning("%d of %d files could not be read as images and were skipped", len(summary.skipped), len(paths))
    if not images:
        raise ValueError(f"none of the {len(paths)} source files could be read as an image")
    ids = getattr(model, "category_ids", None)
    categories = [
        {"id": category_id(i, ids), "name": name, "supercategory": "none"}
        for i, name in enumerate(model.class_names) if name != "N/A"
    ]
    coco = {
        "info": {"description": "rfdetr.predict", "threshold": threshold,
                 # Which ids ``category_id`` holds: the training dataset's, or the model's class indices.
                 "category_ids": "dataset" if ids is not None else "class_index"},
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }
    summary.predictions = write_json_atomic(out / PREDICTIONS_FILE, coco)
    summary.num_images, summary.num_detections = len(images), len(annotations)
    return summary
