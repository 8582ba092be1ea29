"""The embedded synthetic dataset: deterministic, Roboflow layout, masks in all three encodings that match the boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rfdetr.data.synthetic import ANNOTATION_FILE, CLASS_NAMES, SyntheticSpec, write_synthetic_dataset
from rfdetr.data.validate import decode_mask, mask_kind


def test_layout_and_categories(synthetic_dir: Path) -> None:
    for split in ("train", "valid", "test"):
        data = json.loads((synthetic_dir / split / ANNOTATION_FILE).read_text())
        assert [c["id"] for c in data["categories"]] == [0, 1, 2, 3]  # Roboflow-style placeholder category 0
        assert [c["name"] for c in data["categories"][1:]] == list(CLASS_NAMES)
        assert all((synthetic_dir / split / im["file_name"]).is_file() for im in data["images"])
        assert all(a["category_id"] in (1, 2, 3) for a in data["annotations"])


def test_masks_decode_and_agree_with_boxes(synthetic_dir: Path) -> None:
    data = json.loads((synthetic_dir / "train" / ANNOTATION_FILE).read_text())
    kinds = set()
    for ann in data["annotations"]:
        kinds.add(mask_kind(ann["segmentation"]))
        mask = decode_mask(ann["segmentation"], 128, 160)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        # Polygon rasterisation by pycocotools and by PIL differ by at most a pixel at the border.
        assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1
        assert abs(xs.max() + 1 - (x + w)) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1
        assert abs(mask.sum() - ann["area"]) <= 0.1 * ann["area"] + 20
    assert kinds == {"polygon", "rle", "uncompressed_rle"}


def test_deterministic_from_seed(tmp_path: Path) -> None:
    spec = SyntheticSpec(splits=(("train", 3), ("valid", 2)), seed=7)
    a = write_synthetic_dataset(tmp_path / "a", spec)
    b = write_synthetic_dataset(tmp_path / "b", spec)
    c = write_synthetic_dataset(tmp_path / "c", SyntheticSpec(splits=spec.splits, seed=8))
    ja, jb, jc = ((p / "train" / ANNOTATION_FILE).read_text() for p in (a, b, c))
    assert ja == jb and ja != jc
    assert (a / "train" / "train_0001.png").read_bytes() == (b / "train" / "train_0001.png").read_bytes()
