"""Group-wise Hungarian matching between queries and targets (spec section 4.2).

Group DETR trains ``group_detr`` independent copies of the query set. Each group is matched on its own, so every target
gets one positive query *per group*; at inference only group 0 runs (``group_detr=1``).
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from rfdetr.losses.functional import focal_class_cost, pairwise_dice_cost, pairwise_sigmoid_ce_cost
from rfdetr.losses.mask_logits import as_mask_logits, point_sample
from rfdetr.util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "build_matcher"]

Indices = list[tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``C = w_cls*focal + w_bbox*L1 + w_giou*(-GIoU) [+ w_ce*BCE + w_dice*dice]``.

    Args:
        cost_class: weight of the focal class cost.
        cost_bbox: weight of the L1 distance between cxcywh boxes.
        cost_giou: weight of ``-GIoU`` between xyxy boxes.
        focal_alpha: alpha of the focal class cost.
        focal_gamma: gamma of the focal class cost.
        use_masks: add point-sampled mask costs (segmentation); needs ``pred_masks`` and target ``masks``.
        cost_mask_ce: weight of the mean point BCE (only with ``use_masks``).
        cost_mask_dice: weight of the point dice loss (only with ``use_masks``).
        mask_point_sample_ratio: the masks are compared at ``Hm * Wm // ratio`` random points.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        use_masks: bool = False,
        cost_mask_ce: float = 5.0,
        cost_mask_dice: float = 5.0,
        mask_point_sample_ratio: int = 16,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.use_masks = use_masks
        self.cost_mask_ce = cost_mask_ce
        self.cost_mask_dice = cost_mask_dice
        self.mask_point_sample_ratio = mask_point_sample_ratio

    @torch.no_grad()
    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], group_detr: int = 1) -> Indices:
        """Match every query group of every image to that image's targets.

        Args:
            outputs: ``pred_logits`` [B, G*Q, K] logits; ``pred_boxes`` [B, G*Q, 4] normalised cxcywh; with
                ``use_masks``, ``pred_masks`` (see :mod:`rfdetr.losses.mask_logits`).
            targets: B dicts with ``labels`` [T_i] int64 and ``boxes`` [T_i, 4] normalised cxcywh; with
                ``use_masks``, ``masks`` [T_i, H, W] (bool or {0, 1}).
            group_detr: G, the number of query groups (13 in training, 1 at evaluation).

        Returns:
            B tuples ``(query_idx, target_idx)`` of int64 tensors on the logits' device (the assignment is solved
            on the CPU; one copy per image here instead of one per use in every loss). For image i both have length
            ``G * min(Q, T_i)``; group g's pairs come g-th, with query indices in ``[g*Q, (g+1)*Q)`` sorted
            ascending within the group. Every target appears once per group.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, num_queries = logits.shape[:2]
        if num_queries % group_detr:
            raise ValueError(f"{num_queries} queries do not split into {group_detr} groups")
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64, device=logits.device)
            return [(empty, empty.clone()) for _ in targets]

        # One [B*N, sum(T)] cost over the whole batch (cheap on GPU); off-image blocks are simply never read.
        flat_logits = logits.flatten(0, 1).float()
        flat_boxes = boxes.flatten(0, 1).float()
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(flat_boxes.dtype)
        cost = self.cost_class * focal_class_cost(flat_logits, tgt_labels, self.focal_alpha, self.focal_gamma)
        cost = cost + self.cost_bbox * torch.cdist(flat_boxes, tgt_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(flat_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        cost = cost - self.cost_giou * giou
        per_image = list(cost.view(batch, num_queries, -1).split(sizes, dim=-1))  # [N, T_i] blocks live on [i]
        per_image = [c[i] for i, c in enumerate(per_image)]
        if self.use_masks:
            per_image = [c + m for c, m in zip(per_image, self._mask_costs(outputs, targets), strict=True)]
        matches = [_assign_groups(_sanitize(c.cpu()), group_detr) for c in per_image]
        return [(q.to(logits.device), t.to(logits.device)) for q, t in matches]

    def _mask_costs(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Per image [N, T_i] mask cost at ``Hm*Wm // ratio`` uniform points shared by the whole batch."""
        mask_logits = as_mask_logits(outputs["pred_masks"])
        height, width = mask_logits.mask_size
        num_points = max(1, height * width // self.mask_point_sample_ratio)
        points = torch.rand(num_points, 2, device=outputs["pred_logits"].device)
        pred = mask_logits.at_shared_points(points).float()  # [B, N, P]
        costs = []
        for i, target in enumerate(targets):
            masks = target["masks"]
            if len(masks) == 0:
                costs.append(pred.new_zeros((pred.shape[1], 0)))
                continue
            grid = points.unsqueeze(0).expand(len(masks), -1, -1)
            tgt = point_sample(masks.unsqueeze(1).float(), grid, mode="nearest").squeeze(1)  # [T_i, P]
            # The pairwise costs are matmuls summing P point terms: under float16 autocast each sum is rounded to 11
            # bits and overflows 65504 to inf (then sanitised: the match silently degrades) once P * mean BCE passes
            # it, e.g. 2048 target points under a confidently wrong logit of -32. Small [N, T] products: float32.
            with torch.autocast(pred.device.type, enabled=False):
                costs.append(
                    self.cost_mask_ce * pairwise_sigmoid_ce_cost(pred[i], tgt)
                    + self.cost_mask_dice * pairwise_dice_cost(pred[i], tgt)
                )
        return costs


def _sanitize(cost: torch.Tensor) -> torch.Tensor:
    """Replace NaN/Inf (e.g. from degenerate boxes) by a cost above every finite one: scipy rejects them."""
    finite = torch.isfinite(cost)
    if finite.all():
        return cost
    worst = cost[finite].abs().max().item() if finite.any() else 0.0
    return torch.where(finite, cost, torch.full_like(cost, 2.0 * worst + 1.0))


def _assign_groups(cost: torch.Tensor, group_detr: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve each group's [Q, T] block of an image's [G*Q, T] cost and offset its query indices by g*Q."""
    num_queries = cost.shape[0] // group_detr
    query_idx, target_idx = [], []
    if cost.shape[1] > 0:
        for g, block in enumerate(cost.split(num_queries, dim=0)):
            rows, cols = linear_sum_assignment(block.numpy())
            # scipy's answer lives on the CPU; the caller moves the concatenated indices once.
            query_idx.append(torch.as_tensor(rows, dtype=torch.int64, device="cpu") + g * num_queries)
            target_idx.append(torch.as_tensor(cols, dtype=torch.int64, device="cpu"))
    if not query_idx:
        empty = torch.empty(0, dtype=torch.int64, device=cost.device)
        return empty, empty.clone()
    return torch.cat(query_idx), torch.cat(target_idx)


def build_matcher(
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    use_masks: bool = False,
    cost_mask_ce: float = 5.0,
    cost_mask_dice: float = 5.0,
    mask_point_sample_ratio: int = 16,
) -> HungarianMatcher:
    """The rfdetr matcher (``set_cost_*`` defaults 2 / 5 / 2, mask 5 / 5); its focal cost is fixed at alpha 0.25,
    gamma 2, independent of the loss's ``focal_alpha``, as upstream."""
    return HungarianMatcher(
        cost_class=cost_class,
        cost_bbox=cost_bbox,
        cost_giou=cost_giou,
        use_masks=use_masks,
        cost_mask_ce=cost_mask_ce,
        cost_mask_dice=cost_mask_dice,
        mask_point_sample_ratio=mask_point_sample_ratio,
    )
