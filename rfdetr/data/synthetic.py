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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

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
    """

    splits: tuple[tuple[str, int], ...] = (("train", 24), ("valid", 8), ("test", 4))
    width: int = 160
    height: int = 128
    max_objects: int = 3
    radius: tuple[float, float] = (0.12, 0.25)
    seed: int = 0


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


def _encode(mask: np.ndarray, polygon: list[tuple[float, float]], style: int) -> list | dict:
    """The COCO ``segmentation`` field of one object in one of three encodings (0 polygon, 1 RLE, 2 raw RLE)."""
    if style == 0:
        return [[round(v, 2) for xy in polygon for v in xy]]
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
    categories = [{"id": 0, "name": PLACEHOLDER_NAME, "supercategory": "none"}]
    categories += [{"id": i + 1, "name": n, "supercategory": PLACEHOLDER_NAME} for i, n in enumerate(CLASS_NAMES)]
    for split, count in spec.splits:
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(count):
            img, objects = _render_image(rng, spec)
            # Mix JPEG and PNG like real exports do; PNG keeps exact pixels for the overfit tests.
            file_name = f"{split}_{image_id:04d}.{'png' if image_id % 2 else 'jpg'}"
            img.save(split_dir / file_name, **({"quality": 95} if file_name.endswith("jpg") else {}))
            images.append({"id": image_id, "file_name": file_name, "width": spec.width, "height": spec.height})
            for obj in objects:
                mask = obj["mask"]
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
                style = len(annotations) % 3
                annotations.append({
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()),
                    "segmentation": _encode(mask, obj["polygon"], style),
                    "iscrowd": 0,
                })
        coco = {
            "info": {"description": f"RT-DETR-Seg synthetic shapes (seed {spec.seed})", "version": "1"},
            "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "categories": categories,
            "images": images,
            "annotations": annotations,
        }
        (split_dir / ANNOTATION_FILE).write_text(json.dumps(coco, indent=1))
    return root
