"""Test helper: a COCO dataset (as :mod:`rfdetr.data.synthetic` writes it) rewritten as a YOLO dataset, in the Roboflow
or the Ultralytics layout, with box or polygon labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rfdetr.data.annotations import annotation_path, resolve_categories

# Ultralytics calls the validation split "val", Roboflow "valid".
ULTRALYTICS_SPLIT = {"train": "train", "valid": "val", "test": "test"}


def _line(label: int, ann: dict, width: int, height: int, masks: bool) -> str:
    seg = ann.get("segmentation")
    if masks and isinstance(seg, list) and seg:
        coords = [v / (width if i % 2 == 0 else height) for i, v in enumerate(seg[0])]
    else:
        x, y, w, h = ann["bbox"]
        coords = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
    return " ".join([str(label), *(repr(v) for v in coords)])


def coco_to_yolo(coco_root: Path, out: Path, layout: str = "roboflow", masks: bool = True,
                 names_as_mapping: bool = False) -> Path:
    """Write ``coco_root`` as a YOLO dataset under ``out`` and return ``out``.

    ``layout``: ``roboflow`` (``train/images``, ``valid/labels`` ...) or ``ultralytics`` (``images/train``,
    ``labels/val`` ...). ``masks``: polygon segmentations become polygon lines (others box lines); False writes boxes
    only. Images without annotations get no label file (YOLO's background images).
    """
    names: list[str] = []
    entries = {}
    for split in ("train", "valid", "test"):
        path = annotation_path(coco_root, split)
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        categories = resolve_categories(data, coco_root)
        names = [c["name"] for c in categories]
        label_of = {c["id"]: i for i, c in enumerate(categories)}
        if layout == "roboflow":
            images_dir, labels_dir = out / split / "images", out / split / "labels"
            entries[ULTRALYTICS_SPLIT[split]] = f"../{split}/images"
        else:
            images_dir = out / "images" / ULTRALYTICS_SPLIT[split]
            labels_dir = out / "labels" / ULTRALYTICS_SPLIT[split]
            entries[ULTRALYTICS_SPLIT[split]] = f"images/{ULTRALYTICS_SPLIT[split]}"
        images_dir.mkdir(parents=True)
        labels_dir.mkdir(parents=True)
        lines: dict[int, list[str]] = {}
        by_id = {img["id"]: img for img in data["images"]}
        for ann in data["annotations"]:
            img = by_id[ann["image_id"]]
            lines.setdefault(img["id"], []).append(
                _line(label_of[ann["category_id"]], ann, img["width"], img["height"], masks))
        for img in data["images"]:
            shutil.copy(path.parent / img["file_name"], images_dir / img["file_name"])
            if img["id"] in lines:
                (labels_dir / Path(img["file_name"]).with_suffix(".txt").name).write_text("\n".join(lines[img["id"]])
                                                                                         + "\n")
    yaml_names = ("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)) if names_as_mapping
                  else f"names: [{', '.join(names)}]\n")
    text = f"nc: {len(names)}\n{yaml_names}" + "".join(f"{k}: {v}\n" for k, v in entries.items())
    if layout == "ultralytics":
        text = "path: .\n" + text
    (out / "data.yaml").write_text(text)
    return out
