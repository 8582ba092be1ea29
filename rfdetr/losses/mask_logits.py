"""How a model hands mask logits to the matcher and the criterion.

The losses never need a full mask: they read logits at a few hundred points per (query, mask) pair. A model can
therefore put either of these under ``outputs["pred_masks"]``:

- a dense tensor [B, Q, Hm, Wm] of logits (simple; what inference produces);
- a :class:`SparseMaskLogits` (or a dict with its three fields), the factorised form of rfdetr's segmentation head,
  ``logit[b, q, y, x] = <query_features[b, q], spatial_features[b, :, y, x]> + bias``. Training then never
  materialises the B x Q x Hm x Wm tensor (13 groups x 300 queries at 96 x 96 would be 230 MB per image in float32):
  bilinear sampling is linear, so sampling the feature map and then taking the dot product gives the same numbers as
  sampling the dense logits.

Anything else that implements :class:`MaskLogits` (``mask_size``, ``selected``, ``at_shared_points``) works too.
Points are ``(x, y)`` in [0, 1] relative to the mask map; predictions are sampled bilinearly with border padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = ["DenseMaskLogits", "MaskLogits", "SparseMaskLogits", "as_mask_logits", "point_sample"]


def point_sample(
    inputs: torch.Tensor, points: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """Sample feature maps at normalised points (``align_corners=False``: point 0 is the left edge of pixel 0).

    Args:
        inputs: [N, C, H, W].
        points: [N, P, 2] ``(x, y)`` in [0, 1].
        mode: ``"bilinear"`` for logits and features, ``"nearest"`` for binary targets.
        padding_mode: forwarded to ``grid_sample``.

    Returns:
        [N, C, P].
    """
    grid = (2.0 * points - 1.0).unsqueeze(2)  # [N, P, 1, 2] in grid_sample's [-1, 1] frame
    out = F.grid_sample(inputs, grid.to(inputs.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.squeeze(3)


@runtime_checkable
class MaskLogits(Protocol):
    """Mask logits of a batch of queries, readable at points."""

    @property
    def mask_size(self) -> tuple[int, int]:
        """(Hm, Wm) of the logit map."""
        ...

    def selected(self, batch_idx: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        """Dense logits [M, Hm, Wm] of the M selected masks ``(batch_idx[m], query_idx[m])`` only."""
        ...

    def at_shared_points(self, points: torch.Tensor) -> torch.Tensor:
        """Logits of every query of every image at one shared point set [P, 2] -> [B, Q, P]."""
        ...


@dataclass
class DenseMaskLogits:
    """Dense logits ``masks`` [B, Q, Hm, Wm]."""

    masks: torch.Tensor

    @property
    def mask_size(self) -> tuple[int, int]:
        return (self.masks.shape[-2], self.masks.shape[-1])

    def selected(self, batch_idx: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        return self.masks[batch_idx, query_idx]

    def at_points(self, batch_idx: torch.Tensor, query_idx: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Logits of the selected masks at their own points [M, P, 2] -> [M, P]."""
        return point_sample(self.selected(batch_idx, query_idx).unsqueeze(1), points).squeeze(1)

    def at_shared_points(self, points: torch.Tensor) -> torch.Tensor:
        batch = self.masks.shape[0]
        return point_sample(self.masks, points.unsqueeze(0).expand(batch, -1, -1))  # [B, Q, P]


@dataclass
class SparseMaskLogits:
    """Factorised logits: ``<query_features[b, q], spatial_features[b, :, y, x]> + bias``.

    Attributes:
        spatial_features: [B, C, Hm, Wm] per-pixel mask embeddings.
        query_features: [B, Q, C] per-query mask embeddings.
        bias: a scalar / [1] offset shared by every mask, or one per mask [B, Q].
    """

    spatial_features: torch.Tensor
    query_features: torch.Tensor
    bias: torch.Tensor

    @property
    def mask_size(self) -> tuple[int, int]:
        return (self.spatial_features.shape[-2], self.spatial_features.shape[-1])

    def selected(self, batch_idx: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        # One [M_b, C] x [C, Hm*Wm] product per image, as rfdetr: the loss then samples a 1-channel map, which is far
        # cheaper (forward and backward) than sampling the C-channel feature map at every point of every mask.
        height, width = self.mask_size
        out = self.query_features.new_empty((len(batch_idx), height, width))
        for b in torch.unique(batch_idx).tolist():
            sel = (batch_idx == b).nonzero(as_tuple=True)[0]
            pixels = self.spatial_features[b].flatten(1)  # [C, Hm*Wm]
            masks = self.query_features[b, query_idx[sel]] @ pixels  # [M_b, Hm*Wm]
            out[sel] = masks.view(len(sel), height, width) + self._bias(b, query_idx[sel])
        return out

    def _bias(self, b: int, query_idx: torch.Tensor) -> torch.Tensor:
        """The offsets of image ``b``'s queries ``query_idx``, broadcastable to [M_b, Hm, Wm]."""
        if self.bias.dim() < 2:
            return self.bias
        return self.bias[b, query_idx][:, None, None]

    def at_points(self, batch_idx: torch.Tensor, query_idx: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Logits of the selected masks at their own points [M, P, 2] -> [M, P]."""
        return point_sample(self.selected(batch_idx, query_idx).unsqueeze(1), points).squeeze(1)

    def at_shared_points(self, points: torch.Tensor) -> torch.Tensor:
        batch = self.spatial_features.shape[0]
        feats = point_sample(self.spatial_features, points.unsqueeze(0).expand(batch, -1, -1))  # [B, C, P]
        bias = self.bias.unsqueeze(-1) if self.bias.dim() >= 2 else self.bias
        return torch.bmm(self.query_features, feats) + bias  # [B, Q, P]


def as_mask_logits(pred_masks: torch.Tensor | Mapping[str, torch.Tensor] | MaskLogits) -> MaskLogits:
    """Wrap ``outputs["pred_masks"]``: a [B, Q, Hm, Wm] tensor, a dict with the :class:`SparseMaskLogits` fields, or
    an object that already implements :class:`MaskLogits`."""
    if isinstance(pred_masks, torch.Tensor):
        if pred_masks.dim() != 4:
            raise ValueError(f"dense pred_masks must be [B, Q, Hm, Wm], got {tuple(pred_masks.shape)}")
        return DenseMaskLogits(pred_masks)
    if isinstance(pred_masks, Mapping):
        return SparseMaskLogits(pred_masks["spatial_features"], pred_masks["query_features"], pred_masks["bias"])
    if isinstance(pred_masks, MaskLogits):
        return pred_masks
    raise TypeError(f"unsupported pred_masks type {type(pred_masks).__name__}")
