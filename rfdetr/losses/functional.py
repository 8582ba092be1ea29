"""Loss and matching-cost functions: pure tensor in, tensor out (spec sections 4.2, 4.3, 4.6).

Reductions follow DETR: every loss returns a *sum* over its elements divided by ``num_boxes`` (the number of target
boxes times the number of query groups), so every loss term is "per target, per group".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _torchvision_sigmoid_focal_loss

__all__ = [
    "dice_loss",
    "focal_class_cost",
    "ia_bce_loss",
    "pairwise_dice_cost",
    "pairwise_sigmoid_ce_cost",
    "sample_uncertain_points",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
]


def ia_bce_loss(
    logits: torch.Tensor,
    batch_idx: torch.Tensor,
    query_idx: torch.Tensor,
    labels: torch.Tensor,
    iou: torch.Tensor,
    num_boxes: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """IoU-aware BCE (LW-DETR's classification loss).

    Each (image, query, class) entry is a binary problem. A matched entry (its query matched a target of that class)
    gets the soft target ``t = p^alpha * IoU^(1 - alpha)`` (clamped to >= 0.01): confident *and* well-localised
    queries are pushed to high scores, so the score ranks boxes by quality. Every other entry is a negative weighted
    by ``p^gamma``, which, like focal loss, mutes the thousands of easy negatives. The soft target ``t`` is detached,
    but the negatives' ``p^gamma`` is not: as in focal loss (and in LW-DETR / rfdetr, whose gradients the parity test
    checks), the weight is differentiated too.

    With ``w+`` and ``w-`` the positive/negative weights, ``-w+ log p - w- log(1 - p)`` is evaluated as
    ``w- * x - (w+ + w-) * logsigmoid(x)`` (since ``log(1 - p) = logsigmoid(x) - x``): one fused log-sigmoid, no
    ``log(0)`` for saturated logits.

    Args:
        logits: [B, N, K] class logits.
        batch_idx: [M] image index of each matched query.
        query_idx: [M] query index of each matched query.
        labels: [M] class of the matched target.
        iou: [M] IoU of the matched (prediction, target) boxes; detached here.
        num_boxes: normaliser.
        alpha: exponent of ``p`` in the soft target (``focal_alpha``).
        gamma: exponent of ``p`` in the negative weight.

    Returns:
        Scalar loss.
    """
    prob = logits.sigmoid()
    pos_weights = torch.zeros_like(logits)
    neg_weights = prob**gamma
    matched_prob = prob[batch_idx, query_idx, labels].detach()
    target = (matched_prob**alpha * iou.detach().to(prob.dtype) ** (1.0 - alpha)).clamp(min=0.01)
    pos_weights[batch_idx, query_idx, labels] = target
    neg_weights[batch_idx, query_idx, labels] = 1.0 - target
    loss = neg_weights * logits - (pos_weights + neg_weights) * F.logsigmoid(logits)
    return loss.sum() / num_boxes


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss summed over all entries, / num_boxes (Deformable DETR's ``mean(1).sum() * Q``).

    Args:
        logits: [B, N, K].
        targets: [B, N, K] one-hot (float).
    """
    loss = _torchvision_sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return loss.sum() / num_boxes


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Matching cost of predicting ``labels`` with focal weighting: focal loss as a positive minus as a negative.

    Args:
        logits: [N, K].
        labels: [T] class ids.

    Returns:
        [N, T] cost (lower = better match).
    """
    logits = logits[:, labels]  # [N, T]
    prob = logits.sigmoid()
    # -log(p) = -logsigmoid(x) and -log(1 - p) = -logsigmoid(-x): stable where p saturates to 0 or 1.
    pos_cost = alpha * (1.0 - prob) ** gamma * -F.logsigmoid(logits)
    neg_cost = (1.0 - alpha) * prob**gamma * -F.logsigmoid(-logits)
    return pos_cost - neg_cost


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """BCE-with-logits averaged over points, summed over masks, / num_masks.

    Args:
        logits: [M, P] sampled mask logits.
        targets: [M, P] sampled binary targets (float).
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)`` per mask, summed, / num_masks.

    Args:
        logits: [M, P] sampled mask logits.
        targets: [M, P] sampled binary targets (float).
    """
    prob = logits.sigmoid()
    numerator = 2.0 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def pairwise_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean point BCE of every (prediction, target) pair, via two matmuls instead of an [N, T, P] tensor.

    Args:
        logits: [N, P] predicted logits at shared points.
        targets: [T, P] binary targets (float) at the same points.

    Returns:
        [N, T].
    """
    pos = F.softplus(-logits)  # BCE against target 1
    neg = F.softplus(logits)  # BCE against target 0
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[-1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every (prediction, target) pair.

    Args:
        logits: [N, P]; targets: [T, P] (float).

    Returns:
        [N, T].
    """
    prob = logits.sigmoid()
    numerator = 2.0 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def sample_uncertain_points(
    logits_at: Callable[[torch.Tensor], torch.Tensor],
    num_masks: int,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """PointRend importance sampling: most of the points where the prediction is least certain, plus uniform ones.

    Draws ``oversample_ratio * num_points`` uniform points, keeps the ``importance_sample_ratio * num_points`` whose
    logit is closest to 0 (uncertainty ``-|logit|``) and adds uniform points up to ``num_points``. The loss thus
    concentrates on mask boundaries while still seeing the interior. The selection is not differentiated.

    Args:
        logits_at: maps points [M, P', 2] to logits [M, P'] (called once, under no_grad).
        num_masks: M.
        num_points: points per mask.
        device: where the points live.

    Returns:
        [M, num_points, 2] ``(x, y)`` in [0, 1].
    """
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    candidates = torch.rand(num_masks, num_sampled, 2, device=device)
    with torch.no_grad():
        uncertainty = -logits_at(candidates).abs()  # [M, num_sampled]
    top = uncertainty.topk(num_uncertain, dim=1).indices  # [M, num_uncertain]
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(num_masks, num_random, 2, device=device)], dim=1)
    return chosen
