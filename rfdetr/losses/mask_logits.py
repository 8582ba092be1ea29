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

__all__ = [
    "DenseMaskLogits", "DynamicMaskLogits", "MaskLogits", "SparseMaskLogits", "as_mask_logits", "box_relative_coords",
    "dynamic_mask_mlp", "dynamic_param_count", "point_sample",
]

# Box-relative coordinates are clamped to this many half-sides from the box centre: a pixel further away is "far
# outside" whatever the box size, so a tiny box cannot feed the per-query MLP values it never saw in training.
REL_COORD_LIMIT = 4.0


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
        [N, C, P] (float32 for float16 / bfloat16 inputs).
    """
    # Low-precision maps (autocast) are sampled in float32: grid_sample takes its coordinates in the input's dtype,
    # and a bf16 coordinate is good to 2^-8 of the half-width (a quarter pixel of a 128-px mask map), so predictions
    # and float32-sampled targets would be read at different places. CPU autocast runs grid_sample in float32
    # whatever its inputs, CUDA autocast in its widest input's dtype (bf16 once the grid was cast to the map's):
    # upcasting here makes both devices compute the same float32 samples.
    if inputs.dtype in (torch.float16, torch.bfloat16):
        inputs = inputs.float()
    grid = (2.0 * points.to(inputs.dtype) - 1.0).unsqueeze(2)  # [N, P, 1, 2] in grid_sample's [-1, 1] frame
    out = F.grid_sample(inputs, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
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
        out: torch.Tensor | None = None
        for b in torch.unique(batch_idx).tolist():
            sel = (batch_idx == b).nonzero(as_tuple=True)[0]
            pixels = self.spatial_features[b].flatten(1)  # [C, Hm*Wm]
            masks = self.query_features[b, query_idx[sel]] @ pixels  # [M_b, Hm*Wm]
            block = masks.view(len(sel), height, width) + self._bias(b, query_idx[sel])
            if out is None:
                # The block's dtype, not the features': under autocast the product is bf16 / fp16 and the float32
                # bias promotes the sum to float32 (an index_put of another dtype raises).
                out = block.new_empty((len(batch_idx), height, width))
            out[sel] = block
        return out if out is not None else self.query_features.new_empty((0, height, width))

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


def dynamic_param_count(in_channels: int, hidden: int) -> int:
    """Scalars of one query's dynamic MLP: (in -> hidden) + (hidden -> hidden) + (hidden -> 1), weights and biases."""
    return (in_channels + 1) * hidden + (hidden + 1) * hidden + hidden + 1


def box_relative_coords(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Where points lie relative to boxes, in half-sides: (x - cx) / (w / 2), so a box's edges are at -1 and +1.

    Args:
        points: [P, 2] or [B, P, 2] ``(x, y)`` in [0, 1] of the input image.
        boxes: [B, Q, 4] normalised ``(cx, cy, w, h)``.

    Returns:
        [B, Q, 2, P], clamped to +-:data:`REL_COORD_LIMIT`.
    """
    if points.dim() == 2:
        points = points.unsqueeze(0)
    pts = points.transpose(1, 2).unsqueeze(1)  # [B or 1, 1, 2, P]
    centre = boxes[..., :2].unsqueeze(-1)  # [B, Q, 2, 1]
    # Half a side, at least a thousandth of the image: a degenerate box must not divide by zero.
    half = (boxes[..., 2:] * 0.5).clamp(min=1e-3).unsqueeze(-1)
    return ((pts - centre) / half).clamp(-REL_COORD_LIMIT, REL_COORD_LIMIT)


def dynamic_mask_mlp(features: torch.Tensor, rel: torch.Tensor, params: torch.Tensor, hidden: int) -> torch.Tensor:
    """CondInst's dynamic mask head: each query's own 3-layer MLP (weights ``params``) on pixel features + position.

    Layer 1 is split into its feature and coordinate parts, so the features shared by an image's queries are
    multiplied once per image ([B, Q*hidden, C] x [B, C, P]) rather than copied per query.

    Args:
        features: [B, C, P] per-pixel mask features shared by an image's queries.
        rel: [B, Q, 2, P] box-relative coordinates of those pixels (:func:`box_relative_coords`).
        params: [B, Q, dynamic_param_count(C + 2, hidden)] per-query weights and biases.
        hidden: width of the MLP's hidden layers.

    Returns:
        [B, Q, P] mask logits.
    """
    batch, channels, num_points = features.shape
    queries = params.shape[1]
    cin = channels + 2
    sizes = [cin * hidden, hidden, hidden * hidden, hidden, hidden, 1]
    w1, b1, w2, b2, w3, b3 = torch.split(params, sizes, dim=-1)
    w1 = w1.reshape(batch, queries, hidden, cin)
    w1_feat = w1[..., :channels].reshape(batch, queries * hidden, channels)
    x = torch.bmm(w1_feat, features).view(batch, queries, hidden, num_points)
    # The two coordinate channels as broadcast products (no [B, Q, 2, P] x [2, hidden] matmul per query).
    x = x + w1[..., channels, None] * rel[:, :, 0:1] + w1[..., channels + 1, None] * rel[:, :, 1:2]
    x = torch.relu(x + b1.unsqueeze(-1))
    x = torch.relu(torch.matmul(w2.reshape(batch, queries, hidden, hidden), x) + b2.unsqueeze(-1))
    out = torch.matmul(w3.reshape(batch, queries, 1, hidden), x) + b3.unsqueeze(-1)
    return out.squeeze(2)


def _pixel_centres(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """[H*W, 2] ``(x, y)`` of pixel centres in [0, 1], row-major (the order of ``flatten``)."""
    ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
    xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


@dataclass
class DynamicMaskLogits:
    """Per-query dynamic MLPs on shared mask features: ``logit[b, q, y, x] = MLP_{params[b, q]}(f[b, :, y, x],
    rel(box[b, q], (x, y)))`` (:func:`dynamic_mask_mlp`); only the queries or points asked for are evaluated.

    Attributes:
        features: [B, C, Hm, Wm] per-pixel mask features.
        params: [B, Q, dynamic_param_count(C + 2, hidden)] per-query MLP weights.
        boxes: [B, Q, 4] normalised ``(cx, cy, w, h)`` each query's coordinates are relative to.
        hidden: the MLP's hidden width.
    """

    features: torch.Tensor
    params: torch.Tensor
    boxes: torch.Tensor
    hidden: int

    @property
    def mask_size(self) -> tuple[int, int]:
        return (self.features.shape[-2], self.features.shape[-1])

    def dense(self) -> torch.Tensor:
        """Every query's logits [B, Q, Hm, Wm] (inference and export)."""
        height, width = self.mask_size
        points = _pixel_centres(height, width, self.features)
        rel = box_relative_coords(points, self.boxes)
        logits = dynamic_mask_mlp(self.features.flatten(2), rel, self.params, self.hidden)
        return logits.view(logits.shape[0], logits.shape[1], height, width)

    def selected(self, batch_idx: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        # Each selected mask as its own one-query "image": [M, C, Hm*Wm] features, no other query evaluated.
        height, width = self.mask_size
        points = _pixel_centres(height, width, self.features)
        boxes = self.boxes[batch_idx, query_idx].unsqueeze(1)  # [M, 1, 4]
        rel = box_relative_coords(points, boxes)
        logits = dynamic_mask_mlp(self.features[batch_idx].flatten(2), rel,
                                  self.params[batch_idx, query_idx].unsqueeze(1), self.hidden)
        return logits.view(len(batch_idx), height, width)

    def at_shared_points(self, points: torch.Tensor) -> torch.Tensor:
        # Features are bilinearly sampled; coordinates are exact at the points. Equal to sampling the dense logits
        # only where the MLP is linear, so the matcher's mask cost reads the function itself, not its interpolation.
        batch = self.features.shape[0]
        feats = point_sample(self.features, points.unsqueeze(0).expand(batch, -1, -1))  # [B, C, P]
        rel = box_relative_coords(points, self.boxes)
        return dynamic_mask_mlp(feats, rel, self.params, self.hidden)


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
