"""YOLO dataset checks for ``validate_setup.py``: data.yaml, the split folders, images, and every label line.

Each problem line names the file (and line) and the fix; problems of one kind are counted and their first examples
printed (:class:`rfdetr.util.checklist.Checklist`). The rules are the reader's (:mod:`rfdetr.data.yolo`), so a dataset
that passes here loads for training.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from rfdetr.data.image_io import IMAGE_ERRORS, oriented_size
from rfdetr.data.split_summary import OPTIONAL_SPLITS, REQUIRED_SPLITS, SplitSummary
from rfdetr.data.yolo import (
    COORD_SLACK,
    YoloConfig,
    YoloDatasetError,
    YoloSplit,
    find_split,
    label_path,
    list_images,
    orphan_labels,
    parse_label_text,
    read_data_yaml,
)
from rfdetr.util.checklist import Checklist


class _YoloSplitChecker:
    """Checks one split's images and label files, reporting into a shared checklist."""

    def __init__(self, split: str, found: YoloSplit, config: YoloConfig, stage: int, checks: Checklist) -> None:
        self.split, self.found, self.config, self.stage, self.checks = split, found, config, stage, checks
        self.summary = SplitSummary()

    def fail(self, what: str, kind: str) -> None:
        self.checks.fail(f"[{self.split}] {what}", kind=kind)

    def _image_size(self, path: Path) -> tuple[int, int] | None:
        try:
            with Image.open(path) as img:
                size = oriented_size(img)
                img.load()
        except IMAGE_ERRORS as e:
            self.fail(f"{path}: cannot be decoded ({e}) -> replace or delete the image", "unreadable image")
            return None
        return size

    def run(self) -> None:
        images = list_images(self.found.images_dir)
        if not images:
            self.fail(f"{self.found.images_dir}: no images -> put the split's images there", "no images")
        for orphan in orphan_labels(self.found, images):
            self.fail(f"{orphan}: label file without an image -> add the image {orphan.stem}.* to "
                      f"{self.found.images_dir} or delete the label file", "label without image")
        for path in images:
            self._check_image(path)
        self.summary.images = len(images)

    def _check_image(self, path: Path) -> None:
        size = self._image_size(path)
        if size is None:
            return
        self.summary.sizes[size] += 1
        labels = label_path(self.found, path)
        if not labels.is_file():
            self.summary.images_without_annotations += 1  # a background image
            return
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.fail(f"{labels}: cannot be read ({e}) -> save it as UTF-8 text", "unreadable label file")
            return
        objects, problems = parse_label_text(labels, text, len(self.config.names), *size)
        for problem in problems:
            self.fail(str(problem), problem.kind)
        if not objects:
            self.summary.images_without_annotations += 1
        for obj in objects:
            self.summary.annotations += 1
            self.summary.per_class[self.config.names[obj["category_id"]]] += 1
            _, _, w, h = obj["bbox"]
            if w <= 0 or h <= 0:
                self.checks.warn(f"[{self.split}] {labels}:{obj['line']}: zero-area object -> give it a size or "
                                 "delete the line (it is dropped at load)", kind="zero-area object")
            if obj["segmentation"]:
                self.summary.mask_kinds["polygon"] += 1
                continue
            self.summary.mask_kinds["box only"] += 1
            if self.stage == 2:
                self.fail(f"{labels}:{obj['line']}: a box line (class cx cy w h) has no mask -> label the object "
                          "with a polygon (class x1 y1 x2 y2 ...): stage 2 trains on masks", "missing mask")


def _report_summary(config: YoloConfig, checkers: list[_YoloSplitChecker], checks: Checklist) -> None:
    train = checkers[0]
    for name in config.names:
        if train.split == "train" and train.summary.per_class[name] == 0:
            checks.warn(f"class '{name}' has no annotations in [train] -> add training examples or remove the class")
    print("\nDataset summary (YOLO)")
    for c in checkers:
        s = c.summary
        print(f"  {c.split:6s} images {s.images:5d} (background, no labels: {s.images_without_annotations})  "
              f"objects {s.annotations:6d}   images: {c.found.images_dir}  labels: {c.found.labels_dir}")
        s.print_details()


def validate_yolo_dataset(root: str | Path, checks: Checklist, stage: int = 1) -> list[SplitSummary]:
    """Check a YOLO dataset at ``root`` (data.yaml, Roboflow or Ultralytics layout); results go to ``checks``.

    Args:
        root: the dataset folder (holding data.yaml).
        checks: where PASS/WARN/FAIL lines go.
        stage: 2 makes a box-only line (no polygon, so no mask) a FAIL.

    Returns:
        The summaries of the splits found.
    """
    root = Path(root)
    try:
        config = read_data_yaml(root)
    except YoloDatasetError as e:
        checks.fail(str(e))
        return []
    checks.passed(f"{config.yaml_path.name}: {len(config.names)} classes {config.names}")
    checks.info(f"label coordinates may exceed [0, 1] by {COORD_SLACK:g} (rounding); they are clipped")
    checkers = []
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        found = find_split(root, split, config)
        if found is None:
            alias = "val" if split == "valid" else split
            if split in REQUIRED_SPLITS:
                checks.fail(f"[{split}] not found -> expected {root / split / 'images'} (Roboflow), "
                            f"{root / 'images' / alias} (Ultralytics) or a '{alias}' entry in {config.yaml_path.name}")
            else:
                checks.info(f"[{split}] not present (optional)")
            continue
        checker = _YoloSplitChecker(split, found, config, stage, checks)
        before = checks.counts["FAIL"]
        checker.run()
        checkers.append(checker)
        if checks.counts["FAIL"] == before:
            checks.passed(f"[{split}] {checker.summary.images} images, {checker.summary.annotations} objects checked")
    if checkers:
        _report_summary(config, checkers, checks)
    return [c.summary for c in checkers]
