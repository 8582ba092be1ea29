"""RF-DETR transformer: two-stage query selection + deformable decoder (spec section 5). There is no encoder.

Keys live under ``transformer.``: ``decoder.layers.{l}.*``, ``decoder.norm``, ``decoder.ref_point_head``, and one
two-stage head per query group ``g`` in ``enc_output.{g}``, ``enc_output_norm.{g}``, ``enc_out_bbox_embed.{g}``,
``enc_out_class_embed.{g}``. Group g owns rows [g*Q, (g+1)*Q) of the query tables; at inference only group 0 runs.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.deformable_attention import MSDeformAttn
from rfdetr.models.layers import MLP, apply_box_delta, linear
from rfdetr.models.position_encoding import sine_box_embedding

# A proposal is kept only if cx, cy, w and h all lie strictly inside this open interval (spec 5.1, trap 15.6).
PROPOSAL_VALID_RANGE = (0.01, 0.99)


@functools.lru_cache(maxsize=16)
def proposal_grid(
    spatial_shapes: tuple[tuple[int, int], ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed two-stage anchor boxes for the flattened memory (cached: they only depend on the shapes).

    Cell (y, x) of level l gets ``((x + 0.5) / W_l, (y + 0.5) / H_l, 0.05 * 2**l, 0.05 * 2**l)``.

    Returns:
        proposals [S, 4] float32 (zeroed where invalid) and the valid mask [S] bool, or None when all are valid
        (every map narrower than 50 cells).
    """
    # Built outside inference mode so the cached tensors can also feed autograd graphs later.
    with torch.inference_mode(False):
        boxes = []
        for level, (height, width) in enumerate(spatial_shapes):
            ys, xs = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=device),
                torch.arange(width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            centers = torch.stack([(xs.flatten() + 0.5) / width, (ys.flatten() + 0.5) / height], dim=-1)
            sizes = torch.full_like(centers, 0.05 * 2.0**level)
            boxes.append(torch.cat([centers, sizes], dim=-1))
        proposals = torch.cat(boxes)
        low, high = PROPOSAL_VALID_RANGE
        valid = ((proposals > low) & (proposals < high)).all(-1)
        if bool(valid.all()):
            return proposals, None
        return proposals.masked_fill(~valid[:, None], 0.0), valid


class GroupedSelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter layout, restricted within query groups.

    Parameters: ``in_proj_weight`` [3D, D] (q, k, v stacked), ``in_proj_bias`` [3D], ``out_proj`` Linear(D, D).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query_key: torch.Tensor, value: torch.Tensor, num_groups: int = 1) -> torch.Tensor:
        """Args:
            query_key: [B, N, D] input for both queries and keys (content + positional).
            value: [B, N, D] content only.
            num_groups: N splits into this many equal consecutive chunks that do not see each other (Group DETR).

        Returns:
            [B, N, D].
        """
        batch, num, dim = value.shape
        per_group, head_dim = num // num_groups, dim // self.num_heads
        qk = F.linear(query_key, self.in_proj_weight[: 2 * dim], self.in_proj_bias[: 2 * dim])
        v = F.linear(value, self.in_proj_weight[2 * dim :], self.in_proj_bias[2 * dim :])
        # Groups go to the batch axis, which makes the attention block-diagonal without any mask.
        qk = qk.view(batch * num_groups, per_group, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        v = v.view(batch * num_groups, per_group, self.num_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(qk[0], qk[1], v)  # [B*G, nH, N/G, hd]
        return self.out_proj(out.transpose(1, 2).reshape(batch, num, dim))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, deformable cross-attention, ReLU FFN (dropout is 0 upstream)."""

    def __init__(self, dim: int, sa_heads: int, ca_heads: int, num_levels: int, num_points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = GroupedSelfAttention(dim, sa_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, num_levels, ca_heads, num_points)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        num_groups: int = 1,
    ) -> torch.Tensor:
        """Args:
            tgt: [B, N, D] content queries; query_pos: [B, N, D].
            reference_boxes: [B, N, nL, 4]; memory: [B, S, D].

        Returns:
            [B, N, D] updated (un-normalised by the shared decoder norm).
        """
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, tgt, num_groups))
        tgt = self.norm2(tgt + self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes))
        hidden = linear(tgt, self.linear1.weight, self.linear1.bias).relu_()
        return self.norm3(tgt + linear(hidden, self.linear2.weight, self.linear2.bias))


class TransformerDecoder(nn.Module):
    """Decoder stack with a shared output norm and a query positional head computed once from the references."""

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.dim = dim

    def forward(
        self,
        tgt: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        num_groups: int = 1,
    ) -> torch.Tensor:
        """Args:
            tgt: [B, N, D] initial content queries.
            reference_boxes: [B, N, 4] normalised cxcywh references R0 (constant over layers).
            memory: [B, S, D].

        Returns:
            hs [L, B, N, D]: every layer's output after the shared ``norm``.
        """
        # lite_refpoint_refine: the reference is never refined, so query_pos is computed once. Without padding
        # the valid ratios are 1 and every level sees the same reference box.
        refs = reference_boxes[:, :, None].expand(-1, -1, len(spatial_shapes), -1)
        query_pos = self.ref_point_head(sine_box_embedding(reference_boxes, self.dim // 2))
        hidden = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, refs, memory, spatial_shapes, num_groups)
            # The normalised copy is the layer's output; the un-normalised tgt feeds the next layer (spec 5.4).
            hidden.append(self.norm(tgt))
        return torch.stack(hidden)


class Transformer(nn.Module):
    """Two-stage proposal selection (one head per query group) followed by the decoder.

    Args:
        dim: model width D.
        num_classes_logits: K (class logits, e.g. 91).
        num_queries: queries per group Q (= top-k of the two-stage selection).
        num_groups: Group-DETR groups G (13); all are built so checkpoints load strictly.
        num_levels / sa_heads / ca_heads / num_points / ffn_dim / num_layers: decoder hyper-parameters.
    """

    def __init__(
        self,
        dim: int,
        num_classes_logits: int,
        num_queries: int,
        num_groups: int,
        num_levels: int,
        num_layers: int,
        sa_heads: int,
        ca_heads: int,
        num_points: int,
        ffn_dim: int,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        layer = TransformerDecoderLayer(dim, sa_heads, ca_heads, num_levels, num_points, ffn_dim)
        self.decoder = TransformerDecoder(layer, num_layers, dim)
        self.enc_output = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_groups))
        self.enc_output_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_groups))
        self.enc_out_bbox_embed = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(num_groups))
        self.enc_out_class_embed = nn.ModuleList(nn.Linear(dim, num_classes_logits) for _ in range(num_groups))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for every matrix of the decoder and two-stage projections, then MSDeformAttn's own init."""
        for module in (self.decoder, self.enc_output):
            for param in module.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()

    def select_proposals(
        self, memory: torch.Tensor, proposals: torch.Tensor, group: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two-stage top-k for one group (spec 5.2).

        Args:
            memory: [B, S, D] flattened projector maps, rows of invalid proposals already zeroed.
            proposals: [S, 4] anchor boxes from :func:`proposal_grid`.

        Returns:
            features [B, k, D] (normalised selected memory rows), logits [B, k, K], boxes [B, k, 4] (cxcywh, with
            gradient; detach before using them as decoder references). k = min(Q, S), ordered by descending score.
        """
        features = self.enc_output_norm[group](self.enc_output[group](memory))
        logits = self.enc_out_class_embed[group](features)  # [B, S, K]
        top_k = min(self.num_queries, memory.shape[1])
        # Score = max over ALL logits (including slot 0) on raw logits; torch.topk order is what pairs proposal i
        # with learned query i (trap 15.7).
        index = logits.max(-1).values.topk(top_k, dim=1).indices  # [B, k]
        features = features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))
        logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
        anchors = proposals.to(features.dtype)[index]  # [B, k, 4]
        boxes = apply_box_delta(self.enc_out_bbox_embed[group](features), anchors)
        return features, logits, boxes

    def forward(
        self,
        feature_maps: Sequence[torch.Tensor],
        query_feat: torch.Tensor,
        refpoint_embed: torch.Tensor,
        num_groups: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Args:
            feature_maps: projector outputs, each [B, D, H_l, W_l].
            query_feat: [G*Q, D] content query table (only the first ``num_groups * Q`` rows are used).
            refpoint_embed: [G*Q, 4] learned reference deltas (same row layout).
            num_groups: 1 at inference, G in training.

        Returns dict:
            ``hs`` [L, B, N, D] decoder outputs after the shared norm (N = num_groups * Q);
            ``references`` [B, N, 4] the constant reference boxes R0 (detached two-stage boxes refined by
            ``refpoint_embed``); ``enc_features`` [B, N, D], ``enc_logits`` [B, N, K], ``enc_boxes`` [B, N, 4]
            the two-stage outputs, group-major; ``memory`` [B, S, D].
        """
        spatial_shapes = tuple((int(m.shape[-2]), int(m.shape[-1])) for m in feature_maps)
        flat_maps = [m.flatten(2).transpose(1, 2) for m in feature_maps]  # [B, H_l*W_l, D] each
        memory = flat_maps[0] if len(flat_maps) == 1 else torch.cat(flat_maps, dim=1)  # [B, S, D]
        batch = memory.shape[0]

        proposals, valid = proposal_grid(spatial_shapes, memory.device)
        # Invalid (border) proposals are also blanked in the memory copy used for scoring, not in the memory the
        # decoder attends to (trap 15.6).
        scored = memory if valid is None else memory.masked_fill(~valid[:, None], 0.0)
        selected = [self.select_proposals(scored, proposals, g) for g in range(num_groups)]
        if num_groups == 1:
            enc_features, enc_logits, enc_boxes = selected[0]
        else:
            enc_features, enc_logits, enc_boxes = (torch.cat(parts, dim=1) for parts in zip(*selected, strict=True))

        num_rows = num_groups * self.num_queries
        tgt = query_feat[:num_rows].unsqueeze(0).expand(batch, -1, -1)
        learned = refpoint_embed[:num_rows].unsqueeze(0).expand(batch, -1, -1)
        # The two-stage box is a constant for the decoder (no gradient back into the proposal heads from there).
        selected_rows = enc_boxes.shape[1]
        references = apply_box_delta(learned[:, :selected_rows], enc_boxes.detach())
        if selected_rows < num_rows:
            # Fewer memory positions than queries (tiny inputs only): upstream appends the raw rows unchanged.
            references = torch.cat([references, learned[:, selected_rows:]], dim=1)

        hs = self.decoder(tgt, references, memory, spatial_shapes, num_groups)
        return {
            "hs": hs,
            "references": references,
            "enc_features": enc_features,
            "enc_logits": enc_logits,
            "enc_boxes": enc_boxes,
            "memory": memory,
        }
