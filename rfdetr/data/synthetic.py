"""A small, deterministic, Roboflow-layout COCO dataset of rendered shapes, for the demo and the tests.

Layout written (the same as a Roboflow "COCO Segmentation" export)::

    root/
      train/_annotations.coco.json  train/*.jpg|png
      valid/_annotations.coco.json  valid/*
      test/_annotations.coco.json   test/*

Like Roboflow exports it has a placeholder parent category (id 0) that no annotation uses, and real classes with ids
1..K. Masks are stored in all three COCO encodings so every reader path is exercised: polygons, compressed RLE
(``counts`` is a string) and uncompressed RLE (``counts`` is a list of run lengths).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from rfdetr.util.run_dir import write_bytes_atomic, write_json_atomic

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
PLACEHOLDER_NAME = "shapes"
ANNOTATION_FILE = "_annotations.coco.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`write_synthetic_dataset` renders.

    Attributes:
        splits: number of images per split.
        width / height: image size in pixels.
        max_objects: at most this many shapes per image (at least one).
        radius: range of a shape's circumradius, as fractions of the image's shorter side.
        seed: everything (colours, shapes, encodings) is a function of this seed.
        mask_styles: the encodings used in turn (0 polygon, 1 RLE, 2 raw RLE; see :func:`encode_segmentation`);
            ``(0,)`` gives polygons only, which convert to YOLO-seg labels without loss.
    """

    splits: tuple[tuple[str, int], ...] = (("train", 24), ("valid", 8), ("test", 4))
    width: int = 160
    height: int = 128
    max_objects: int = 3
    radius: tuple[float, float] = (0.12, 0.25)
    seed: int = 0
    mask_styles: tuple[int, ...] = (0, 1, 2)


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape centred at (cx, cy) with circumradius r (circles get 24 vertices)."""
    n = {"circle": 24, "square": 4, "triangle": 3}[kind]
    offset = angle if kind != "circle" else 0.0
    return [(cx + r * math.cos(offset + 2 * math.pi * k / n), cy + r * math.sin(offset + 2 * math.pi * k / n))
            for k in range(n)]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth colour gradient plus noise, so that the shapes are not the only texture. Returns uint8 [H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(40, 200, size=(2, 3))
    t = (xx / max(width - 1, 1) * 0.5 + yy / max(height - 1, 1) * 0.5)[..., None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 8, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_segmentation(mask: np.ndarray, polygon: Sequence[tuple[float, float]] | None, style: int
                        ) -> list | dict:
    """The COCO ``segmentation`` field of one object in one of three encodings (0 polygon, 1 RLE, 2 raw RLE).

    Args:
        mask: bool [H, W], the object's mask (used by the RLE styles).
        polygon: its outline as (x, y) vertices (used by style 0 only; it must rasterise to ``mask``).
        style: 0 polygon, 1 compressed RLE (``counts`` a string), 2 uncompressed RLE (``counts`` a list of runs).
    """
    if style == 0:
        if polygon is None:
            raise ValueError("a polygon segmentation needs the polygon")
        return [[round(float(v), 2) for xy in polygon for v in xy]]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if style == 1:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    # Uncompressed RLE: column-major run lengths starting with a run of zeros.
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the pixels of a non-empty bool mask [H, W] (pixel edges, so a 1-pixel mask
    has width 1)."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_categories(class_names: Sequence[str], placeholder: str = PLACEHOLDER_NAME) -> list[dict[str, Any]]:
    """Roboflow-style categories: the unused placeholder parent (id 0, supercategory "none"), then classes 1..K."""
    categories = [{"id": 0, "name": placeholder, "supercategory": "none"}]
    return categories + [{"id": i + 1, "name": n, "supercategory": placeholder} for i, n in enumerate(class_names)]


def image_file_name(split: str, index: int) -> str:
    """File name of image ``index`` of ``split``: JPEG and PNG alternate like in real exports (PNG keeps exact pixels
    for the overfit tests, JPEG brings compression artefacts)."""
    return f"{split}_{index:04d}.{'png' if index % 2 else 'jpg'}"


def save_image(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` (format from the suffix, JPEG at quality 95), atomically: never half a file."""
    buffer = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(buffer, format="JPEG", quality=95)
    else:
        img.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_coco_split(split_dir: Path, description: str, categories: list[dict[str, Any]], images: list[dict[str, Any]],
                     annotations: list[dict[str, Any]]) -> Path:
    """Write ``split_dir/_annotations.coco.json`` atomically (readers never see half a file) and return its path."""
    coco = {
        "info": {"description": description, "version": "1"},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }
    return write_json_atomic(split_dir / ANNOTATION_FILE, coco)


def _render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[Image.Image, list[dict]]:
    """One image and its objects (category index, polygon, mask); objects never overlap."""
    img = Image.fromarray(_background(rng, spec.width, spec.height))
    draw = ImageDraw.Draw(img)
    objects: list[dict] = []
    occupied = np.zeros((spec.height, spec.width), dtype=bool)
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        kind_idx = int(rng.integers(len(CLASS_NAMES)))
        r = float(rng.uniform(*spec.radius) * min(spec.width, spec.height))
        cx = float(rng.uniform(r, spec.width - r))
        cy = float(rng.uniform(r, spec.height - r))
        polygon = _shape_polygon(CLASS_NAMES[kind_idx], cx, cy, r, float(rng.uniform(0, math.pi)))
        layer = Image.new("L", (spec.width, spec.height), 0)
        ImageDraw.Draw(layer).polygon(polygon, fill=1)
        mask = np.asarray(layer, dtype=bool)
        # No overlaps, so that each polygon is exactly the visible mask (no occlusion bookkeeping).
        if (mask & occupied).any():
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(polygon, fill=colour)
        occupied |= mask
        objects.append({"category": kind_idx, "polygon": polygon, "mask": mask})
    return img, objects


def write_synthetic_dataset(root: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write the dataset under ``root`` and return ``root``.

    Existing files with the same names are overwritten (the content is a pure function of ``spec``), other files in
    ``root`` are left alone.
    """
    spec = spec or SyntheticSpec()
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    categories = coco_categories(CLASS_NAMES)
    for split, count in spec.splits:
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(count):
            img, objects = _render_image(rng, spec)
            file_name = image_file_name(split, image_id)
            save_image(img, split_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": spec.width, "height": spec.height})
            for obj in objects:
                mask = obj["mask"]
                annotations.append({
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "bbox": mask_bbox(mask),
                    "area": float(mask.sum()),
                    "segmentation": encode_segmentation(
                        mask, obj["polygon"], spec.mask_styles[len(annotations) % len(spec.mask_styles)]),
                    "iscrowd": 0,
                })
        write_coco_split(split_dir, f"RT-DETR-Seg synthetic shapes (seed {spec.seed})", categories, images,
                         annotations)
    return root
