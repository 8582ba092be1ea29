"""Sine embeddings of reference boxes, used to build the decoder's query positional embedding (spec 5.4).

The memory's own sine position embedding is computed upstream but never consumed (spec 5.6), so it is omitted.
"""

from __future__ import annotations

import math

import torch


def sine_box_embedding(boxes: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of normalised cxcywh boxes.

    Each coordinate v becomes ``num_feats`` values ``[sin(2*pi*v/t_0), cos(2*pi*v/t_1), sin(.../t_2), ...]`` with
    ``t_j = temperature ** (2 * (j // 2) / num_feats)``. Trap (spec 15.9): coordinates are concatenated in the order
    (cy, cx, w, h), y before x, like Conditional/Deformable DETR.

    Args:
        boxes: [..., 4] normalised (cx, cy, w, h).
        num_feats: features per coordinate (D / 2).

    Returns:
        [..., 4 * num_feats] in the dtype of ``boxes``.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    # Computed in float32 (phases reach 2*pi*v*1 rad with v ~ 1; bf16 would visibly distort the high frequencies).
    coords = boxes.float()[..., [1, 0, 2, 3]].unsqueeze(-1) * (2 * math.pi) / dim_t  # [..., 4, F]
    emb = torch.stack([coords[..., 0::2].sin(), coords[..., 1::2].cos()], dim=-1)  # [..., 4, F/2, 2]
    return emb.flatten(-3).to(boxes.dtype)
