"""YOLO datasets (Ultralytics and Roboflow "YOLO" exports), read as the COCO-style dict the rest of the package reads.

A YOLO dataset is a ``data.yaml`` with the class ``names`` (a list, or a mapping ``{id: name}`` with ids 0..K-1) and,
per split, a folder of images with a folder of ``.txt`` labels beside it. Both layouts in use are found:

- Roboflow: ``train/images``, ``train/labels``, ``valid/...``, ``test/...``;
- Ultralytics: ``images/train``, ``labels/train``, ``images/val``, ...;

or wherever ``data.yaml``'s ``train``/``val``/``test`` entries point (relative to its optional ``path``, else to the
file's folder). ``valid`` and ``val`` name the same split. The labels of an image are the file with the image's
relative path and a ``.txt`` suffix, found by replacing the last ``images`` folder of the image path with ``labels``
(the Ultralytics rule). An image without a label file is a background image.

One object per line, coordinates normalised to [0, 1] by the image's width and height (values up to
:data:`COORD_SLACK` outside are rounding and are clipped):

- ``class cx cy w h``: a box (no mask);
- ``class x1 y1 x2 y2 x3 y3 ...``: a polygon (3 or more points); its box is the polygon's bounds.

:func:`yolo_split_to_coco` turns a split into a COCO dict (pixel ``bbox``, polygon ``segmentation`` in pixels, the
mask area, category ids = the YOLO class ids 0..K-1 named from ``data.yaml``), so training, evaluation (pycocotools,
with real ground-truth masks from the polygons) and prediction use YOLO data exactly like COCO data. Nothing is ever
written into the dataset folder. Every problem raises :class:`YoloDatasetError` with one line naming the file (and the
line) and the fix; :func:`parse_label_text` returns all the problems of a file instead, for ``validate_setup.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from rfdetr.data.image_io import IMAGE_ERRORS, oriented_size

__all__ = ["COORD_SLACK", "IMAGE_SUFFIXES", "LabelProblem", "YoloConfig", "YoloDatasetError", "YoloSplit",
           "find_data_yaml", "find_split", "is_yolo_layout", "label_path", "list_images", "orphan_labels",
           "parse_label_text", "read_data_yaml", "yolo_split_to_coco"]

DATA_YAML_NAMES: tuple[str, ...] = ("data.yaml", "data.yml")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Exporters round normalised coordinates (Roboflow writes 6 decimals, others float32): a value this far outside
# [0, 1] is rounding, clipped silently; anything further is a real error (usually pixel coordinates).
COORD_SLACK = 1e-6
# Folder names of each split, and its data.yaml keys.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
SPLIT_KEYS: dict[str, tuple[str, ...]] = {"train": ("train",), "valid": ("val", "valid"), "test": ("test",)}
# LabelImg writes the class list into the labels folder; it is not a label file.
NOT_LABEL_FILES: frozenset[str] = frozenset({"classes.txt"})


class YoloDatasetError(ValueError):
    """A YOLO dataset problem the user can fix; the message is one line naming the file (and line) and the fix."""


def canonical_split(split: str) -> str:
    """``val`` -> ``valid``; other names unchanged."""
    return "valid" if split == "val" else split


@dataclass(frozen=True)
class YoloConfig:
    """What ``data.yaml`` says: the class names in id order, the split entries, and where relative entries start."""

    yaml_path: Path
    names: list[str]
    entries: dict[str, Any] = field(default_factory=dict)
    bases: tuple[Path, ...] = ()


@dataclass(frozen=True)
class YoloSplit:
    """One split's image folder and label folder (the same folder when the image path has no ``images`` part)."""

    images_dir: Path
    labels_dir: Path


def find_data_yaml(root: str | Path) -> Path | None:
    """``root/data.yaml`` (or ``data.yml``), else the only ``*.yaml``/``*.yml`` file in ``root``; None if neither."""
    root = Path(root)
    for name in DATA_YAML_NAMES:
        if (root / name).is_file():
            return root / name
    candidates = sorted(p for p in root.glob("*.y*ml") if p.suffix in (".yaml", ".yml") and p.is_file()) \
        if root.is_dir() else []
    return candidates[0] if len(candidates) == 1 else None


def is_yolo_layout(root: str | Path) -> bool:
    """Whether ``root`` looks like a YOLO dataset: a data.yaml, or an ``images/`` + ``labels/`` pair in either
    layout."""
    root = Path(root)
    if find_data_yaml(root) is not None:
        return True
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return True
    return any((root / name / "labels").is_dir() for names in SPLIT_FOLDERS.values() for name in names)


def _names(raw: Any, path: Path) -> list[str]:
    if isinstance(raw, list):
        return [str(n) for n in raw]
    if isinstance(raw, dict):
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise YoloDatasetError(f"{path}: 'names' keys {list(raw)[:8]} are not integer class ids -> write names "
                                   "as a list, or as a mapping {0: name, 1: name, ...}") from None
        if ids != list(range(len(ids))):
            raise YoloDatasetError(f"{path}: 'names' ids {ids[:8]} are not 0..{len(ids) - 1} -> number the classes "
                                   "0, 1, 2, ... without gaps (and renumber the label files)")
        by_id = {int(k): str(v) for k, v in raw.items()}
        return [by_id[i] for i in ids]
    raise YoloDatasetError(f"{path}: 'names' is missing or not a list/mapping -> add the class names, e.g. "
                           "names: [cat, dog] or names: {0: cat, 1: dog}")


def read_data_yaml(root: str | Path) -> YoloConfig:
    """Parse the dataset's ``data.yaml`` (``yaml.safe_load``).

    Raises:
        YoloDatasetError: no data.yaml, not YAML, not a mapping, ``names`` missing or malformed, or ``nc`` disagreeing
            with ``names``.
    """
    root = Path(root)
    path = find_data_yaml(root)
    if path is None:
        raise YoloDatasetError(f"{root}: no data.yaml -> a YOLO dataset needs data.yaml with the class names "
                               "(names: [cat, dog]) beside its images/labels folders")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise YoloDatasetError(f"{path}: cannot be read ({e}) -> check the file") from e
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise YoloDatasetError(f"{path}: not valid YAML{line} -> fix the file (names: [cat, dog])") from e
    if not isinstance(data, dict):
        raise YoloDatasetError(f"{path}: expected a YAML mapping with 'names' -> e.g. names: [cat, dog]")
    names = _names(data.get("names"), path)
    if not names:
        raise YoloDatasetError(f"{path}: 'names' is empty -> list the class names")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise YoloDatasetError(f"{path}: nc is {nc} but 'names' has {len(names)} entries -> make them agree (or drop "
                               "nc)")
    bases = [path.parent]
    if isinstance(data.get("path"), str) and data["path"].strip():
        declared = Path(data["path"]).expanduser()
        bases.insert(0, declared if declared.is_absolute() else path.parent / declared)
    entries = {split: data[key] for split, keys in SPLIT_KEYS.items() for key in keys if data.get(key)}
    return YoloConfig(path, names, entries, tuple(bases))


def _labels_dir(images_dir: Path) -> Path:
    """The Ultralytics rule: the last ``images`` folder of the path becomes ``labels``."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir


def _entry_dirs(config: YoloConfig, split: str) -> list[Path]:
    entry = config.entries.get(split)
    values = entry if isinstance(entry, list) else [entry] if isinstance(entry, str) else []
    out = []
    for value in values:
        rel = Path(value).expanduser()
        # Roboflow writes "../train/images" (relative to a parent folder of the export); also try it inside.
        stripped = Path(*[p for p in rel.parts if p != ".."]) if ".." in rel.parts else None
        for base in config.bases:
            out += [rel if rel.is_absolute() else base / rel] + ([base / stripped] if stripped else [])
    return out


def find_split(root: str | Path, split: str, config: YoloConfig | None = None) -> YoloSplit | None:
    """The image and label folders of ``split`` (``val`` = ``valid``), or None if the dataset has no such split.

    ``data.yaml``'s entry for the split wins when it names an existing folder inside ``root``; else
    ``root/<split>/images`` (Roboflow) and ``root/images/<split>`` (Ultralytics) are tried, with ``val`` and ``valid``
    both accepted; an entry pointing outside ``root`` comes last.
    """
    root, split = Path(root), canonical_split(split)
    entries = _entry_dirs(config, split) if config is not None else []
    # Entries inside the dataset first; one outside it (Roboflow's "../train/images" read literally) only when the
    # folder layout finds nothing, so that a neighbouring dataset's folder is never picked up by accident.
    inside = [p for p in entries if p.absolute().resolve().is_relative_to(root.absolute().resolve())]
    candidates = inside + [images for name in SPLIT_FOLDERS.get(split, (split,))
                           for images in (root / name / "images", root / "images" / name)]
    candidates += [p for p in entries if p not in inside]
    for images_dir in candidates:
        if images_dir.is_dir():
            return YoloSplit(images_dir, _labels_dir(images_dir))
    return None


def list_images(images_dir: Path) -> list[Path]:
    """Image files under ``images_dir`` (sub-folders included), sorted."""
    return sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def label_path(split: YoloSplit, image: Path) -> Path:
    """The label file of ``image``: same relative path under the labels folder, suffix ``.txt``."""
    return (split.labels_dir / image.relative_to(split.images_dir)).with_suffix(".txt")


def orphan_labels(split: YoloSplit, images: list[Path]) -> list[Path]:
    """Label files of ``split`` that belong to no image (sorted)."""
    if not split.labels_dir.is_dir():
        return []
    expected = {label_path(split, p) for p in images}
    return sorted(p for p in split.labels_dir.rglob("*.txt")
                  if p not in expected and p.name not in NOT_LABEL_FILES and p.is_file())


@dataclass(frozen=True)
class LabelProblem:
    """One bad line (or file) of a label file: where, what kind (a short key for counting) and the message."""

    path: Path
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _polygon_area(polygon: list[float], width: int, height: int) -> float:
    """Pixel area of the polygon as pycocotools rasterises it (what COCO's segm evaluation uses)."""
    return float(mask_utils.area(mask_utils.frPyObjects([polygon], height, width))[0])


def parse_label_text(path: Path, text: str, num_classes: int, width: int, height: int
                     ) -> tuple[list[dict[str, Any]], list[LabelProblem]]:
    """The objects of one label file as COCO annotation fields, and every bad line.

    Args:
        path: the label file (for messages).
        text: its content.
        num_classes: K; class ids must be 0..K-1.
        width / height: the image size in pixels (after EXIF orientation), to denormalise.

    Returns:
        ``[{"category_id", "bbox" (x, y, w, h px), "segmentation" ([[x1, y1, ...]] px, or [] for a box line),
        "area", "line"}]`` for the good lines, and a :class:`LabelProblem` per bad line.
    """
    objects: list[dict[str, Any]] = []
    problems: list[LabelProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue

        def bad(kind: str, message: str) -> None:
            problems.append(LabelProblem(path, number, kind, message))  # noqa: B023 (called in this iteration only)

        try:
            values = [float(t) for t in tokens]
        except ValueError:
            bad("not a number", f"{raw.strip()[:60]!r} is not numbers -> each line is 'class cx cy w h' or "
                                "'class x1 y1 x2 y2 ...'")
            continue
        cls, coords = values[0], values[1:]
        if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < num_classes):
            bad("class id outside names", f"class id {tokens[0]} is not in data.yaml names (ids 0..{num_classes - 1})"
                                          " -> fix the class id or add the class to names")
            continue
        if len(coords) < 4:
            bad("too few values", f"{len(coords)} coordinates -> a box needs 'cx cy w h', a polygon at least 3 x y "
                                  "points")
            continue
        if len(coords) > 4 and len(coords) % 2:
            bad("odd number of coordinates", f"{len(coords)} polygon coordinates, an odd number -> a polygon is x y "
                                             "pairs (at least 3 points); one value is missing or extra")
            continue
        outside = [v for v in coords if not (math.isfinite(v) and -COORD_SLACK <= v <= 1 + COORD_SLACK)]
        if outside:
            bad("value outside [0, 1]", f"value {outside[0]:g} is outside [0, 1] (normalised coordinates, "
                                        f"{COORD_SLACK:g} slack) -> divide pixel coordinates by the image width and "
                                        "height")
            continue
        coords = [min(max(v, 0.0), 1.0) for v in coords]
        if len(coords) == 4:
            cx, cy, w, h = coords
            x0, y0 = max(cx - w / 2, 0.0) * width, max(cy - h / 2, 0.0) * height
            x1, y1 = min(cx + w / 2, 1.0) * width, min(cy + h / 2, 1.0) * height
            segmentation: list[list[float]] = []
            area = (x1 - x0) * (y1 - y0)
        else:
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
            xs, ys = polygon[0::2], polygon[1::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            segmentation = [polygon]
            area = _polygon_area(polygon, width, height)
        objects.append({"category_id": int(cls), "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": segmentation,
                        "area": area, "iscrowd": 0, "line": number})
    return objects, problems


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only.

    Raises:
        YoloDatasetError: the file cannot be opened as an image.
    """
    try:
        with Image.open(path) as img:
            return oriented_size(img)
    except IMAGE_ERRORS as e:
        raise YoloDatasetError(f"{path}: cannot be read as an image ({e}) -> replace or delete the file") from e


def yolo_split_to_coco(root: str | Path, split: str) -> tuple[Path, dict[str, Any]]:
    """``split`` of the YOLO dataset at ``root`` as a COCO dict, and the labels folder (the "annotation file" that
    messages name).

    Image ids are 1..N in sorted path order, ``file_name`` is the image's absolute path, annotation ids are 1..M,
    category ids are the YOLO class ids. Box lines have an empty segmentation (no mask).

    Raises:
        YoloDatasetError: no data.yaml or a bad one, no such split, an unreadable image, a bad label line, or a label
            file without an image (the first problem found; ``validate_setup.py`` lists all of them).
    """
    root = Path(root)
    config = read_data_yaml(root)
    found = find_split(root, split, config)
    if found is None:
        raise YoloDatasetError(f"{root}: no {split} split -> expected {root}/{split}/images (Roboflow layout), "
                               f"{root}/images/{'val' if canonical_split(split) == 'valid' else split} (Ultralytics "
                               f"layout) or a '{SPLIT_KEYS.get(canonical_split(split), (split,))[0]}' entry in "
                               f"{config.yaml_path.name}")
    images = list_images(found.images_dir)
    orphans = orphan_labels(found, images)
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise YoloDatasetError(f"{orphans[0]}: label file without an image{more} -> add the image "
                               f"{orphans[0].stem}.* to {found.images_dir} or delete the label file")
    coco_images, annotations = [], []
    for image_id, path in enumerate(images, start=1):
        width, height = image_size(path)
        coco_images.append({"id": image_id, "file_name": str(path.absolute()), "width": width, "height": height})
        labels = label_path(found, path)
        if not labels.is_file():
            continue  # a background image
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise YoloDatasetError(f"{labels}: cannot be read ({e}) -> save it as UTF-8 text") from e
        objects, problems = parse_label_text(labels, text, len(config.names), width, height)
        if problems:
            raise YoloDatasetError(f"{problems[0]} (check the dataset with validate_setup.py)")
        for obj in objects:
            obj.pop("line")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    categories = [{"id": i, "name": name} for i, name in enumerate(config.names)]
    data = {"info": {"description": f"YOLO dataset {root} ({split})", "source": str(found.labels_dir)},
            "images": coco_images, "annotations": annotations, "categories": categories}
    return found.labels_dir, data
