"""RF-DETR's training loss: match, then score the matches (spec sections 4.1-4.7).

Every output set (final decoder layer, each earlier decoder layer, the two-stage encoder proposals) is matched on its
own and gets the same losses; keys of the earlier layers end in ``_{i}`` and those of the proposals in ``_enc``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rfdetr.losses.functional import dice_loss, ia_bce_loss, sample_uncertain_points, sigmoid_ce_loss
from rfdetr.losses.functional import sigmoid_focal_loss as focal_loss
from rfdetr.losses.mask_logits import as_mask_logits, point_sample
from rfdetr.losses.matcher import HungarianMatcher, Indices, build_matcher
from rfdetr.util.box_ops import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou

__all__ = ["SetCriterion", "build_criterion"]

Targets = list[dict[str, torch.Tensor]]
_PER_INSTANCE_KEYS = ("labels", "boxes", "masks", "area", "iscrowd")
Losses = dict[str, torch.Tensor]
LossFn = Callable[[dict[str, Any], Targets, Indices, float], Losses]


class SetCriterion(nn.Module):
    """Hungarian-matched set losses for Group DETR outputs.

    Args:
        matcher: assigns queries to targets.
        weight_dict: loss key -> weight for the total; see :func:`build_criterion` for the standard one.
        losses: which loss groups to compute, from ``"labels"`` (``loss_ce``), ``"boxes"`` (``loss_bbox``,
            ``loss_giou``), ``"cardinality"`` (logging) and ``"masks"`` (``loss_mask_ce``, ``loss_mask_dice``).
        group_detr: query groups in training; ``eval()`` switches to 1.
        focal_alpha: alpha of the classification loss (IA-BCE target exponent, or focal alpha).
        ia_bce: IA-BCE classification loss (rfdetr default) instead of sigmoid focal loss.
        mask_point_sample_ratio: the mask losses use ``max(Hm, Hm*Wm // ratio)`` points per mask.
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        losses: tuple[str, ...] = ("labels", "boxes", "cardinality"),
        group_detr: int = 13,
        focal_alpha: float = 0.25,
        ia_bce: bool = True,
        mask_point_sample_ratio: int = 16,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.group_detr = group_detr
        self.focal_alpha = focal_alpha
        self.mask_point_sample_ratio = mask_point_sample_ratio
        loss_fns: dict[str, LossFn] = {
            "labels": self.loss_ia_bce if ia_bce else self.loss_focal,  # the variant is fixed here, not per call
            "boxes": self.loss_boxes,
            "cardinality": self.loss_cardinality,
            "masks": self.loss_masks,
        }
        unknown = set(losses) - loss_fns.keys()
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; available: {sorted(loss_fns)}")
        self.loss_fns = {name: loss_fns[name] for name in losses}

    # ---------------------------------------------------------------- losses: (outputs, targets, indices, num_boxes)

    def loss_ia_bce(self, outputs: dict[str, Any], targets: Targets, indices: Indices, num_boxes: float) -> Losses:
        """``loss_ce``: IoU-aware BCE over all B x N x K logits (see :func:`rfdetr.losses.functional.ia_bce_loss`)."""
        logits = outputs["pred_logits"]
        batch_idx, query_idx = _matched_queries(indices, logits.device)
        labels = _matched_targets(targets, indices, "labels").to(logits.device)
        pred_boxes = outputs["pred_boxes"][batch_idx, query_idx].detach()
        tgt_boxes = _matched_targets(targets, indices, "boxes")
        iou = paired_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        loss = ia_bce_loss(logits, batch_idx, query_idx, labels, iou, num_boxes, alpha=self.focal_alpha)
        return {"loss_ce": loss}

    def loss_focal(self, outputs: dict[str, Any], targets: Targets, indices: Indices, num_boxes: float) -> Losses:
        """``loss_ce``: sigmoid focal loss against one-hot targets of the matched queries."""
        logits = outputs["pred_logits"]
        batch_idx, query_idx = _matched_queries(indices, logits.device)
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, _matched_targets(targets, indices, "labels")] = 1.0
        return {"loss_ce": focal_loss(logits, onehot, num_boxes, alpha=self.focal_alpha)}

    def loss_boxes(self, outputs: dict[str, Any], targets: Targets, indices: Indices, num_boxes: float) -> Losses:
        """``loss_bbox``: L1 on normalised cxcywh; ``loss_giou``: 1 - GIoU on xyxy; matched pairs only."""
        batch_idx, query_idx = _matched_queries(indices, outputs["pred_boxes"].device)
        pred = outputs["pred_boxes"][batch_idx, query_idx]  # [M, 4]
        tgt = _matched_targets(targets, indices, "boxes").to(pred.dtype)
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))
        return {
            "loss_bbox": F.l1_loss(pred, tgt, reduction="none").sum() / num_boxes,
            "loss_giou": (1.0 - giou).sum() / num_boxes,
        }

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict[str, Any], targets: Targets, indices: Indices, num_boxes: float) -> Losses:
        """``cardinality_error`` (logging only): mean |#confident queries - #targets| per image.

        A query counts as a detection when its best class probability exceeds 0.5 (sigmoid classes, no "no-object"
        logit); the count is over all query groups.
        """
        logits = outputs["pred_logits"]
        num_pred = (logits.amax(-1) > 0).sum(1).float()  # logit > 0 <=> sigmoid > 0.5
        num_tgt = torch.as_tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        return {"cardinality_error": F.l1_loss(num_pred, num_tgt)}

    def loss_masks(self, outputs: dict[str, Any], targets: Targets, indices: Indices, num_boxes: float) -> Losses:
        """``loss_mask_ce`` and ``loss_mask_dice`` on the matched queries' masks only, at PointRend-sampled points.

        Only the M matched masks are ever built ([M, Hm, Wm], never the dense [B, N, Hm, Wm] logits), then read at
        ``max(Hm, Hm*Wm // ratio)`` points each. Predictions are sampled bilinearly; targets with nearest, in the same
        normalised frame, so predicted and target masks may have different resolutions.
        """
        if "pred_masks" not in outputs:
            raise KeyError("the 'masks' loss needs outputs['pred_masks'] in every output set")
        mask_logits = as_mask_logits(outputs["pred_masks"])
        device = outputs["pred_logits"].device
        batch_idx, query_idx = _matched_queries(indices, device)
        height, width = mask_logits.mask_size
        num_points = max(height, height * width // self.mask_point_sample_ratio)
        if len(batch_idx) == 0:
            # Nothing matched: a zero that still touches the mask head, so DDP sees its parameters used.
            zero = mask_logits.at_shared_points(torch.full((1, 2), 0.5, device=device)).sum() * 0.0
            return {"loss_mask_ce": zero, "loss_mask_dice": zero.clone()}
        masks = mask_logits.selected(batch_idx, query_idx).unsqueeze(1)  # [M, 1, Hm, Wm]: matched masks only
        points = sample_uncertain_points(
            lambda pts: point_sample(masks, pts).squeeze(1), len(batch_idx), num_points, device=device
        )  # [M, P, 2]
        pred = point_sample(masks, points).squeeze(1)  # [M, P]
        tgt = torch.zeros_like(pred)
        for i, (target, (_, tgt_idx)) in enumerate(zip(targets, indices, strict=True)):
            sel = (batch_idx == i).nonzero(as_tuple=True)[0]
            if len(sel):
                masks = target["masks"][tgt_idx.to(target["masks"].device)].unsqueeze(1).to(pred.dtype)
                tgt[sel] = point_sample(masks, points[sel], mode="nearest").squeeze(1)
        return {
            "loss_mask_ce": sigmoid_ce_loss(pred, tgt, num_boxes),
            "loss_mask_dice": dice_loss(pred, tgt, num_boxes),
        }

    # ------------------------------------------------------------------------------------------------- forward

    def forward(self, outputs: dict[str, Any], targets: Targets) -> dict[str, torch.Tensor]:
        """All losses of all output sets.

        Args:
            outputs: ``pred_logits`` [B, G*Q, K] logits; ``pred_boxes`` [B, G*Q, 4] normalised cxcywh; optional
                ``pred_masks`` (dense [B, G*Q, Hm, Wm] logits or sparse, see :mod:`rfdetr.losses.mask_logits`);
                ``aux_outputs``: list (one per earlier decoder layer) of dicts with the same keys; ``enc_outputs``:
                the same dict for the two-stage proposals. G = ``group_detr`` in training, 1 in eval mode.
            targets: B dicts: ``labels`` [T_i] int64, ``boxes`` [T_i, 4] normalised cxcywh, optional ``masks``
                [T_i, H, W] bool and ``iscrowd`` [T_i] (crowd targets are dropped before matching).

        Returns:
            Loss key -> scalar tensor: ``loss_ce``, ``loss_bbox``, ``loss_giou`` (+ ``loss_mask_ce``,
            ``loss_mask_dice``), their ``_{i}`` / ``_enc`` versions, and the logging-only ``class_error`` (final
            layer) and ``cardinality_error`` (every set). Weight with :meth:`total_loss`.
        """
        targets = [_drop_crowd(t) for t in targets]
        group_detr = self.group_detr if self.training else 1
        num_boxes = _num_boxes(targets, group_detr, outputs["pred_logits"].device)
        output_sets = list(_output_sets(outputs))
        # Match every set before any loss: with masks, both draw random points, and this order reproduces rfdetr's
        # random stream (same seed -> same points -> same mask losses).
        all_indices = [self.matcher(set_outputs, targets, group_detr=group_detr) for _, set_outputs in output_sets]
        losses: dict[str, torch.Tensor] = {}
        for (suffix, set_outputs), indices in zip(output_sets, all_indices, strict=True):
            for loss_fn in self.loss_fns.values():
                losses.update({k + suffix: v for k, v in loss_fn(set_outputs, targets, indices, num_boxes).items()})
            if suffix == "":
                losses["class_error"] = _class_error(set_outputs["pred_logits"], targets, indices)
        return losses

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(losses[k] * weight_dict[k])`` over the weighted keys (logging entries have no weight)."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)


# ----------------------------------------------------------------------------------------------------- helpers


def _output_sets(outputs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key suffix, outputs) for the final layer, each auxiliary layer and the encoder proposals."""
    yield "", outputs
    for i, aux in enumerate(outputs.get("aux_outputs", [])):
        yield f"_{i}", aux
    if "enc_outputs" in outputs:
        yield "_enc", outputs["enc_outputs"]


def _drop_crowd(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``iscrowd == 1`` annotations: rfdetr trains on them neither as positives nor as ignore regions."""
    crowd = target.get("iscrowd")
    if crowd is None or not bool(crowd.any()):
        return target
    keep = crowd == 0
    return {k: v[keep] if k in _PER_INSTANCE_KEYS else v for k, v in target.items()}


def _num_boxes(targets: Targets, group_detr: int, device: torch.device) -> float:
    """#targets x groups, averaged over ranks, >= 1: every loss is per target per group, the same on all ranks."""
    num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets) * group_detr)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return max(num.item(), 1.0)


def _matched_queries(indices: Indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten per-image matches into (batch_idx [M], query_idx [M])."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), query_idx.to(device)


def _matched_targets(targets: Targets, indices: Indices, key: str) -> torch.Tensor:
    """``targets[i][key][tgt_idx]`` concatenated in the order of :func:`_matched_queries`: [M, ...]."""
    return torch.cat([t[key][j.to(t[key].device)] for t, (_, j) in zip(targets, indices, strict=True)])


@torch.no_grad()
def _class_error(logits: torch.Tensor, targets: Targets, indices: Indices) -> torch.Tensor:
    """100 - top-1 accuracy (%) of the matched queries' logits; 100 when nothing is matched."""
    batch_idx, query_idx = _matched_queries(indices, logits.device)
    labels = _matched_targets(targets, indices, "labels").to(logits.device)
    if len(labels) == 0:
        return torch.tensor(100.0, device=logits.device)
    correct = (logits[batch_idx, query_idx].argmax(-1) == labels).float().mean()
    return 100.0 - 100.0 * correct


def build_criterion(
    dec_layers: int,
    two_stage: bool = True,
    group_detr: int = 13,
    cls_loss_coef: float = 1.0,
    bbox_loss_coef: float = 5.0,
    giou_loss_coef: float = 2.0,
    focal_alpha: float = 0.25,
    ia_bce_loss: bool = True,
    set_cost_class: float = 2.0,
    set_cost_bbox: float = 5.0,
    set_cost_giou: float = 2.0,
    set_cost_mask_ce: float = 5.0,
    set_cost_mask_dice: float = 5.0,
    segmentation: bool = False,
    mask_ce_loss_coef: float = 5.0,
    mask_dice_loss_coef: float = 5.0,
    mask_point_sample_ratio: int = 16,
) -> SetCriterion:
    """The rfdetr criterion (defaults = rfdetr detection; seg configs use ``cls_loss_coef=5``, ``segmentation=True``).

    Args:
        dec_layers: decoder layers; the first ``dec_layers - 1`` are supervised as ``_0 .. _{dec_layers-2}``.
        two_stage: supervise the encoder proposals (``_enc`` keys).
        set_cost_class, set_cost_bbox, set_cost_giou, set_cost_mask_ce, set_cost_mask_dice: matcher weights.
        segmentation: add the mask costs to the matcher and the mask losses.

    Returns:
        A :class:`SetCriterion` whose ``weight_dict`` holds every weighted key (base, ``_{i}`` and ``_enc``).
    """
    matcher = build_matcher(
        cost_class=set_cost_class,
        cost_bbox=set_cost_bbox,
        cost_giou=set_cost_giou,
        use_masks=segmentation,
        cost_mask_ce=set_cost_mask_ce,
        cost_mask_dice=set_cost_mask_dice,
        mask_point_sample_ratio=mask_point_sample_ratio,
    )
    base = {"loss_ce": cls_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    if segmentation:
        base.update({"loss_mask_ce": mask_ce_loss_coef, "loss_mask_dice": mask_dice_loss_coef})
    suffixes = [""] + [f"_{i}" for i in range(dec_layers - 1)] + (["_enc"] if two_stage else [])
    weight_dict = {key + suffix: w for suffix in suffixes for key, w in base.items()}
    losses = ("labels", "boxes", "cardinality") + (("masks",) if segmentation else ())
    return SetCriterion(
        matcher,
        weight_dict,
        losses=losses,
        group_detr=group_detr,
        focal_alpha=focal_alpha,
        ia_bce=ia_bce_loss,
        mask_point_sample_ratio=mask_point_sample_ratio,
    )
