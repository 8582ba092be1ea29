"""Dataset checks for ``validate_setup.py``: the Roboflow COCO layout, JSON consistency, images and masks (YOLO
datasets are checked by :mod:`rfdetr.data.validate_yolo`, chosen from the folder's layout).

Every problem line names the split, the file, the image or annotation id, what is wrong and how to fix it, so that a
user can act on it without reading code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from rfdetr.data.annotations import BBOX_TOLERANCE_PX, clip_box
from rfdetr.data.image_io import IMAGE_ERRORS, oriented_size
from rfdetr.data.masks import decode_mask, mask_kind
from rfdetr.data.split_summary import OPTIONAL_SPLITS, REQUIRED_SPLITS, SplitSummary
from rfdetr.data.synthetic import ANNOTATION_FILE
from rfdetr.util.checklist import Checklist


class _SplitChecker:
    """Checks one split's JSON and files, reporting into a shared checklist."""

    def __init__(self, root: Path, split: str, stage: int, checks: Checklist) -> None:
        self.split, self.stage, self.checks = split, stage, checks
        self.dir = root / split
        self.json_path = self.dir / ANNOTATION_FILE
        self.summary = SplitSummary()
        self.categories: dict[int, str] = {}

    def where(self, what: str) -> str:
        return f"[{self.split}] {self.json_path.name} {what}"

    def load(self) -> dict | None:
        """Parse the JSON and its top-level structure; None (after reporting) if unusable."""
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            self.checks.fail(f"[{self.split}] {self.json_path}: JSON syntax error at line {e.lineno} column {e.colno}: "
                             f"{e.msg} -> fix the file or export the dataset again")
            return None
        except (OSError, UnicodeDecodeError) as e:
            self.checks.fail(f"[{self.split}] {self.json_path}: cannot be read ({e}) -> check the file")
            return None
        if not isinstance(data, dict):
            self.checks.fail(f"[{self.split}] {self.json_path}: top level is not an object -> expected a COCO dict")
            return None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                self.checks.fail(f"[{self.split}] {self.json_path}: field '{key}' is missing or not a list "
                                 "-> export the dataset in COCO format")
                return None
        return data

    def check_categories(self, categories: list) -> None:
        for cat in categories:
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
                self.checks.fail(self.where(f"category {cat!r}: needs an integer 'id' and a string 'name'"),
                                 kind="bad category")
                continue
            if cat["id"] in self.categories:
                self.checks.fail(self.where(f"category id {cat['id']} is defined twice -> give each class its own id"),
                                 kind="duplicate category id")
            self.categories[cat["id"]] = cat["name"]

    def check_images(self, images: list) -> dict[int, dict]:
        """Check image records and files; returns the usable records by id."""
        by_id: dict[int, dict] = {}
        for rec in images:
            if not isinstance(rec, dict) or not all(isinstance(rec.get(k), int) for k in ("id", "width", "height")) \
                    or not isinstance(rec.get("file_name"), str):
                self.checks.fail(self.where(f"image record {str(rec)[:80]}: needs integer 'id', 'width', 'height' "
                                            "and a string 'file_name' -> fix the record"), kind="bad image record")
                continue
            image_id = rec["id"]
            if image_id in by_id:
                self.checks.fail(self.where(f"image id {image_id} is used twice -> give each image its own id"),
                                 kind="duplicate image id")
                continue
            by_id[image_id] = rec
            self.summary.sizes[(rec["width"], rec["height"])] += 1
            self._check_image_file(rec)
        self.summary.images = len(by_id)
        return by_id

    def _check_image_file(self, rec: dict) -> None:
        path = self.dir / rec["file_name"]
        label = f"image id {rec['id']} '{rec['file_name']}'"
        if not path.is_file():
            self.checks.fail(self.where(f"{label}: file not found at {path} -> restore the file or remove the image "
                                        "and its annotations from the JSON"), kind="missing image")
            return
        try:
            with Image.open(path) as img:
                size = oriented_size(img)
                img.load()
        except IMAGE_ERRORS as e:
            self.checks.fail(self.where(f"{label}: cannot be decoded ({e}) -> replace the file or export it again"),
                             kind="unreadable image")
            return
        if size != (rec["width"], rec["height"]):
            self.checks.fail(self.where(f"{label}: the file is {size[0]}x{size[1]} but the JSON says "
                                        f"{rec['width']}x{rec['height']} -> fix width/height in the JSON or export "
                                        "again"), kind="image size mismatch")

    def check_annotations(self, annotations: list, images: dict[int, dict]) -> None:
        seen_ids: set = set()
        annotated: set[int] = set()
        for ann in annotations:
            if not isinstance(ann, dict):
                self.checks.fail(self.where(f"annotation {str(ann)[:80]} is not an object"), kind="bad annotation")
                continue
            ann_id = ann.get("id")
            label = f"annotation id {ann_id}"
            if ann_id in seen_ids:
                self.checks.fail(self.where(f"{label} is used twice -> give each annotation its own id"),
                                 kind="duplicate annotation id")
            seen_ids.add(ann_id)
            image = images.get(ann.get("image_id"))
            if image is None:
                self.checks.fail(self.where(f"{label}: image_id {ann.get('image_id')!r} is not in 'images' -> fix "
                                            "image_id or remove the annotation"), kind="unknown image id")
                continue
            label += f" (image id {image['id']} '{image['file_name']}')"
            category_id = ann.get("category_id")
            if category_id not in self.categories:
                self.checks.fail(self.where(f"{label}: category_id {category_id!r} is not in 'categories' "
                                            f"(known: {sorted(self.categories)}) -> fix category_id or add the "
                                            "category"), kind="unknown category id")
                continue
            self.summary.annotations += 1
            self.summary.per_class[self.categories[category_id]] += 1
            self.summary.crowd += int(bool(ann.get("iscrowd", 0)))
            annotated.add(image["id"])
            self._check_bbox(ann.get("bbox"), image, label)
            self._check_segmentation(ann.get("segmentation"), image, label)
        self.summary.images_without_annotations = len(set(images) - annotated)

    def _check_bbox(self, bbox: Any, image: dict, label: str) -> None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            self.checks.fail(self.where(f"{label}: bbox {bbox!r} is not [x, y, width, height] -> fix the box"),
                             kind="malformed bbox")
            return
        w, h = bbox[2], bbox[3]
        if w <= 0 or h <= 0:
            self.checks.fail(self.where(f"{label}: bbox {bbox} has zero or negative area -> give it a positive width "
                                        "and height or remove the annotation"), kind="zero-area bbox")
            return
        W, H = image["width"], image["height"]
        _, overshoot = clip_box(bbox, W, H)
        if overshoot > BBOX_TOLERANCE_PX:
            self.checks.fail(self.where(f"{label}: bbox {bbox} extends {overshoot:.2f} px outside the {W}x{H} image "
                                        "-> clip it to the image (0 <= x, 0 <= y, x+w <= width, y+h <= height)"),
                             kind="bbox outside image")
        elif overshoot > 0:
            self.summary.clipped += 1
            self.summary.max_clip_px = max(self.summary.max_clip_px, overshoot)

    def _check_segmentation(self, segmentation: Any, image: dict, label: str) -> None:
        kind = mask_kind(segmentation)
        # Stage 2 trains on masks, so a missing or broken mask is an error there; stage 1 never reads masks.
        report = self.checks.fail if self.stage == 2 else self.checks.warn
        if kind == "missing":
            self.summary.mask_kinds["missing"] += 1
            if self.stage == 2:
                self.checks.fail(self.where(f"{label}: empty segmentation -> draw a mask for it or remove the "
                                            "annotation (stage 2 needs a mask for every object)"),
                                 kind="missing mask")
            return
        if kind == "invalid":
            self.summary.mask_kinds["invalid"] += 1
            report(self.where(f"{label}: segmentation {str(segmentation)[:60]} is neither a polygon list nor an RLE "
                              "dict -> export masks as COCO polygons or RLE"), kind="invalid mask")
            return
        self.summary.mask_kinds[kind] += 1
        try:
            mask = decode_mask(segmentation, image["height"], image["width"])
        except (ValueError, TypeError, KeyError) as e:
            report(self.where(f"{label}: {kind} mask does not decode ({e}) -> fix or redraw the mask"),
                   kind="undecodable mask")
            return
        if not mask.any():
            report(self.where(f"{label}: {kind} mask decodes to an empty mask -> redraw the mask or remove the "
                              "annotation"), kind="empty mask")

    def run(self) -> bool:
        """Check the split; False if it could not be read at all."""
        if not self.json_path.is_file():
            self.checks.fail(f"[{self.split}] {self.json_path} not found -> every split folder needs its "
                             f"{ANNOTATION_FILE} (Roboflow 'COCO' export)")
            return False
        data = self.load()
        if data is None:
            return False
        self.check_categories(data["categories"])
        images = self.check_images(data["images"])
        self.check_annotations(data["annotations"], images)
        if self.summary.clipped:
            self.checks.info(f"[{self.split}] {self.summary.clipped} boxes poke out of their image by at most "
                             f"{self.summary.max_clip_px:.2f} px (rounding): training clips them to the image and "
                             "counts them ('boxes clipped to the image')")
        ann_ids = [a.get("id") for a in data["annotations"] if isinstance(a, dict)]
        if 0 in ann_ids:
            self.checks.info(f"[{self.split}] annotation ids start at 0; evaluation renumbers them from 1 "
                             "(pycocotools ignores id 0)")
        return True


def _check_categories_across_splits(checkers: list[_SplitChecker], checks: Checklist) -> None:
    reference = checkers[0]
    for other in checkers[1:]:
        if other.categories != reference.categories:
            checks.fail(f"[{other.split}] categories {other.categories} differ from [{reference.split}] "
                        f"{reference.categories} -> export all splits from the same project version")


def _report_summary(checkers: list[_SplitChecker], checks: Checklist) -> None:
    train = checkers[0]
    used = {name for c in checkers for name in c.summary.per_class}
    for cat_id, name in sorted(train.categories.items()):
        if name not in used:
            # Roboflow writes the project name as category 0 and never uses it: dropped at load, not an error.
            checks.info(f"category id {cat_id} '{name}' has no annotations in any split; it is dropped "
                        "(Roboflow's placeholder parent category)")
        elif train.summary.per_class[name] == 0:
            checks.warn(f"class '{name}' has no annotations in [train] -> add training examples or remove the class")
    print("\nDataset summary")
    for c in checkers:
        s = c.summary
        print(f"  {c.split:6s} images {s.images:5d} (without annotations: {s.images_without_annotations})  "
              f"annotations {s.annotations:6d} (crowd: {s.crowd}, boxes clipped to the image: {s.clipped})")
        s.print_details()


def validate_dataset(root: str | Path, checks: Checklist, stage: int = 1) -> list[SplitSummary]:
    """Check a Roboflow-layout COCO dataset or a YOLO dataset at ``root``; results go to ``checks``.

    Args:
        root: folder with ``train/``, ``valid/`` and optionally ``test/`` (each with its COCO JSON), or a YOLO
            dataset (data.yaml, images, labels), detected by :func:`rfdetr.data.annotations.dataset_format`.
        checks: where PASS/WARN/FAIL lines go.
        stage: 2 makes missing or broken masks a FAIL (stage 2 trains on them); 1 makes them a WARN.

    Returns:
        The summaries of the splits that could be read.
    """
    root = Path(root)
    if not root.is_dir():
        checks.fail(f"dataset folder {root} does not exist -> pass --dataset DIR (a Roboflow COCO export or a YOLO "
                    "dataset)")
        return []
    from rfdetr.data.annotations import dataset_format

    if dataset_format(root) == "yolo":
        from rfdetr.data.validate_yolo import validate_yolo_dataset

        checks.info(f"{root}: YOLO dataset (no _annotations.coco.json in train/ or valid/)")
        return validate_yolo_dataset(root, checks, stage)
    checkers: list[_SplitChecker] = []
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        if not (root / split).is_dir():
            if split in REQUIRED_SPLITS:
                checks.fail(f"[{split}] folder missing: {root / split} -> the dataset needs train/ and valid/ "
                            "folders, each with _annotations.coco.json (or a YOLO dataset: data.yaml, images/, "
                            "labels/)")
            else:
                checks.info(f"[{split}] folder not present (optional)")
            continue
        checker = _SplitChecker(root, split, stage, checks)
        before = checks.counts["FAIL"]
        if checker.run():
            checkers.append(checker)
            if checks.counts["FAIL"] == before:
                checks.passed(f"[{split}] {checker.summary.images} images, {checker.summary.annotations} annotations "
                              "checked")
    if checkers:
        _check_categories_across_splits(checkers, checks)
        _report_summary(checkers, checks)
    return [c.summary for c in checkers]
