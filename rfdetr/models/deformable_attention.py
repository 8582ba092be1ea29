"""Multi-scale deformable attention (Deformable DETR's MSDeformAttn), pure PyTorch, spec section 5.5.

The sampling core is one ``F.grid_sample`` call per feature level with all heads folded into the batch axis; no
compiled extension is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MSDeformAttn(nn.Module):
    """Deformable cross-attention from queries to a flattened multi-level memory.

    Args:
        dim: model width D.
        num_levels: number of memory levels nL.
        num_heads: attention heads nH (D must divide evenly).
        num_points: sampling points per head and level nP.

    Parameter names and layouts match upstream: ``sampling_offsets`` [nH*nL*nP*2, D] with flat output index
    ``((h*nL + l)*nP + p)*2 + xy``, ``attention_weights`` [nH*nL*nP, D], ``value_proj`` and ``output_proj`` [D, D].
    """

    def __init__(self, dim: int = 256, num_levels: int = 1, num_heads: int = 16, num_points: int = 2) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a per-head ring, p+1 steps out; uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        memory_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from each query to nP points per head and level around its reference box.

        Args:
            query: [B, Q, D] (content + positional query).
            reference_boxes: [B, Q, nL, 4] normalised cxcywh references per level.
            memory: [B, S, D] flattened levels (row-major per level, levels concatenated).
            spatial_shapes: (H_l, W_l) per level, summing to S.
            memory_padding_mask: optional [B, S] bool, True at padded positions (their values are zeroed).

        Returns:
            [B, Q, D].
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        head_dim = self.dim // heads

        value = self.value_proj(memory)
        if memory_padding_mask is not None:
            value = value.masked_fill(memory_padding_mask[..., None], 0.0)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        # Trap (spec 15.10): one softmax over all levels*points of a head.
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points).softmax(-1)
        weights = weights.view(batch, num_queries, heads, levels, points)

        # Box references: offsets are in units of half the box size, split over the points.
        ref = reference_boxes[:, :, None, :, None, :]  # [B, Q, 1, nL, 1, 4]
        locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5  # [B, Q, nH, nL, nP, 2], (x, y) in [0, 1]
        # grid_sample wants [-1, 1] and (batch, out_h, out_w, 2); heads go to the batch axis: [B*nH, Q, nL, nP, 2].
        # Sampling runs in float32 even under bf16 autocast: a bf16 grid coordinate is only good to ~1/128 of the
        # map, i.e. a visible fraction of a cell.
        grids = (2 * locations - 1).permute(0, 2, 1, 3, 4, 5).flatten(0, 1).float()
        weights = weights.permute(0, 2, 1, 3, 4).flatten(0, 1).float()  # [B*nH, Q, nL, nP]
        value = value.float()

        output = None
        start = 0
        for level, (height, width) in enumerate(spatial_shapes):
            # [B, H*W, D] -> [B*nH, hd, H, W]; channel c belongs to head c // hd.
            level_value = value[:, start : start + height * width].view(batch, height, width, heads, head_dim)
            level_value = level_value.permute(0, 3, 4, 1, 2).reshape(batch * heads, head_dim, height, width)
            start += height * width
            sampled = F.grid_sample(
                level_value, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
            )  # [B*nH, hd, Q, nP]
            contribution = (sampled * weights[:, None, :, level]).sum(-1)  # [B*nH, hd, Q]
            output = contribution if output is None else output + contribution
        output = output.view(batch, self.dim, num_queries).transpose(1, 2)  # heads concatenated, head-major
        return self.output_proj(output.to(query.dtype))
