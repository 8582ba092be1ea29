"""Reading a dataset split (Roboflow-layout COCO, or YOLO via :mod:`rfdetr.data.yolo`) into clean per-image records:
the label map, clipping, dropping, counting.

Kept apart from the dataset class so that evaluation (which needs the raw JSON) and the dataset share one reader,
and so that every rule about which annotation becomes a target lives in one short file:

- labels are contiguous ``0..K-1`` in category-id order; an unused placeholder category (supercategory ``"none"``,
  Roboflow's id 0) is not a class;
- crowd annotations are left out unless asked for; boxes are clipped to the image; zero-area boxes are dropped;
  with masks, annotations without a segmentation are dropped (an empty mask would be a wrong target);
- structural errors (unknown image or category, malformed bbox or segmentation, missing image file) raise, naming
  the annotation file and the annotation or image id.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rfdetr.data.masks import mask_kind
from rfdetr.data.synthetic import ANNOTATION_FILE
from rfdetr.data.yolo import canonical_split, find_split, is_yolo_layout, read_data_yaml, yolo_split_to_coco

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# Boxes may poke out of their image by rounding noise (Roboflow writes 3 decimals): clipping those is routine (an
# INFO line); more than this is a data error (validate_setup.py fails it, training warns).
BBOX_TOLERANCE_PX = 1.0
# The supercategory Roboflow gives its synthetic project-level category.
PLACEHOLDER_SUPERCATEGORY = "none"


def annotation_path(root: str | Path, split: str) -> Path:
    """``<root>/<split>/_annotations.coco.json``."""
    return Path(root) / split / ANNOTATION_FILE


def dataset_format(root: str | Path) -> str | None:
    """``"coco"`` when ``root`` has a ``train/`` or ``valid/`` COCO JSON, ``"yolo"`` when it looks like a YOLO dataset
    (a data.yaml or an images/labels layout), else None."""
    root = Path(root)
    if any(annotation_path(root, s).is_file() for s in SPLITS):
        return "coco"
    return "yolo" if root.is_dir() and is_yolo_layout(root) else None


def split_exists(root: str | Path, split: str) -> bool:
    """Whether the dataset at ``root`` (either format) has ``split`` (``val`` = ``valid``)."""
    split = canonical_split(split)
    if annotation_path(root, split).is_file():
        return True
    if dataset_format(root) != "yolo":
        return False
    try:
        return find_split(root, split, read_data_yaml(root)) is not None
    except ValueError:
        return False


def check_dataset(root: str | Path, splits: tuple[str, ...] = ("train", "valid")) -> Path:
    """``root`` if it is a COCO or YOLO dataset with ``splits``, else a one-line error with the fix.

    Raises:
        FileNotFoundError: not a dataset, or a split is missing.
        ValueError: a YOLO dataset whose data.yaml is missing or malformed.
    """
    root = Path(root)
    kind = dataset_format(root)
    if kind == "yolo":
        read_data_yaml(root)  # names problems first
        missing = [s for s in splits if not split_exists(root, s)]
        if missing:
            raise FileNotFoundError(f"YOLO dataset {root}: no {' or '.join(missing)} split -> expected "
                                    f"{root}/<split>/images + labels (Roboflow) or {root}/images/<split> + "
                                    "labels/<split> (Ultralytics), or entries in data.yaml")
        return root
    missing = [s for s in splits if not annotation_path(root, s).is_file()]
    if missing:
        raise FileNotFoundError(f"dataset {root}: no {', '.join(f'{s}/{ANNOTATION_FILE}' for s in missing)}. Pass "
                                "--dataset DIR with a Roboflow 'COCO' export or a YOLO dataset (data.yaml, images/, "
                                "labels/); check it with validate_setup.py")
    return root


def load_split(root: str | Path, split: str) -> tuple[Path, dict[str, Any]]:
    """The COCO dict of ``split`` of the dataset at ``root``, and the file (COCO) or labels folder (YOLO) it came from.

    COCO: ``<root>/<split>/_annotations.coco.json`` parsed by :func:`load_coco_json`. YOLO (no COCO JSON, a YOLO
    layout): converted in memory by :func:`rfdetr.data.yolo.yolo_split_to_coco`. ``val`` and ``valid`` name one split.

    Raises:
        FileNotFoundError / ValueError: missing or malformed data; the message names the file and the fix.
    """
    root = Path(root)
    path = annotation_path(root, canonical_split(split))
    if not path.is_file() and annotation_path(root, split).is_file():
        path = annotation_path(root, split)
    if not path.is_file() and dataset_format(root) == "yolo":
        return yolo_split_to_coco(root, split)
    return path, load_coco_json(path)


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Parse a COCO annotation file and check its top-level structure and categories.

    Raises:
        FileNotFoundError / ValueError: missing file, bad JSON, missing ``images``/``annotations``/``categories``, or
            a category without an integer id and a string name; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in
                                             ("images", "annotations", "categories")):
        raise ValueError(f"{path}: expected a COCO dict with 'images', 'annotations' and 'categories' lists")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise ValueError(f"{path}: category {str(cat)[:80]} needs an integer 'id' and a string 'name'")
    return data


def _used_category_ids(data: dict[str, Any]) -> set[int]:
    return {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}


def resolve_categories(data: dict[str, Any], root: str | Path | None = None) -> list[dict[str, Any]]:
    """The categories that become classes, sorted by id (label i = i-th entry).

    A category is dropped only when it is a placeholder: supercategory ``"none"`` and no annotation uses it, neither
    in ``data`` nor in any sibling split file under ``root``. Looking at every split keeps the label map identical
    for train, valid and test.
    """
    used = _used_category_ids(data)
    if root is not None:
        for split in SPLITS:
            path = annotation_path(root, split)
            if path.is_file():
                used |= _used_category_ids(load_coco_json(path))
    categories = sorted(data["categories"], key=lambda c: c["id"])
    return [c for c in categories if c.get("supercategory") != PLACEHOLDER_SUPERCATEGORY or c["id"] in used]


def clip_box(bbox: list[float], width: int, height: int) -> tuple[list[float], float]:
    """The rule training and ``validate_setup.py`` share: a COCO ``[x, y, w, h]`` box clipped to the image.

    Returns:
        (``[x0, y0, x1, y1]`` clipped to ``[0, width] x [0, height]``, the largest overshoot in pixels: 0 when the box
        lies inside the image, else how far its farthest side was moved).
    """
    x, y, w, h = bbox
    raw = [x, y, x + w, y + h]
    box = [min(max(raw[0], 0.0), width), min(max(raw[1], 0.0), height),
           min(max(raw[2], 0.0), width), min(max(raw[3], 0.0), height)]
    return box, max(abs(a - b) for a, b in zip(raw, box, strict=True))


@dataclass
class ImageRecord:
    """One image and its kept annotations (boxes clipped, xyxy in absolute pixels)."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    iscrowd: np.ndarray  # int64 [N]
    area: np.ndarray  # float32 [N]
    ann_ids: list[Any]
    segmentations: list[Any]


class _SplitReader:
    """Turns one split's JSON into :class:`ImageRecord` s, counting every change it makes in ``stats``."""

    def __init__(self, path: Path, category_to_label: dict[int, int], masks: bool, keep_crowd: bool) -> None:
        self.path, self.category_to_label, self.masks, self.keep_crowd = path, category_to_label, masks, keep_crowd
        self.stats: Counter[str] = Counter()

    def where(self, what: str) -> str:
        return f"{self.path}: {what}"

    def read(self, data: dict[str, Any]) -> list[ImageRecord]:
        images: dict[int, dict[str, Any]] = {}
        for rec in data["images"]:
            if not isinstance(rec, dict) or not all(isinstance(rec.get(k), int) for k in ("id", "width", "height")) \
                    or not isinstance(rec.get("file_name"), str):
                raise ValueError(self.where(f"image record {str(rec)[:80]} needs integer id/width/height and a "
                                            "file_name"))
            if rec["id"] in images:
                raise ValueError(self.where(f"image id {rec['id']} is used twice"))
            path = self.path.parent / rec["file_name"]
            if not path.is_file():
                raise FileNotFoundError(self.where(f"image id {rec['id']}: file not found: {path}"))
            images[rec["id"]] = {**rec, "path": path, "anns": []}
        for ann in data["annotations"]:
            self._add(ann, images)
        return [_to_record(img) for img in images.values()]

    def _add(self, ann: Any, images: dict[int, dict[str, Any]]) -> None:
        if not isinstance(ann, dict):
            raise ValueError(self.where(f"annotation {str(ann)[:80]} is not an object"))
        ann_id = ann.get("id")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise ValueError(self.where(f"annotation id {ann_id}: image_id {ann.get('image_id')!r} is not in 'images'"))
        if ann.get("category_id") not in self.category_to_label:
            raise ValueError(self.where(f"annotation id {ann_id}: category_id {ann.get('category_id')!r} is not a "
                                        f"class id (class ids: {sorted(self.category_to_label)})"))
        crowd = int(bool(ann.get("iscrowd", 0)))
        if crowd and not self.keep_crowd:
            self.stats["crowd annotations left out"] += 1
            return
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
                and all(math.isfinite(v) for v in bbox)):
            raise ValueError(self.where(f"annotation id {ann_id}: bbox {bbox!r} is not [x, y, width, height]"))
        box, overshoot = clip_box(bbox, image["width"], image["height"])
        if overshoot > 0:
            self.stats["boxes clipped to the image"] += 1
            if overshoot > BBOX_TOLERANCE_PX:
                self.stats[f"boxes more than {BBOX_TOLERANCE_PX:g} px outside the image"] += 1
        if box[2] <= box[0] or box[3] <= box[1]:
            self.stats["zero-area boxes dropped"] += 1
            return
        segmentation = ann.get("segmentation")
        if self.masks:
            kind = mask_kind(segmentation)
            if kind == "invalid":
                raise ValueError(self.where(f"annotation id {ann_id}: segmentation {str(segmentation)[:60]} is "
                                            "neither a polygon list nor an RLE dict"))
            if kind == "missing":
                self.stats["annotations without a mask dropped"] += 1
                return
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) else (box[2] - box[0]) * (box[3] - box[1])
        image["anns"].append((ann_id, box, self.category_to_label[ann["category_id"]], crowd, area, segmentation))


def _to_record(image: dict[str, Any]) -> ImageRecord:
    anns = image["anns"]
    return ImageRecord(
        image_id=image["id"], path=image["path"], width=image["width"], height=image["height"],
        boxes=np.array([a[1] for a in anns], dtype=np.float32).reshape(-1, 4),
        labels=np.array([a[2] for a in anns], dtype=np.int64),
        iscrowd=np.array([a[3] for a in anns], dtype=np.int64),
        area=np.array([a[4] for a in anns], dtype=np.float32),
        ann_ids=[a[0] for a in anns], segmentations=[a[5] for a in anns],
    )


def read_split(path: Path, data: dict[str, Any], category_to_label: dict[int, int], masks: bool = False,
               keep_crowd: bool = False) -> tuple[list[ImageRecord], Counter[str]]:
    """Clean records of every image in ``data`` (parsed from ``path``), and counts of what was changed or dropped.

    Args:
        path: the annotation file (for relative image paths and error messages; the labels folder for YOLO, whose
            ``file_name`` s are absolute).
        data: its parsed content (:func:`load_coco_json`).
        category_to_label: category id -> contiguous label, for the categories that are classes.
        masks: drop annotations without a segmentation and check that segmentations are well-formed.
        keep_crowd: keep ``iscrowd=1`` annotations.
    """
    reader = _SplitReader(Path(path), category_to_label, masks, keep_crowd)
    records = reader.read(data)
    return records, reader.stats
