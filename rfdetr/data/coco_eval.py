"""COCO evaluation (``bbox`` and ``segm``) with pycocotools' COCOeval, usable from every training stage and under DDP.

The ground truth is the split's JSON as exported, with one fix applied in memory: annotation ids are renumbered
from 1. pycocotools stores the id of the matched ground truth as "match" and treats 0 as "no match", so a ground
truth with id 0 (Roboflow exports start at 0) turns its true positive into a false positive. The file on disk is
never modified.

Usage::

    evaluator = CocoEvaluator.from_dataset(val_dataset)
    for images, targets in loader:
        ...
        evaluator.update({int(t["image_id"]): p for t, p in zip(targets, predictions)})
    stats = evaluator.evaluate()      # gathers across DDP ranks first (a collective: call it on every rank) ...
    logger.info(evaluator.summary)

    evaluator.synchronize()           # ... or gather on every rank, then
    if rank == 0:
        stats = evaluator.evaluate()  # score on the main rank only
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rfdetr.data.annotations import load_coco_json
from rfdetr.data.masks import encode_masks

logger = logging.getLogger(__name__)

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
# Names of COCOeval's 12 summary numbers; "AR_max" is recall at the evaluator's max_dets (100 by default).
STAT_NAMES: tuple[str, ...] = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
                               "AR1", "AR10", "AR_max", "AR_small", "AR_medium", "AR_large")


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture pycocotools' prints (it has no verbosity switch); the captured text is available to the caller."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


def load_ground_truth(annotation_file: str | Path | dict[str, Any]) -> COCO:
    """A pycocotools COCO object of ``annotation_file`` (a COCO JSON, or its parsed dict such as a YOLO split's from
    :func:`rfdetr.data.yolo.yolo_split_to_coco`) with annotation ids renumbered 1..N (in memory only)."""
    data = annotation_file if isinstance(annotation_file, dict) else load_coco_json(annotation_file)
    data = {**data, "annotations": [{**ann, "id": i + 1} for i, ann in enumerate(data["annotations"])]}
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def _empty_results(gt: COCO) -> COCO:
    """A detections object with no detections (``COCO.loadRes`` cannot take an empty list)."""
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                  "annotations": []}
    with _quiet():
        dt.createIndex()
    return dt


class CocoEvaluator:
    """Accumulates predictions per image and scores them with COCOeval.

    Args:
        annotation_file: the split's COCO JSON (the ground truth), or its content as a dict (a YOLO split's, which
            exists in memory only).
        label_to_category_id: category id of each contiguous label (``CocoDetection.label_to_category_id``).
        class_names: name of each label, for the per-class APs (defaults to the JSON's category names).
        iou_types: any of ``"bbox"``, ``"segm"``; ``segm`` needs ``masks`` in the predictions.
        max_dets: detections per image and category considered by COCOeval (the third maxDets slot; 100 is
            standard COCO, upstream's training-time evaluation uses 500).
    """

    def __init__(self, annotation_file: str | Path | dict[str, Any], label_to_category_id: Sequence[int],
                 class_names: Sequence[str] | None = None, iou_types: Sequence[str] = ("bbox",),
                 max_dets: int = 100) -> None:
        unknown = set(iou_types) - set(IOU_TYPES)
        if unknown or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {tuple(iou_types)}")
        # For messages: the JSON's path, or where an in-memory dict came from (a YOLO split's labels folder).
        self.annotation_file = Path(annotation_file.get("info", {}).get("source", "<ground truth in memory>")
                                    if isinstance(annotation_file, dict) else annotation_file)
        self.coco_gt = load_ground_truth(annotation_file)
        self.label_to_category_id = [int(c) for c in label_to_category_id]
        missing = set(self.label_to_category_id) - set(self.coco_gt.getCatIds())
        if missing:
            raise ValueError(f"{self.annotation_file}: category ids {sorted(missing)} are not in its categories")
        if class_names is None:
            class_names = [self.coco_gt.cats[c]["name"] for c in self.label_to_category_id]
        if len(class_names) != len(self.label_to_category_id):
            raise ValueError(f"{len(class_names)} class names for {len(self.label_to_category_id)} labels")
        self.class_names = list(class_names)
        self.iou_types = tuple(iou_types)
        self.max_dets = max_dets
        # Labels whose category has at least one ground-truth object in the file (crowd ones included, to be safe).
        # COCOeval skips a category without ground truth in every AP and AR (its entries stay -1), so detections of
        # the others (e.g. a Roboflow export's unused placeholder category 0) cannot change any number.
        with_gt = {int(a["category_id"]) for a in self.coco_gt.dataset.get("annotations", [])}
        self._label_has_gt = torch.tensor([c in with_gt for c in self.label_to_category_id], dtype=torch.bool)
        self.summary = ""
        # The last evaluate()'s COCOeval per iou type (precision arrays, per-image matches), for the run folder's
        # curves and confusion matrix (rfdetr.train.plots); replaced, never mutated, by the next evaluate().
        self.coco_evals: dict[str, COCOeval] = {}
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any, iou_types: Sequence[str] | None = None, max_dets: int = 100
                     ) -> CocoEvaluator:
        """An evaluator for a :class:`rfdetr.data.coco.CocoDetection` split (``segm`` too when it loads masks)."""
        if iou_types is None:
            iou_types = IOU_TYPES if dataset.masks else ("bbox",)
        ground_truth = getattr(dataset, "ground_truth", dataset.annotation_file)
        return cls(ground_truth, dataset.label_to_category_id, dataset.class_names, iou_types, max_dets)

    def scorable(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Which of one image's detections can change a COCOeval number; the others need no mask (pass this as
        :class:`rfdetr.models.PostProcess`'s ``keep``, so only these masks are pasted and RLE-encoded).

        A detection cannot count when its label has no category (e.g. the head's spare "background" logit), when its
        category has no ground truth in the file, or when it ranks below the best of its category in the image:
        COCOeval truncates each (image, category) to its largest maxDets value (``max(10, max_dets)``: it sorts the
        list ``[1, 10, max_dets]``) after a stable sort by descending score, which is the order of
        ``torch.sort(stable=True)`` here. Dropping these leaves every bbox and segm number bit-identical.

        Args:
            scores: [n] detection scores of one image.
            labels: [n] contiguous labels.

        Returns:
            [n] bool, on ``scores``' device.
        """
        num_labels = len(self.label_to_category_id)
        valid = (labels >= 0) & (labels < num_labels)
        has_gt = self._label_has_gt.to(labels.device)[labels.clamp(0, num_labels - 1)]
        keep = valid & has_gt
        order = torch.sort(scores, descending=True, stable=True).indices
        sorted_labels = torch.where(keep[order], labels[order], num_labels)  # num_labels: a "dropped" bin
        # Rank of each detection among the earlier (higher or equal, stable) ones of its label: a running count.
        one_hot = torch.nn.functional.one_hot(sorted_labels, num_labels + 1)
        rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
        in_top = torch.empty_like(keep)
        in_top[order] = rank < max(self._max_dets_slots)
        return keep & in_top

    @property
    def _max_dets_slots(self) -> tuple[int, int, int]:
        """COCOeval's maxDets (it sorts them and truncates each image and category to the largest)."""
        return (1, 10, self.max_dets)

    def reset(self) -> None:
        """Forget all predictions (call before each evaluation pass)."""
        # image_id -> iou type -> COCO result dicts. Keyed by image so that an image evaluated twice (DDP padding)
        # counts once.
        self._results: dict[int, dict[str, list[dict[str, Any]]]] = {}
        self._unknown_labels = 0
        self._synchronized = False

    @property
    def results(self) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """image id -> iou type -> the COCO result dicts added so far (read-only; :meth:`reset` starts a new dict)."""
        return self._results

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images added so far on this process (all ranks' after :meth:`synchronize`)."""
        return sorted(self._results)

    def update(self, predictions: Mapping[int | torch.Tensor, Mapping[str, torch.Tensor]]) -> None:
        """Add the detections of some images.

        Args:
            predictions: image_id -> dict with ``boxes`` [K, 4] absolute xyxy in original-image pixels, ``scores``
                [K], ``labels`` [K] contiguous labels, and for ``segm`` ``masks`` [K, H, W] or [K, 1, H, W] bool at
                the original image size. An image with K = 0 still counts as evaluated (its objects are misses).

        Raises:
            ValueError: unknown image id, or ``segm`` requested without masks / with masks of the wrong size.
        """
        for image_id, pred in predictions.items():
            image_id = int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image id {image_id} is not in {self.annotation_file}")
            self._results[image_id] = self._convert(image_id, pred)
            self._synchronized = False

    def _convert(self, image_id: int, pred: Mapping[str, torch.Tensor]) -> dict[str, list[dict[str, Any]]]:
        # COCOeval reads Python numbers: whatever device the predictions are on, they come to the CPU here.
        boxes = torch.as_tensor(pred["boxes"], device="cpu").detach().float().reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"], device="cpu").detach().float().reshape(-1)
        labels = torch.as_tensor(pred["labels"], device="cpu").detach().reshape(-1).long()
        # Labels without a category (e.g. an extra "background" logit slot) cannot be scored; count and skip them.
        keep = (labels >= 0) & (labels < len(self.label_to_category_id))
        self._unknown_labels += int((~keep).sum())
        category_ids = [self.label_to_category_id[i] for i in labels[keep].tolist()]
        scores_list = scores[keep].tolist()
        out: dict[str, list[dict[str, Any]]] = {}
        if "bbox" in self.iou_types:
            xywh = boxes[keep].clone()
            xywh[:, 2:] -= xywh[:, :2]
            out["bbox"] = [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                           for c, b, s in zip(category_ids, xywh.tolist(), scores_list, strict=True)]
        if "segm" in self.iou_types:
            masks = pred.get("masks")
            if masks is None:
                raise ValueError("segm evaluation needs 'masks' in the predictions")
            masks = torch.as_tensor(masks, device="cpu").detach()
            if masks.ndim == 4:
                masks = masks[:, 0]
            img = self.coco_gt.imgs[image_id]
            if masks.shape[0] and tuple(masks.shape[-2:]) != (img["height"], img["width"]):
                raise ValueError(f"image id {image_id}: masks are {tuple(masks.shape[-2:])}, the image is "
                                 f"{(img['height'], img['width'])} (resize masks to the original size)")
            if not bool(keep.all()):  # evaluate() passes only scorable detections: usually no copy here
                masks = masks[keep]
            rles = encode_masks(masks if masks.dtype == torch.bool else masks.bool()) if masks.shape[0] else []
            out["segm"] = [{"image_id": image_id, "category_id": c, "segmentation": r, "score": s}
                           for c, r, s in zip(category_ids, rles, scores_list, strict=True)]
        return out

    def synchronize(self) -> None:
        """Merge the predictions of all DDP ranks into every rank (no-op without torch.distributed).

        A collective: every rank must call it. Afterwards :meth:`evaluate` may run on the main rank alone.
        """
        self._synchronized = True
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._results, self._unknown_labels))
        merged: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for results, _ in parts:
            for image_id, res in results.items():
                merged.setdefault(image_id, res)  # the DistributedSampler's padding repeats images across ranks
        self._results = merged
        self._unknown_labels = sum(n for _, n in parts)

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Run COCOeval for each iou type, first gathering across ranks unless :meth:`synchronize` already did.

        Images scored: those passed to :meth:`update` (with or without detections), or every ground-truth image when
        :meth:`update` was never called. No detections at all gives mAP 0, not an error.

        Returns:
            iou type -> {``mAP``, ``mAP50``, ``mAP75`` (floats in [0, 1]), ``stats`` (COCOeval's 12 numbers, in the
            order of :data:`STAT_NAMES`; -1 where undefined), ``per_class_AP`` and ``per_class_AP50`` (class name ->
            AP, -1 for a class without ground truth in the scored images)}. :attr:`summary` holds the printable
            report.
        """
        if not self._synchronized:
            self.synchronize()
        if self._unknown_labels:
            logger.warning("%d predictions had labels outside 0..%d and were not scored", self._unknown_labels,
                           len(self.label_to_category_id) - 1)
        img_ids = sorted(self._results) or sorted(self.coco_gt.getImgIds())
        results, summaries = {}, []
        self.coco_evals = {}
        for iou_type in self.iou_types:
            dets = [dict(d) for i in img_ids for d in self._results.get(i, {}).get(iou_type, [])]
            with _quiet():  # loadRes writes into the dicts it gets, hence the copies above
                coco_dt = self.coco_gt.loadRes(dets) if dets else _empty_results(self.coco_gt)
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType=iou_type)
            coco_eval.params.imgIds = img_ids
            coco_eval.params.catIds = self.label_to_category_id
            coco_eval.params.maxDets = list(self._max_dets_slots)
            with _quiet():
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            results[iou_type] = self._stats(coco_eval)
            self.coco_evals[iou_type] = coco_eval
            summaries.append(format_summary(iou_type, results[iou_type], self.max_dets))
        self.summary = "\n".join(summaries)
        return results

    def _stats(self, coco_eval: COCOeval) -> dict[str, Any]:
        stats = [float(s) for s in coco_eval.stats]
        # precision: [T iou thresholds, R recall points, K classes (in params.catIds order), A areas, M maxDets].
        precision = coco_eval.eval["precision"]
        per_class, per_class50 = {}, {}
        for k, name in enumerate(self.class_names):
            per_class[name] = _mean_valid(precision[:, :, k, 0, -1])
            per_class50[name] = _mean_valid(precision[0, :, k, 0, -1])
        # pycocotools' summary computes stats[0] (AP50:95) at maxDets=100 only, so it is -1 whenever the last maxDets
        # slot is not 100 (upstream's 500); read every AP at the last slot from the precision array instead.
        all_area = precision[..., 0, -1]  # [T, R, K]
        stats[0] = _mean_valid(all_area)
        return {"mAP": max(stats[0], 0.0), "mAP50": max(_mean_valid(all_area[0]), 0.0),
                "mAP75": max(_mean_valid(all_area[5]), 0.0), "stats": stats,
                "per_class_AP": per_class, "per_class_AP50": per_class50}


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries COCOeval defined (it writes -1 where a class has no ground truth)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


# The 12 lines of pycocotools' summary: (AP or AR, IoU range, area, which maxDets slot).
_SUMMARY_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("Precision", "0.50:0.95", "all", 2), ("Precision", "0.50", "all", 2), ("Precision", "0.75", "all", 2),
    ("Precision", "0.50:0.95", "small", 2), ("Precision", "0.50:0.95", "medium", 2),
    ("Precision", "0.50:0.95", "large", 2), ("Recall", "0.50:0.95", "all", 0), ("Recall", "0.50:0.95", "all", 1),
    ("Recall", "0.50:0.95", "all", 2), ("Recall", "0.50:0.95", "small", 2), ("Recall", "0.50:0.95", "medium", 2),
    ("Recall", "0.50:0.95", "large", 2),
)


def format_summary(iou_type: str, result: Mapping[str, Any], max_dets: int) -> str:
    """The printable report of one iou type: pycocotools' 12 lines from ``result["stats"]``, then per-class APs.

    pycocotools' own print reads its first line at maxDets=100 and shows -1 when the last slot is another value
    (upstream trains with 500); this table prints the numbers :meth:`CocoEvaluator.evaluate` returns. A class with no
    ground truth in the scored images says so instead of showing -1.

    Args:
        iou_type: ``bbox`` or ``segm``.
        result: one entry of :meth:`CocoEvaluator.evaluate`'s result.
        max_dets: the evaluator's last maxDets slot.
    """
    slots = (1, 10, max_dets)
    lines = [f"IoU metric: {iou_type}"]
    for (kind, iou, area, slot), value in zip(_SUMMARY_ROWS, result["stats"], strict=True):
        short = "AP" if kind == "Precision" else "AR"
        title = f"Average {kind}"
        lines.append(f" {title:<18} ({short}) @[ IoU={iou:<9} | area={area:>6} | maxDets={slots[slot]:>3} ] = "
                     f"{value:0.3f}")
    per_class = ", ".join(f"{name} {ap:.3f}" if ap >= 0 else f"{name}: no ground truth"
                          for name, ap in result["per_class_AP"].items())
    lines.append(f"per-class AP: {per_class}")
    return "\n".join(lines)
