"""Box formats and overlaps.

Boxes travel through the model as normalised ``(cx, cy, w, h)`` and are compared as ``(x1, y1, x2, y2)``.
torchvision already provides the conversions and the pairwise (all-against-all) IoU/GIoU matrices, so they are
re-exported here under one import; this module only adds the *paired* (element-wise) IoU that the losses need for
matched (prediction, target) pairs, where building an N x N matrix just to read its diagonal would waste memory.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou, generalized_box_iou_loss

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "paired_box_iou",
    "paired_generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] ``(cx, cy, w, h)`` -> [..., 4] ``(x1, y1, x2, y2)``."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] ``(x1, y1, x2, y2)`` -> [..., 4] ``(cx, cy, w, h)``."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]`` (the diagonal of :func:`box_iou`, without the N x N matrix).

    Args:
        boxes1: [N, 4] xyxy.
        boxes2: [N, 4] xyxy.

    Returns:
        [N] IoU. No epsilon is added, so two empty boxes give NaN, exactly like ``box_iou``.
    """
    top_left = torch.max(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(dim=-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(dim=-1)
    return inter / (area1 + area2 - inter)


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of ``boxes1[i]`` with ``boxes2[i]`` (the diagonal of :func:`generalized_box_iou`).

    Args:
        boxes1: [N, 4] xyxy.
        boxes2: [N, 4] xyxy.

    Returns:
        [N] GIoU in [-1, 1]. ``eps=0`` keeps it identical to the pairwise matrix's diagonal.
    """
    return 1.0 - generalized_box_iou_loss(boxes1, boxes2, reduction="none", eps=0.0)
