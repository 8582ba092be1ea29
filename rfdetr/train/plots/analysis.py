"""The numbers behind the run folder's curves and tables, from one COCO evaluation (numpy only, no drawing).

* :func:`pr_curves`: precision against recall at IoU 0.5, per class and for all classes: COCOeval's own interpolated
  ``eval["precision"]`` [T, R, K, A, M] at T = IoU 0.5, area "all", the largest maxDets, so the mean of the
  all-classes curve over the 101 recall points is the AP50 the evaluator reports.
* :func:`score_curves`: precision, recall and F1 against the score threshold at IoU 0.5, from the evaluation's own
  matches (``evalImgs``: ``dtScores``, ``dtMatches``, ``dtIgnore``, ``gtIgnore``), and the threshold that maximises F1.
* :func:`confusion_matrix`: predicted against true class at IoU 0.5 above a score threshold, with a background row
  (missed objects) and a background column (detections of nothing).
* :func:`per_class_rows`: the per-class table (images, instances, precision, recall, AP50, AP50:95).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PrCurves", "ScoreCurves", "box_iou", "confusion_from_results", "confusion_matrix", "ground_truth",
           "has_instances", "instance_counts", "per_class_rows",
           "pr_curves", "score_curves"]

# Score thresholds of the F1 curve: 0, 0.001, ..., 1.
SCORE_POINTS = 1001


@dataclass
class PrCurves:
    """Precision against recall at IoU 0.5.

    Attributes:
        recall: [R] COCOeval's recall points (101: 0, 0.01, ..., 1).
        precision: [K, R] per class; rows of classes without ground truth are -1 (COCOeval's "undefined").
        valid: [K] bool, the class has ground truth in the evaluated images.
        mean: [R] the mean over the valid classes (all -1 when none is valid).
        ap50: [K] mean of each valid row (-1 otherwise).
        ap50_95: [K] AP over IoU 0.5:0.95 (-1 without ground truth).
    """

    recall: np.ndarray
    precision: np.ndarray
    valid: np.ndarray
    mean: np.ndarray
    ap50: np.ndarray
    ap50_95: np.ndarray


@dataclass
class ScoreCurves:
    """Precision, recall and F1 at IoU 0.5 against the score threshold.

    Attributes:
        thresholds: [S] score thresholds (a detection counts when its score >= the threshold).
        precision, recall, f1: [K, S] per class (0 where nothing is detected).
        valid: [K] bool, the class has ground truth.
        f1_mean: [S] mean F1 over the valid classes.
        best: index into ``thresholds`` of the largest ``f1_mean``; on a plateau the highest threshold of it (the
            same F1 with the fewest low-score detections kept).
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    valid: np.ndarray
    f1_mean: np.ndarray
    best: int

    @property
    def threshold(self) -> float:
        """The score threshold that maximises the mean F1."""
        return float(self.thresholds[self.best])


def _iou50_index(coco_eval: Any) -> int:
    thresholds = np.asarray(coco_eval.params.iouThrs)
    index = int(np.argmin(np.abs(thresholds - 0.5)))
    if abs(thresholds[index] - 0.5) > 1e-9:
        raise ValueError(f"the evaluation has no IoU threshold 0.5 (it has {thresholds.tolist()})")
    return index


def _valid_mean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the entries > -1 along ``axis`` (-1 where there is none)."""
    valid = values > -1
    count = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)


def pr_curves(coco_eval: Any) -> PrCurves:
    """Precision-recall curves from an accumulated ``COCOeval`` (area "all", its largest maxDets).

    Args:
        coco_eval: after ``evaluate()`` and ``accumulate()``; classes in ``params.catIds`` order.
    """
    precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)[:, :, :, 0, -1]  # [T, R, K]
    t50 = _iou50_index(coco_eval)
    per_class = precision[t50].T  # [K, R]
    valid = (per_class > -1).all(axis=1)
    return PrCurves(recall=np.asarray(coco_eval.params.recThrs, dtype=np.float64), precision=per_class, valid=valid,
                    mean=_valid_mean(per_class, axis=0), ap50=_valid_mean(per_class, axis=1),
                    ap50_95=_valid_mean(precision.transpose(2, 0, 1).reshape(precision.shape[2], -1), axis=1))


def _class_matches(coco_eval: Any, k: int, t50: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and true-positive flags of class ``k``'s scored (not ignored) detections, and its ground-truth count.

    ``evalImgs`` is ordered [category, area range, image]; area range 0 is "all".
    """
    num_areas, num_images = len(coco_eval.params.areaRng), len(coco_eval.params.imgIds)
    start = k * num_areas * num_images
    scores, hits, num_gt = [], [], 0
    for entry in coco_eval.evalImgs[start:start + num_images]:
        if entry is None:
            continue
        num_gt += int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0))
        if not len(entry["dtScores"]):
            continue
        keep = ~np.asarray(entry["dtIgnore"], dtype=bool)[t50]
        scores.append(np.asarray(entry["dtScores"], dtype=np.float64)[keep])
        hits.append(np.asarray(entry["dtMatches"])[t50][keep] > 0)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool), num_gt
    return np.concatenate(scores), np.concatenate(hits), num_gt


def score_curves(coco_eval: Any, points: int = SCORE_POINTS) -> ScoreCurves:
    """Precision, recall and F1 against the score threshold at IoU 0.5, from ``coco_eval``'s per-image matches.

    A detection counts at threshold ``s`` when its score >= ``s``; a detection COCOeval ignores (matched to a crowd
    region) counts neither way, as in its AP.

    Args:
        coco_eval: after ``evaluate()`` (``evalImgs`` per category, area range and image).
        points: number of thresholds from 0 to 1.
    """
    t50 = _iou50_index(coco_eval)
    thresholds = np.linspace(0.0, 1.0, points)
    num_classes = len(coco_eval.params.catIds)
    precision = np.zeros((num_classes, points))
    recall = np.zeros((num_classes, points))
    valid = np.zeros(num_classes, dtype=bool)
    for k in range(num_classes):
        scores, hits, num_gt = _class_matches(coco_eval, k, t50)
        valid[k] = num_gt > 0
        order = np.argsort(scores, kind="stable")
        scores, hits = scores[order], hits[order]
        # Detections at or above each threshold: the tail of the ascending order from the first score >= it.
        first = np.searchsorted(scores, thresholds, side="left")
        tp_tail = np.concatenate([np.cumsum(hits[::-1])[::-1], [0]])
        count = len(scores) - first
        tp = tp_tail[first].astype(np.float64)
        precision[k] = np.where(count > 0, tp / np.maximum(count, 1), 0.0)
        recall[k] = tp / num_gt if num_gt else 0.0
    denominator = precision + recall
    f1 = np.where(denominator > 0, 2 * precision * recall / np.where(denominator > 0, denominator, 1.0), 0.0)
    f1_mean = f1[valid].mean(axis=0) if valid.any() else np.zeros(points)
    return ScoreCurves(thresholds=thresholds, precision=precision, recall=recall, f1=f1, valid=valid,
                       f1_mean=f1_mean, best=points - 1 - int(np.argmax(f1_mean[::-1])))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair: a [N, 4] and b [M, 4] xyxy -> [N, M]."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def confusion_matrix(gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray], det_boxes: Sequence[np.ndarray],
                     det_labels: Sequence[np.ndarray], det_scores: Sequence[np.ndarray], num_classes: int,
                     score_threshold: float, iou_threshold: float = 0.5) -> np.ndarray:
    """Counts of predicted against true class over some images; index ``num_classes`` is "background".

    Per image, the detections scoring >= ``score_threshold`` are matched to the ground truth regardless of class: the
    pairs with IoU >= ``iou_threshold`` are taken from the highest IoU down, each box at most once. A matched pair
    counts at [predicted class, true class] (the diagonal when the class is right), an unmatched detection at
    [predicted class, background] and an unmatched object at [background, true class].

    Args:
        gt_boxes, gt_labels: per image, [G, 4] xyxy and [G] labels in 0..num_classes-1.
        det_boxes, det_labels, det_scores: per image, [D, 4] xyxy, [D] labels and [D] scores.
        num_classes: K.
        score_threshold: the smallest score that counts as a detection.
        iou_threshold: the smallest IoU of a match.

    Returns:
        int64 [K + 1, K + 1]: rows predicted class, columns true class.
    """
    k = num_classes
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    for gb, gl, db, dl, ds in zip(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, strict=True):
        gl = np.asarray(gl, dtype=np.int64).reshape(-1)
        keep = np.asarray(ds).reshape(-1) >= score_threshold
        dl = np.asarray(dl, dtype=np.int64).reshape(-1)[keep]
        db = np.asarray(db, dtype=np.float64).reshape(-1, 4)[keep]
        iou = box_iou(db, gb)  # [D, G]
        det_used, gt_used = np.zeros(len(dl), dtype=bool), np.zeros(len(gl), dtype=bool)
        pairs = np.argwhere(iou >= iou_threshold)
        if len(pairs):
            pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
        for d, g in pairs:
            if det_used[d] or gt_used[g]:
                continue
            det_used[d] = gt_used[g] = True
            matrix[dl[d], gl[g]] += 1
        np.add.at(matrix, (dl[~det_used], k), 1)
        np.add.at(matrix, (k, gl[~gt_used]), 1)
    return matrix


def ground_truth(coco_gt: Any, image_id: int, category_to_label: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's non-crowd ground truth of the evaluated categories: (xyxy [G, 4], labels [G])."""
    anns = [a for a in coco_gt.imgToAnns.get(image_id, [])
            if not a.get("iscrowd", 0) and int(a["category_id"]) in category_to_label]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes, np.array([category_to_label[int(a["category_id"])] for a in anns], dtype=np.int64)


def confusion_from_results(coco_gt: Any, results: Mapping[int, Mapping[str, list[dict[str, Any]]]],
                           label_to_category_id: Sequence[int], score_threshold: float,
                           iou_threshold: float = 0.5) -> np.ndarray:
    """:func:`confusion_matrix` of a :class:`~rfdetr.data.coco_eval.CocoEvaluator`'s boxes (``results``: image id ->
    ``{"bbox": [COCO result dicts]}``) against its ground truth ``coco_gt``, over the images in ``results``."""
    category_to_label = {int(c): i for i, c in enumerate(label_to_category_id)}
    gt_boxes, gt_labels, det_boxes, det_labels, det_scores = [], [], [], [], []
    for image_id in sorted(results):
        boxes, labels = ground_truth(coco_gt, image_id, category_to_label)
        gt_boxes.append(boxes)
        gt_labels.append(labels)
        dets = [d for d in results[image_id].get("bbox", []) if int(d["category_id"]) in category_to_label]
        xyxy = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        det_boxes.append(xyxy)
        det_labels.append(np.array([category_to_label[int(d["category_id"])] for d in dets], dtype=np.int64))
        det_scores.append(np.array([d["score"] for d in dets], dtype=np.float64))
    return confusion_matrix(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, len(label_to_category_id),
                            score_threshold, iou_threshold)


def instance_counts(coco_gt: Any, image_ids: Sequence[int], label_to_category_id: Sequence[int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per class: (images holding at least one non-crowd instance, non-crowd instances), over ``image_ids``."""
    category_to_label = {int(c): i for i, c in enumerate(label_to_category_id)}
    images = np.zeros(len(label_to_category_id), dtype=np.int64)
    instances = np.zeros(len(label_to_category_id), dtype=np.int64)
    for image_id in image_ids:
        _, labels = ground_truth(coco_gt, image_id, category_to_label)
        np.add.at(instances, labels, 1)
        images[np.unique(labels)] += 1
    return images, instances


def has_instances(coco_gt: Any, image_id: int) -> bool:
    """Whether the image holds a non-crowd ground-truth object."""
    return any(not a.get("iscrowd", 0) for a in coco_gt.imgToAnns.get(image_id, []))


def per_class_rows(kind: str, class_names: Sequence[str], images: np.ndarray, instances: np.ndarray, pr: PrCurves,
                   scores: ScoreCurves, images_with_instances: int) -> list[dict[str, Any]]:
    """One table row per class, then an ``all`` row, for one iou type (``kind``: ``box`` or ``mask``).

    Precision and recall are read at the all-classes F1-maximising threshold; AP50 and AP50:95 are the evaluator's
    (empty for a class without ground truth). The ``all`` row's AP50 / AP50:95 / precision / recall are the means over
    the classes with ground truth (COCO's mAP), its images ``images_with_instances``.
    """
    best = scores.best
    rows = []
    for k, name in enumerate(class_names):
        has_gt = bool(pr.valid[k])
        rows.append({"type": kind, "class": name, "images": int(images[k]), "instances": int(instances[k]),
                     "threshold": scores.threshold,
                     "precision": float(scores.precision[k, best]) if has_gt else None,
                     "recall": float(scores.recall[k, best]) if has_gt else None,
                     "f1": float(scores.f1[k, best]) if has_gt else None,
                     "AP50": float(pr.ap50[k]) if has_gt else None,
                     "AP50:95": float(pr.ap50_95[k]) if has_gt else None})
    valid = pr.valid
    any_valid = bool(valid.any())
    rows.append({"type": kind, "class": "all", "images": images_with_instances, "instances": int(instances.sum()),
                 "threshold": scores.threshold,
                 "precision": float(scores.precision[valid, best].mean()) if any_valid else None,
                 "recall": float(scores.recall[valid, best].mean()) if any_valid else None,
                 "f1": float(scores.f1_mean[best]),
                 "AP50": float(pr.ap50[valid].mean()) if any_valid else None,
                 "AP50:95": float(pr.ap50_95[valid].mean()) if any_valid else None})
    return rows
