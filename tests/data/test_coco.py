"""CocoDetection: label map, target convention, masks in every encoding, crowd / degenerate handling, bad files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert

from rfdetr.data.coco import CocoDetection, collate_fn
from rfdetr.data.masks import mask_kind
from rfdetr.data.synthetic import ANNOTATION_FILE, CLASS_NAMES, SyntheticSpec, write_synthetic_dataset


def _small_dataset(root: Path) -> Path:
    """A fresh 4+2-image synthetic dataset that a test may edit."""
    return write_synthetic_dataset(root, SyntheticSpec(splits=(("train", 4), ("valid", 2)), max_objects=3, seed=3))


def _edit_json(root: Path, split: str, edit) -> None:
    path = root / split / ANNOTATION_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _mask_box(mask: torch.Tensor) -> list[float]:
    """Exclusive pixel box [x0, y0, x1, y1] of a bool mask [H, W]."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_strawberry_train_classes_and_targets(strawberry_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rfdetr.data.coco"):
        ds = CocoDetection(strawberry_dir, "train")
    # The placeholder category 0 ("Strawberry-Plants-Parts", supercategory "none") is not a class.
    assert ds.class_names == ["Flower", "Fruit", "Leaf"]
    assert ds.label_to_category_id == [1, 2, 3]
    assert ds.num_classes == 3 and len(ds) == 117
    # 15 boxes poke out of the 640x640 images by rounding noise: clipped, counted and reported in one INFO line
    # (validate_setup.py counts the same 15 under the same rule; issue #23 point 10).
    assert ds.stats["boxes clipped to the image"] == 15
    (line,) = [r for r in caplog.records if "clipped" in r.getMessage()]
    assert line.levelname == "INFO"
    image, target = ds[0]
    assert image.shape == (3, 640, 640) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and set(target["labels"].tolist()) <= {0, 1, 2}
    assert target["iscrowd"].shape == (n,) and target["area"].shape == (n,)
    assert target["orig_size"].tolist() == [640, 640] and target["size"].tolist() == [640, 640]
    assert target["image_id"].dtype == torch.int64 and target["image_id"].ndim == 0
    assert "masks" not in target
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_strawberry_masks_match_boxes(strawberry_dir: Path) -> None:
    ds = CocoDetection(strawberry_dir, "valid", masks=True)
    _, target = ds[0]
    masks = target["masks"]
    assert masks.dtype == torch.bool and masks.shape == (len(target["labels"]), 640, 640)
    boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * 640
    for mask, box in zip(masks, boxes, strict=True):
        assert np.allclose(_mask_box(mask), box.tolist(), atol=2.0)


def test_synthetic_masks_in_all_three_encodings(synthetic_dir: Path) -> None:
    ds = CocoDetection(synthetic_dir, "train", masks=True)
    assert ds.class_names == list(CLASS_NAMES) and ds.label_to_category_id == [1, 2, 3]
    data = json.loads((synthetic_dir / "train" / ANNOTATION_FILE).read_text())
    kinds = {a["id"]: mask_kind(a["segmentation"]) for a in data["annotations"]}
    assert set(kinds.values()) == {"polygon", "rle", "uncompressed_rle"}
    seen = set()
    for i in range(len(ds)):
        _, target = ds[i]
        seen.update(kinds[a] for a in ds.records[i].ann_ids)
        boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([160, 128, 160, 128])
        for mask, box in zip(target["masks"], boxes, strict=True):
            # pycocotools and PIL rasterise polygon borders a pixel apart.
            assert np.allclose(_mask_box(mask), box.tolist(), atol=1.0)
    assert seen == {"polygon", "rle", "uncompressed_rle"}


def test_placeholder_kept_when_used(tmp_path: Path) -> None:
    """Only an *unused* "none" category is a placeholder; a plain COCO file whose classes say "none" keeps them."""
    root = _small_dataset(tmp_path)

    def use_placeholder(data: dict) -> None:
        data["annotations"][0]["category_id"] = 0

    _edit_json(root, "valid", use_placeholder)  # used in another split: the label map must stay the same
    for split in ("train", "valid"):
        ds = CocoDetection(root, split)
        assert ds.label_to_category_id == [0, 1, 2, 3] and ds.class_names[0] == "shapes"


def test_crowd_dropped_from_targets_unless_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _small_dataset(tmp_path)
    _edit_json(root, "train", lambda d: d["annotations"][0].update(iscrowd=1))
    image_id = json.loads((root / "train" / ANNOTATION_FILE).read_text())["annotations"][0]["image_id"]
    with caplog.at_level(logging.INFO, logger="rfdetr.data.coco"):
        ds = CocoDetection(root, "train", masks=True)
    kept = CocoDetection(root, "train", masks=True, keep_crowd=True)
    index = ds.image_ids.index(image_id)
    assert ds.stats["crowd annotations left out"] == 1
    assert any("crowd" in r.getMessage() for r in caplog.records)
    assert len(kept[index][1]["labels"]) == len(ds[index][1]["labels"]) + 1
    assert kept[index][1]["iscrowd"].tolist().count(1) == 1 and ds[index][1]["iscrowd"].sum() == 0


def test_bad_boxes_clipped_or_dropped_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _small_dataset(tmp_path)

    def damage(data: dict) -> None:
        data["annotations"][0]["bbox"] = [-10.0, -5.0, 50.0, 40.0]  # partly outside: clipped to [0, 0, 40, 35]
        data["annotations"][1]["bbox"] = [20.0, 20.0, 0.0, 10.0]  # zero width: dropped
        data["annotations"][2]["bbox"] = [170.0, 20.0, 10.0, 10.0]  # entirely right of the 160-px image: dropped

    _edit_json(root, "train", damage)
    n_annotations = len(json.loads((root / "train" / ANNOTATION_FILE).read_text())["annotations"])
    with caplog.at_level(logging.WARNING, logger="rfdetr.data.coco"):
        ds = CocoDetection(root, "train")
    assert ds.stats["boxes clipped to the image"] == 2 and ds.stats["zero-area boxes dropped"] == 2
    assert sum(len(r.labels) for r in ds.records) == n_annotations - 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 zero-area boxes dropped" in warnings[0]
    first = json.loads((root / "train" / ANNOTATION_FILE).read_text())["annotations"][0]
    rec = ds.records[ds.image_ids.index(first["image_id"])]
    assert rec.boxes[rec.ann_ids.index(first["id"])].tolist() == [0.0, 0.0, 40.0, 35.0]


def test_images_without_annotations_or_masks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _small_dataset(tmp_path)

    def strip(data: dict) -> None:
        # image 0 loses its annotations; image 1's objects lose their masks.
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 0]
        for a in data["annotations"]:
            if a["image_id"] == 1:
                a["segmentation"] = []

    _edit_json(root, "train", strip)
    detection = CocoDetection(root, "train")
    assert len(detection) == 4  # kept for detection: all queries are negatives
    _, target = detection[detection.image_ids.index(0)]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    with_masks = CocoDetection(root, "train", masks=True)
    _, target = with_masks[with_masks.image_ids.index(0)]
    assert target["masks"].shape == (0, 128, 160)
    with caplog.at_level(logging.WARNING, logger="rfdetr.data.coco"):
        stage2 = CocoDetection(root, "train", masks=True, skip_images_without_masks=True)
    assert sorted(stage2.image_ids) == [2, 3]
    assert stage2.stats["images without masks skipped"] == 2 and stage2.stats["annotations without a mask dropped"] > 0
    assert any("2 images without masks skipped" in r.getMessage() for r in caplog.records)


def test_bad_files_raise_naming_the_file(tmp_path: Path) -> None:
    root = _small_dataset(tmp_path)
    json_path = root / "train" / ANNOTATION_FILE
    good = json_path.read_text()
    first_image = json.loads(good)["images"][0]["file_name"]

    json_path.write_text(good[:-10])
    with pytest.raises(ValueError, match="_annotations.coco.json: not valid JSON"):
        CocoDetection(root, "train")

    json_path.write_text(good)
    _edit_json(root, "train", lambda d: d["annotations"][0].update(category_id=9))
    with pytest.raises(ValueError, match=r"_annotations.coco.json: annotation id 0: category_id 9"):
        CocoDetection(root, "train")

    json_path.write_text(good)
    (root / "train" / first_image).write_bytes(b"not an image")
    ds = CocoDetection(root, "train")
    with pytest.raises(ValueError, match=first_image):
        ds[0]

    (root / "train" / first_image).unlink()
    with pytest.raises(FileNotFoundError, match=first_image):
        CocoDetection(root, "train")
    with pytest.raises(FileNotFoundError, match="test"):
        CocoDetection(root, "test")


def test_image_size_mismatch_is_an_error(tmp_path: Path) -> None:
    root = _small_dataset(tmp_path)
    _edit_json(root, "train", lambda d: d["images"][0].update(width=200))
    with pytest.raises(ValueError, match="is 160x128 after EXIF orientation but the JSON says 200x128"):
        CocoDetection(root, "train")[0]


def test_collate_fn() -> None:
    batch = [(torch.zeros(3, 8, 8), {"labels": torch.tensor([1])}), (torch.ones(3, 8, 8), {"labels": torch.tensor([])})]
    images, targets = collate_fn(batch)
    assert images.shape == (2, 3, 8, 8) and isinstance(targets, list) and len(targets) == 2
    with pytest.raises(ValueError, match="images of one size"):
        collate_fn([(torch.zeros(3, 8, 8), {}), (torch.zeros(3, 8, 9), {})])
