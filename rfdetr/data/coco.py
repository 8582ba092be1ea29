"""COCO detection / instance-segmentation dataset in the Roboflow layout, and its collate function.

Layout: ``<root>/<split>/_annotations.coco.json`` with the images beside it (``split`` is train, valid or test), or a
YOLO dataset (``data.yaml``, images and ``.txt`` labels; see :mod:`rfdetr.data.yolo`), converted in memory to the same
COCO dict: the format is detected from the folder, and every reader of a dataset goes through this class or
:func:`rfdetr.data.annotations.load_split`.

Labels are contiguous ``0..K-1`` in category-id order. Roboflow exports add a project-level placeholder category
(id 0, supercategory ``"none"``) that no annotation uses; it is dropped, so a 3-class export has K = 3, and
:attr:`CocoDetection.label_to_category_id` maps labels back to the file's category ids for evaluation. Which
annotations become targets (crowd, clipping, degenerate boxes, missing masks) is decided in
:mod:`rfdetr.data.annotations`.

Target dict of one sample (the project convention, style guide 3.4), after the transforms:

- ``boxes``: float32 [N, 4], cxcywh normalised to [0, 1] by the transformed image's width and height.
- ``labels``: int64 [N], contiguous class indices.
- ``masks``: bool [N, H, W] at the transformed image size (only when ``masks=True``).
- ``image_id``: int64 scalar, the COCO image id.
- ``orig_size``: int64 [2], (h, w) of the image file (after EXIF orientation), i.e. the COCO annotation frame.
- ``size``: int64 [2], (h, w) of the returned image tensor.
- ``iscrowd``: int64 [N] (all 0 unless ``keep_crowd=True``).
- ``area``: float32 [N], the COCO ``area`` in original pixels (not rescaled by the transforms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF

from rfdetr.data.annotations import (
    BBOX_TOLERANCE_PX,
    ImageRecord,
    load_split,
    read_split,
    resolve_categories,
)
from rfdetr.data.image_io import UnreadableImageError, check_image, read_rgb
from rfdetr.data.masks import decode_mask

logger = logging.getLogger(__name__)

Transforms = Callable[[tv_tensors.Image, dict[str, Any]], tuple[Any, dict[str, Any]]]


class CocoDetection(Dataset):
    """Roboflow-layout COCO or YOLO split returning ``(image, target)`` (target keys in the module docstring).

    Args:
        root: dataset folder holding ``train/``, ``valid/`` (and optionally ``test/``), or a YOLO dataset.
        split: which split to read (``val`` and ``valid`` are the same split).
        transforms: paired transforms called as ``transforms(image, target)`` with a ``tv_tensors.Image`` uint8
            [3, H, W] and a target whose ``boxes`` are ``tv_tensors.BoundingBoxes`` (XYXY, absolute) and ``masks`` a
            ``tv_tensors.Mask`` bool [N, H, W]; see :mod:`rfdetr.data.transforms`. Without transforms the image is
            returned as float in [0, 1], unnormalised.
        masks: decode instance masks. Annotations without a segmentation are then dropped (an empty mask would be a
            wrong target), counted and logged.
        skip_images_without_masks: with ``masks``, leave out images that have no annotated mask at all (stage 2:
            nothing for the mask head to learn); the number skipped is logged.
        keep_crowd: keep ``iscrowd=1`` annotations in the targets. Off by default: crowd regions are neither
            positives nor ignore regions in training (they stay in the evaluation ground truth).
        substitute_unreadable: an image that cannot be decoded when a sample is drawn (broken after the up-front
            :func:`require_readable_images`) is replaced by the next readable one, with a warning naming it, instead
            of stopping the run (training splits; an evaluation split must keep every image).

    Raises:
        FileNotFoundError / ValueError: missing or malformed annotation file, missing image files, annotations that
            point to unknown images or categories, or malformed boxes/segmentations; messages name the file.
    """

    def __init__(self, root: str | Path, split: str, transforms: Transforms | None = None, masks: bool = False,
                 skip_images_without_masks: bool = False, keep_crowd: bool = False,
                 substitute_unreadable: bool = False) -> None:
        self.root, self.split = Path(root), split
        self.substitute_unreadable = substitute_unreadable
        self.transforms = transforms
        self.masks = masks
        # The COCO JSON, or a YOLO split's labels folder (for messages); ground_truth is what the evaluator reads: the
        # JSON's path, or the YOLO split's COCO dict (it exists in memory only, nothing is written to the dataset).
        self.annotation_file, data = load_split(self.root, split)
        self.ground_truth: Path | dict[str, Any] = self.annotation_file if self.annotation_file.is_file() else data
        categories = resolve_categories(data, self.root)
        self.class_names: list[str] = [c["name"] for c in categories]
        self.label_to_category_id: list[int] = [c["id"] for c in categories]
        category_to_label = {cat_id: label for label, cat_id in enumerate(self.label_to_category_id)}
        # Counts of every annotation or image changed or left out, logged once here (not per sample or epoch).
        records, self.stats = read_split(self.annotation_file, data, category_to_label, masks, keep_crowd)
        if masks and skip_images_without_masks:
            kept = [r for r in records if len(r.labels)]
            self.stats["images without masks skipped"] = len(records) - len(kept)
            records = kept
        self.records: list[ImageRecord] = records
        self._log_stats()

    def _where(self, what: str) -> str:
        return f"{self.annotation_file}: {what}"

    def _log_stats(self) -> None:
        # Boxes clipped by rounding only (as validate_setup.py counts them) are routine: an INFO line, not a warning.
        routine = ["crowd annotations left out"]
        if not any(k.startswith("boxes more than") for k in self.stats):
            routine.append("boxes clipped to the image")
        problems = {k: v for k, v in self.stats.items() if v and k not in routine}
        if problems:
            logger.warning("%s: %s", self.annotation_file, ", ".join(f"{v} {k}" for k, v in problems.items()))
        if self.stats["crowd annotations left out"]:
            logger.info("%s: %d crowd annotations left out of the training targets", self.annotation_file,
                        self.stats["crowd annotations left out"])
        if "boxes clipped to the image" in routine and self.stats["boxes clipped to the image"]:
            logger.info("%s: %d boxes clipped to the image (rounding: within %g px)", self.annotation_file,
                        self.stats["boxes clipped to the image"], BBOX_TOLERANCE_PX)
        logger.info("%s: %d images, %d classes %s", self.annotation_file, len(self.records), len(self.class_names),
                    self.class_names)

    @property
    def num_classes(self) -> int:
        """K, the number of classes (labels are 0..K-1)."""
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        """COCO image id of each index."""
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def load_sample(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The untransformed sample: uint8 image [3, H, W] and a target with tv_tensors boxes (XYXY px) and masks."""
        rec = self.records[index]
        pil = read_rgb(rec.path)
        if pil.size != (rec.width, rec.height):
            raise ValueError(self._where(f"image id {rec.image_id}: {rec.path} is {pil.size[0]}x{pil.size[1]} after "
                                         f"EXIF orientation but the JSON says {rec.width}x{rec.height}"))
        image = tv_tensors.Image(TF.pil_to_tensor(pil))
        canvas = (rec.height, rec.width)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(rec.boxes), format="XYXY", canvas_size=canvas),
            "labels": torch.from_numpy(rec.labels),
            "image_id": torch.tensor(rec.image_id, dtype=torch.int64),
            "orig_size": torch.tensor(canvas, dtype=torch.int64),
            "iscrowd": torch.from_numpy(rec.iscrowd),
            "area": torch.from_numpy(rec.area),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(self._decode_masks(rec))
        return image, target

    def _decode_masks(self, rec: ImageRecord) -> torch.Tensor:
        masks = np.zeros((len(rec.segmentations), rec.height, rec.width), dtype=bool)
        for i, (ann_id, segmentation) in enumerate(zip(rec.ann_ids, rec.segmentations, strict=True)):
            try:
                masks[i] = decode_mask(segmentation, rec.height, rec.width)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(self._where(f"annotation id {ann_id} (image {rec.path.name}): mask does not decode "
                                             f"({e})")) from e
        return torch.from_numpy(masks)

    def unreadable(self) -> list[tuple[Path, str]]:
        """(path, reason) of every image :func:`rfdetr.data.image_io.check_image` finds unreadable."""
        found = []
        for rec in self.records:
            reason = check_image(rec.path)
            if reason is not None:
                found.append((rec.path, reason))
        return found

    def _load_or_substitute(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        for step in range(len(self.records)):
            try:
                return self.load_sample((index + step) % len(self.records))
            except UnreadableImageError as err:
                if not self.substitute_unreadable:
                    raise
                logger.warning("%s; training on the next image in its place (replace the file or remove it from "
                               "%s)", err, self.annotation_file)
        raise UnreadableImageError(f"{self.annotation_file}: no image of the split can be read")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(image [3, H, W] float32, target)``; see the module docstring for the target keys."""
        image, target = self._load_or_substitute(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return finalize_sample(image, target)


class UnreadableImagesError(ValueError):
    """Images of a dataset cannot be read (one line: the first files, the count and the fix)."""


def require_readable_images(*datasets: CocoDetection | None) -> None:
    """Check every image of ``datasets`` before training starts (and before its run folder exists).

    Raises:
        UnreadableImagesError: naming the first unreadable files with PIL's reason, the count, and the fix.
    """
    start = time.perf_counter()
    found: list[tuple[Path, str]] = []
    total = 0
    for dataset in datasets:
        if dataset is not None:
            found += dataset.unreadable()
            total += len(dataset)
    logger.info("checked %d images in %.1fs: %d unreadable", total, time.perf_counter() - start, len(found))
    if found:
        named = "; ".join(f"{path} ({reason})" for path, reason in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        root = next(d for d in datasets if d is not None).root
        raise UnreadableImagesError(
            f"{len(found)} of {total} images cannot be read: {named}{more}. Replace "
            f"{'it' if len(found) == 1 else 'them'} (export again) or remove {'it' if len(found) == 1 else 'them'} "
            f"and {'its' if len(found) == 1 else 'their'} annotations from the split's _annotations.coco.json; "
            f"`python validate_setup.py "
            f"--dataset {root}` lists every problem")


def finalize_sample(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Turn a transformed sample into the model's convention: float image, normalised cxcywh boxes, bool masks.

    ``image`` [3, H, W] (uint8 is scaled to [0, 1]); ``target["boxes"]`` tv_tensors.BoundingBoxes in any format on
    the image's canvas. Returns plain tensors (no tv_tensors subclasses leak into the model code).
    """
    if image.dtype == torch.uint8:
        image = TF.to_dtype(image, torch.float32, scale=True)
    image = image.as_subclass(torch.Tensor)
    height, width = image.shape[-2:]
    out = {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
    boxes = TF.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.XYXY)
    boxes = box_convert(boxes.as_subclass(torch.Tensor).float(), "xyxy", "cxcywh")
    out["boxes"] = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)  # [N, 4] in [0, 1]
    if "masks" in out:
        out["masks"] = out["masks"].bool()
    out["size"] = torch.tensor([height, width], dtype=torch.int64)
    return image, out


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
               ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images into [B, 3, S, S]; targets stay a list of dicts.

    The square pipeline gives every image the same size, so no padding (and no padding mask) is needed.

    Raises:
        ValueError: the images differ in size (a non-square transform was used).
    """
    images, targets = zip(*batch, strict=True)
    sizes = {tuple(img.shape) for img in images}
    if len(sizes) > 1:
        raise ValueError(f"collate_fn needs images of one size, got {sorted(sizes)}; use the square transforms of "
                         "rfdetr.data.transforms")
    return torch.stack(images), list(targets)
