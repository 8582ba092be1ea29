"""Do an exported file's detections agree with PyTorch's? The check behind the export report's verdict.

Comparing the raw outputs slot by slot (300 proposals) alarms without reason: near-tied proposals trade places
between two runtimes, so a slot holds another proposal and its box differs by a whole object, while the detections a
user sees are the same. What a user relies on is the detections above the threshold: each float32 PyTorch detection
that no allowed score change can push below the threshold must have a file detection of the same class with a close
box, a close score and the same mask where the float32 model is sure, and the file must not add confident detections
of its own. :func:`compare_detections` checks exactly that, on the network outputs of the same preprocessed images,
against the bounds the format states for the file's precision (:func:`stated_bound`; README's export table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision.ops import box_convert, box_iou

from rfdetr.deploy.export.formats import ExportFormat

__all__ = ["BF16_BOUND", "FLOAT_BOUNDS", "DetectionBound", "compare_detections", "merge", "stated_bound"]


@dataclass(frozen=True)
class DetectionBound:
    """How far a file's detections may be from float32 PyTorch's.

    Attributes:
        score: largest score change of a matched detection (and the band around the threshold where a detection
            may appear or vanish).
        box_iou: smallest IoU of a matched detection's box with PyTorch's.
        mask_iou: smallest mask IoU, taken over the pixels where PyTorch's mask logit exceeds ``mask_logit`` in
            magnitude (pixels nearer 0 may flip within the file's rounding).
        mask_logit: see ``mask_iou``.
    """

    score: float
    box_iou: float
    mask_iou: float
    mask_logit: float


# Float files. float32: the same arithmetic in another kernel order; logits agree to ~1e-4 (README), scores to a
# quarter of that (sigmoid's slope <= 1/4); 1e-3 leaves 40x for deeper models and other hosts. float16 weights: 11
# significant bits move logits by up to ~1e-2 on the models measured (tests/deploy/test_openvino.py FLOAT16).
FLOAT_BOUNDS: dict[str, DetectionBound] = {
    "float32": DetectionBound(score=1e-3, box_iou=0.99, mask_iou=0.98, mask_logit=0.1),
    "float16": DetectionBound(score=1e-2, box_iou=0.98, mask_iou=0.95, mask_logit=0.5),
}
# Float files computed in bfloat16 (``compute="bfloat16"``): bf16 keeps 8 significant bits against float16's 11, so
# rounding is 8x float16's, and it applies to every activation rather than only the weights: 8x the float16 score
# bound, and box / mask bounds as loose as INT8's, whose errors are of the same size (2^-8 of a tensor's range).
# INT8 files whose float remainder runs in bf16 keep their INT8 bound: the int8 rounding of the products' inputs
# dominates, and the auto choice (exporter) falls back to float32 where the bound is not met.
BF16_BOUND = DetectionBound(score=8e-2, box_iou=0.8, mask_iou=0.8, mask_logit=4.0)
# INT8 boxes and masks: IoU >= 0.8 (measured >= 0.93 for boxes on every host seen); mask pixels compared where the
# float32 logit is beyond 4 (INT8 flips pixels only where |logit| <= 2.44 on the demo model). The score bound is the
# format's own (the registry's ``Int8Export.score_tolerance``).
INT8_BOX_IOU = 0.8
INT8_MASK_IOU = 0.8
INT8_MASK_LOGIT = 4.0


def stated_bound(fmt: ExportFormat, precision: str, compute: str | None = None) -> DetectionBound:
    """The bound ``fmt`` states for files of ``precision`` (``float32``, ``float16`` or ``int8``) whose float parts
    ran in ``compute`` (``bfloat16``: :data:`BF16_BOUND` for float files; INT8 files keep the format's INT8 bound)."""
    if compute == "bfloat16" and precision != "int8":
        return BF16_BOUND
    if precision == "int8":
        if fmt.int8 is None:
            raise ValueError(f"{fmt.name} has no INT8 files")
        return DetectionBound(fmt.int8.score_tolerance, INT8_BOX_IOU, INT8_MASK_IOU, INT8_MASK_LOGIT)
    return FLOAT_BOUNDS[precision]


def _top(outputs: Sequence[torch.Tensor], index: int, num_select: int) -> dict[str, torch.Tensor]:
    """Image ``index``'s top ``num_select`` (query, class) pairs: scores, labels, normalised xyxy boxes (IoU does not
    depend on the scale), and each pair's mask logits [n, h, w] when the outputs have masks."""
    boxes, logits = outputs[0][index], outputs[1][index]
    scores, flat = logits.sigmoid().flatten().topk(min(num_select, logits.numel()))
    query, labels = flat // logits.shape[1], flat % logits.shape[1]
    top = {"scores": scores, "labels": labels, "boxes": box_convert(boxes[query], "cxcywh", "xyxy")}
    if len(outputs) > 2:
        top["masks"] = outputs[2][index][query]
    return top


def compare_detections(
    reference: Sequence[torch.Tensor],
    exported: Sequence[torch.Tensor],
    bound: DetectionBound,
    threshold: float = 0.5,
    num_select: int = 300,
) -> dict[str, Any]:
    """Match the detections of one batch of network outputs, PyTorch float32 against the file's.

    Args:
        reference: PyTorch's (boxes [B, Q, 4] normalised cxcywh, logits [B, Q, K][, mask logits [B, Q, h, w]]).
        exported: the file's outputs on the same input, same shapes.
        bound: what the file's format states for its precision.
        threshold: the detection threshold (``predict``'s default 0.5).
        num_select: (query, class) pairs kept per image before thresholding, as ``predict`` does.

    Returns:
        ``threshold``, ``compared`` (PyTorch detections that had to be found), ``missing`` (of those, found in the
        file within no bound), ``extra`` (confident file detections PyTorch does not have), ``max_score_diff``,
        ``min_box_iou``, ``min_mask_iou`` (None where nothing was compared), ``bound`` and ``meets``.
    """
    compared = missing = extra = 0
    score_diffs: list[float] = []
    box_ious: list[float] = []
    mask_ious: list[float] = []
    for b in range(reference[0].shape[0]):
        ours = _top(reference, b, num_select)
        theirs = _top(exported, b, num_select)
        sure_ours = torch.nonzero(ours["scores"] > threshold + bound.score).flatten()
        candidates = theirs["scores"] > threshold - bound.score
        for i in sure_ours.tolist():
            compared += 1
            same = torch.nonzero(candidates & (theirs["labels"] == ours["labels"][i])).flatten()
            if not len(same):
                missing += 1
                continue
            ious = box_iou(ours["boxes"][i : i + 1], theirs["boxes"][same])[0]
            j = int(same[int(ious.argmax())])
            iou = float(ious.max())
            diff = abs(float(theirs["scores"][j] - ours["scores"][i]))
            box_ious.append(iou)
            score_diffs.append(diff)
            ok = iou >= bound.box_iou and diff <= bound.score
            if "masks" in ours:
                logit = ours["masks"][i]
                sure = logit.abs() > bound.mask_logit
                a, c = (logit > 0) & sure, (theirs["masks"][j] > 0) & sure
                if bool(a.any()):
                    mask_iou = float((a & c).sum() / (a | c).sum())
                    mask_ious.append(mask_iou)
                    ok = ok and mask_iou >= bound.mask_iou
            missing += not ok
        # The file's own confident detections must be PyTorch's too (a file that invents objects fails).
        sure_theirs = torch.nonzero(theirs["scores"] > threshold + bound.score).flatten()
        for j in sure_theirs.tolist():
            same = (ours["scores"] > threshold - bound.score) & (ours["labels"] == theirs["labels"][j])
            if not bool(same.any()) or float(box_iou(theirs["boxes"][j : j + 1], ours["boxes"][same]).max()) < \
                    bound.box_iou:
                extra += 1
    return {
        "threshold": threshold, "compared": compared, "missing": missing, "extra": extra,
        "max_score_diff": float(f"{max(score_diffs):.3g}") if score_diffs else None,
        "min_box_iou": round(min(box_ious), 4) if box_ious else None,
        "min_mask_iou": round(min(mask_ious), 4) if mask_ious else None,
        "bound": asdict(bound), "meets": missing == 0 and extra == 0,
    }


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`compare_detections` result for several batches."""
    first = results[0]

    def pick(key: str, choose: Any) -> Any:
        values = [r[key] for r in results if r[key] is not None]
        return choose(values) if values else None

    return {
        "threshold": first["threshold"], "compared": sum(r["compared"] for r in results),
        "missing": sum(r["missing"] for r in results), "extra": sum(r["extra"] for r in results),
        "max_score_diff": pick("max_score_diff", max), "min_box_iou": pick("min_box_iou", min),
        "min_mask_iou": pick("min_mask_iou", min), "bound": first["bound"],
        "meets": all(r["meets"] for r in results),
    }
