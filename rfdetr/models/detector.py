"""RF-DETR detector: windowed DINOv2 + projector -> two-stage deformable decoder -> class/box (+ mask) heads.

The module tree reproduces the released checkpoints' keys (spec 12.2): ``backbone.0.{encoder,projector}.*``,
``transformer.*``, ``class_embed``, ``bbox_embed.layers.{0,1,2}``, ``refpoint_embed``, ``query_feat`` and, for
segmentation models, ``segmentation_head.*``. Upstream's ``_kp_active_mask`` buffer is deliberately absent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rfdetr.config import VIT_SIZES, ModelConfig
from rfdetr.models.dinov2 import DinoV2, build_dinov2
from rfdetr.models.layers import MLP, apply_box_delta
from rfdetr.models.projector import MultiScaleProjector
from rfdetr.models.segmentation_head import SegmentationHead
from rfdetr.models.transformer import Transformer

Outputs = dict[str, object]


class Backbone(nn.Module):
    """ViT encoder + multi-scale projector (``backbone.0`` in the checkpoints)."""

    def __init__(self, encoder: DinoV2, projector: MultiScaleProjector) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Args: pixels [B, 3, H, W]. Returns: one [B, D, h_l, w_l] map per projector level."""
        return self.projector(self.encoder(pixels))


class RFDETRModel(nn.Module):
    """LW-DETR / RF-DETR detector with optional segmentation head.

    Args:
        backbone: ViT + projector.
        transformer: two-stage selection + decoder.
        num_logits: K = num_classes + 1.
        num_queries: Q per group.
        group_detr: query groups G used in training (tables hold G*Q rows).
        segmentation_head: optional mask head (its presence makes ``pred_masks`` appear in the outputs).
    """

    def __init__(
        self,
        backbone: Backbone,
        transformer: Transformer,
        num_logits: int,
        num_queries: int,
        group_detr: int,
        segmentation_head: SegmentationHead | None = None,
    ) -> None:
        super().__init__()
        dim = transformer.decoder.dim
        self.num_queries, self.group_detr = num_queries, group_detr
        # Registration order mirrors upstream's state_dict order (transformer, heads, queries, backbone).
        self.transformer = transformer
        self.class_embed = nn.Linear(dim, num_logits)
        self.bbox_embed = MLP(dim, dim, 4, 3)
        self.refpoint_embed = nn.Embedding(group_detr * num_queries, 4)
        self.query_feat = nn.Embedding(group_detr * num_queries, dim)
        # A one-element list so keys read ``backbone.0.*`` (upstream's Joiner; its parameter-free position
        # embedding at index 1 is never consumed, spec 5.6).
        self.backbone = nn.ModuleList([backbone])
        self.segmentation_head = segmentation_head
        self.reset_head_parameters()

    def reset_head_parameters(self) -> None:
        """Detection-head init; the two-stage heads start as copies of the final heads (spec 10-11)."""
        prior_prob = 0.01
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.zeros_(self.refpoint_embed.weight)
        two_stage_heads = [*self.transformer.enc_out_class_embed, *self.transformer.enc_out_bbox_embed]
        sources = [self.class_embed] * self.group_detr + [self.bbox_embed] * self.group_detr
        with torch.no_grad():
            for head, source in zip(two_stage_heads, sources, strict=True):
                for dst, src in zip(head.parameters(), source.parameters(), strict=True):
                    dst.copy_(src)

    def forward_features(self, pixels: torch.Tensor, num_groups: int | None = None) -> dict[str, torch.Tensor]:
        """Everything the heads need, without the heads.

        Args:
            pixels: [B, 3, H, W] normalised images, H and W multiples of patch_size * num_windows.
            num_groups: query groups to run; defaults to ``group_detr`` in train mode and 1 in eval mode.

        Returns dict (N = num_groups * Q, L = decoder layers):
            ``features``: list of projector maps [B, D, h_l, w_l] (stride = patch size for P4);
            ``hs`` [L, B, N, D]: decoder outputs after the shared ``decoder.norm``;
            ``references`` [B, N, 4]: reference boxes R0 (cxcywh) every layer's box delta applies to;
            ``enc_features`` [B, N, D], ``enc_logits`` [B, N, K], ``enc_boxes`` [B, N, 4]: two-stage outputs;
            ``memory`` [B, S, D]: flattened ``features``.
        """
        if num_groups is None:
            num_groups = self.group_detr if self.training else 1
        features = self.backbone[0](pixels)
        out = self.transformer(features, self.query_feat.weight, self.refpoint_embed.weight, num_groups)
        out["features"] = features
        return out

    def forward(self, pixels: torch.Tensor, num_groups: int | None = None, dense_masks: bool = False) -> Outputs:
        """Args: pixels [B, 3, H, W] normalised images (see :meth:`forward_features`); ``dense_masks``: dense mask
        logits in train mode too.

        Returns dict (N = Q in eval, G*Q in train):
            ``pred_logits`` [B, N, K], ``pred_boxes`` [B, N, 4] normalised cxcywh (last decoder layer);
            ``pred_masks`` (segmentation models only): [B, N, H/4, W/4] mask logits in eval mode (or with
            ``dense_masks``), in train mode a :class:`rfdetr.losses.mask_logits.SparseMaskLogits` (spatial features
            [B, D, H/4, W/4], query features [B, N, D]) that the matcher and the loss point-sample;
            ``aux_outputs``: list over earlier decoder layers of dicts with the same keys;
            ``enc_outputs``: {``pred_logits``, ``pred_boxes`` [, ``pred_masks``]} of the two-stage proposals.
        """
        feats = self.forward_features(pixels, num_groups)
        hs = feats["hs"]
        logits = self.class_embed(hs)  # [L, B, N, K]
        boxes = apply_box_delta(self.bbox_embed(hs), feats["references"])  # every layer refines the same R0
        layers = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes, strict=True)]
        enc: dict[str, torch.Tensor] = {"pred_logits": feats["enc_logits"], "pred_boxes": feats["enc_boxes"]}
        if self.segmentation_head is not None:
            head, spatial = self.segmentation_head, feats["features"][0]
            image_size = (pixels.shape[-2], pixels.shape[-1])
            # Training reads masks at sampled points only: the factorised form never builds B x G*Q x H/4 x W/4.
            sparse = self.training and not dense_masks
            masks = (head.forward_sparse if sparse else head)(spatial, list(hs), image_size)
            for layer, mask in zip(layers, masks, strict=True):
                layer["pred_masks"] = mask
            enc["pred_masks"] = (head.forward_encoder_sparse if sparse else head.forward_encoder)(
                spatial, feats["enc_features"], image_size
            )
        out: Outputs = dict(layers[-1])
        out["aux_outputs"] = layers[:-1]
        out["enc_outputs"] = enc
        return out

    def forward_export(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Export graph (spec 6): last layer, group 0 only.

        Returns:
            (boxes [B, Q, 4], logits [B, Q, K]) plus masks [B, Q, H/4, W/4] for segmentation models.
        """
        feats = self.forward_features(pixels, num_groups=1)
        last = feats["hs"][-1]
        boxes = apply_box_delta(self.bbox_embed(last), feats["references"])
        logits = self.class_embed(last)
        if self.segmentation_head is None:
            return boxes, logits
        image_size = (pixels.shape[-2], pixels.shape[-1])
        return boxes, logits, self.segmentation_head.forward_last(feats["features"][0], last, image_size)


def build_model(cfg: ModelConfig) -> RFDETRModel:
    """Build the (randomly initialised) model described by ``cfg``; load checkpoints with ``load_state_dict``."""
    vit = cfg.vit_width
    size = VIT_SIZES[cfg.vit_size]
    encoder = build_dinov2(
        width=vit,
        depth=size["depth"],
        num_heads=size["heads"],
        patch_size=cfg.patch_size,
        pos_grid=cfg.positional_encoding_size,
        num_windows=cfg.num_windows,
        out_feature_indexes=cfg.out_feature_indexes,
    )
    projector = MultiScaleProjector(vit, len(cfg.out_feature_indexes), cfg.hidden_dim, cfg.projector_scale)
    transformer = Transformer(
        dim=cfg.hidden_dim,
        num_classes_logits=cfg.num_classes + 1,
        num_queries=cfg.num_queries,
        num_groups=cfg.group_detr,
        num_levels=len(cfg.projector_scale),
        num_layers=cfg.dec_layers,
        sa_heads=cfg.sa_nheads,
        ca_heads=cfg.ca_nheads,
        num_points=cfg.dec_n_points,
        ffn_dim=cfg.dim_feedforward,
    )
    seg_head = None
    if cfg.segmentation_head:
        seg_head = SegmentationHead(cfg.hidden_dim, cfg.dec_layers, cfg.mask_downsample_ratio)
    return RFDETRModel(
        Backbone(encoder, projector),
        transformer,
        num_logits=cfg.num_classes + 1,
        num_queries=cfg.num_queries,
        group_detr=cfg.group_detr,
        segmentation_head=seg_head,
    )
