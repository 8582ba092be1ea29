"""Box conversions and the paired IoU/GIoU used for matched pairs."""

from __future__ import annotations

import torch

from rfdetr.util.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_box_iou,
    paired_generalized_box_iou,
)


def _random_xyxy(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5 + 0.01
    return box_cxcywh_to_xyxy(torch.cat([cxcy, wh], dim=1))


def test_format_round_trip() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.1]])
    xyxy = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy[0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)


def test_paired_iou_is_the_pairwise_diagonal() -> None:
    a, b = _random_xyxy(50, 0), _random_xyxy(50, 1)
    torch.testing.assert_close(paired_box_iou(a, b), box_iou(a, b).diagonal())
    torch.testing.assert_close(paired_generalized_box_iou(a, b), generalized_box_iou(a, b).diagonal())


def test_iou_and_giou_bounds() -> None:
    a, b = _random_xyxy(200, 2), _random_xyxy(200, 3)
    iou, giou = paired_box_iou(a, b), paired_generalized_box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1) & (giou <= iou + 1e-6)).all()  # GIoU <= IoU, and >= -1
    torch.testing.assert_close(paired_box_iou(a, a), torch.ones(200))
    torch.testing.assert_close(paired_generalized_box_iou(a, a), torch.ones(200))


def test_disjoint_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 0.1, 0.1]])
    b = torch.tensor([[0.9, 0.9, 1.0, 1.0]])
    assert paired_box_iou(a, b).item() == 0.0
    torch.testing.assert_close(paired_generalized_box_iou(a, b), torch.tensor([0.02 - 1.0]))  # union 0.02, hull 1
