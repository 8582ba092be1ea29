"""COCO bbox and segm mAP of any predictor (a checkpoint's :class:`~rfdetr.detr.RFDETR` or an exported file's
:class:`~rfdetr.deploy.runtime.runner.ExportedModel`) on a split of a COCO dataset, through its own ``predict()``.

Scoring the same ``predict()`` the user calls (pre-processing, runtime, post-processing) is what makes the numbers of
an exported file comparable with the PyTorch model's. Predictions are kept at threshold 0 (every ``num_select``
detection), as COCO evaluation expects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from rfdetr.data.coco import CocoDetection
from rfdetr.data.coco_eval import CocoEvaluator
from rfdetr.data.image_io import read_rgb
from rfdetr.deploy.runtime.detections import Detections

__all__ = ["EvaluationResult", "evaluate_predictor", "label_mapping"]

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    class_names: list[str]
    masks: bool

    def predict(self, images: Any, threshold: float = 0.5) -> Detections | list[Detections]: ...


EvaluationResult = dict[str, Any]


def label_mapping(model_names: Sequence[str], dataset_names: Sequence[str]) -> list[int]:
    """Dataset label of each model label, matched by class name (-1 where the dataset has no such class).

    A model whose names match none of the dataset's (e.g. ``class_0`` ... from a file without names) is taken to be
    indexed like the dataset, with a warning.
    """
    index = {name: i for i, name in enumerate(dataset_names)}
    mapping = [index.get(name, -1) for name in model_names]
    if all(m < 0 for m in mapping):
        logger.warning("none of the model's class names %s is a class of the dataset %s: assuming the model's label "
                       "i is the dataset's label i", list(model_names)[:8], list(dataset_names))
        return [i if i < len(dataset_names) else -1 for i in range(len(model_names))]
    return mapping


def evaluate_predictor(
    predictor: Predictor,
    dataset: str | os.PathLike[str],
    split: str = "valid",
    max_dets: int = 100,
    progress: bool = True,
) -> EvaluationResult:
    """COCO metrics of ``predictor`` on ``dataset``'s ``split``.

    Args:
        predictor: anything with ``predict(image, threshold)``, ``class_names`` and ``masks``.
        dataset: a Roboflow-layout COCO dataset folder, or a YOLO dataset (segm ground truth from its polygons).
        split: ``valid`` (or ``val``), ``test`` or ``train``.
        max_dets: detections per image COCOeval considers.
        progress: show a progress bar.

    Returns:
        ``{"split", "images", "bbox": {...}, "segm": {...} (with masks), "summary"}``; each iou type holds ``mAP``
        (50:95), ``mAP50``, ``mAP75``, the 12 ``stats`` and ``per_class_AP`` / ``per_class_AP50``.

    Raises:
        FileNotFoundError, ValueError: the dataset or split is missing or malformed (the message names the file).
    """
    with_masks = bool(getattr(predictor, "masks", False))
    data = CocoDetection(dataset, split, masks=False)  # ground truth masks are read by the evaluator itself
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    evaluator = CocoEvaluator(data.ground_truth, data.label_to_category_id, data.class_names, iou_types, max_dets)
    mapping = torch.tensor(label_mapping(predictor.class_names, data.class_names) + [-1])  # -1: unknown labels
    for record in tqdm(data.records, desc=f"evaluate {split}", unit="img", disable=not progress):
        image = np.asarray(read_rgb(record.path))
        det = predictor.predict(image, threshold=0.0)
        assert isinstance(det, Detections)
        labels = torch.from_numpy(det.class_id).clamp(-1, len(mapping) - 1)
        pred = {"boxes": torch.from_numpy(det.xyxy), "scores": torch.from_numpy(det.confidence),
                "labels": mapping[labels]}
        if with_masks:
            height, width = image.shape[:2]
            mask = det.mask if det.mask is not None else np.zeros((0, height, width), dtype=bool)
            pred["masks"] = torch.from_numpy(mask)
        evaluator.update({record.image_id: pred})
    metrics = evaluator.evaluate()
    return {"split": split, "images": len(data.records), **metrics, "summary": evaluator.summary}
