"""Stage-2 mask heads: per-query instance masks at 1/4 of the input, from a frozen detector's features.

Both heads read what :meth:`rfdetr.models.detector.RFDETRModel.forward_features` already computes: the projector map
the decoder attends to (``features[0]``, [B, D, h, w] at stride = patch size) and the decoder's query features
(``hs``, one [B, N, D] tensor per decoder layer). A mask logit is a dot product between a query embedding and a
per-pixel embedding, plus one learned bias (spec ``rfdetr_architecture.md`` section 7), so the loss can read a few
hundred points per matched query without ever building the dense [B, N, H/4, W/4] tensor
(:class:`rfdetr.losses.mask_logits.SparseMaskLogits`). Both produce masks for every decoder layer (auxiliary losses).

:class:`MaskHead` is rfdetr's segmentation head itself (:class:`rfdetr.models.segmentation_head.SegmentationHead`):
one depthwise ConvNeXt-style block per decoder layer, applied cumulatively at full width D on the stride-4 map, an
MLP (D -> 4D -> D) on the queries, and D-wide projections. Its keys are saved under ``segmentation_head.``, so a
stage-2 checkpoint with it reads like an rfdetr segmentation checkpoint.

:class:`MaskHeadNano` keeps the design but spends its compute where it is cheap:

* the D -> C (C = 32) projection runs on the stride-16 map *before* the bilinear upsampling: a 1x1 convolution
  commutes with bilinear resizing (both are linear and the interpolation weights sum to 1), so this is the same
  function as projecting after the resize, on 16x fewer pixels;
* one depthwise block at width C on the stride-4 map (instead of L blocks at width D); every decoder layer's masks
  share that pixel embedding, so auxiliary supervision costs only the point sampling;
* queries go through LayerNorm -> D->C -> GELU -> C->C instead of a D->4D->D MLP and a D->D projection.

Measured on nano (D = 256, L = 2) at 384 px, batch 2, float32 on 2 CPU threads (``bench/bench_stage2.py``):
MaskHead has 795,393 parameters, MaskHeadNano 20,513 (2.6 %). A stage-2 training step (frozen detector forward, about
0.46 s, plus the head's forward, loss and backward) takes 0.99 s with MaskHead and 0.52 s with MaskHeadNano, with a
peak memory growth of 439 MB and 81 MB; the same detector trained together with MaskHeadNano takes 3.92 s and 1,947 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.losses.mask_logits import SparseMaskLogits
from rfdetr.models.mask_head_config import (
    KEY_PREFIXES,
    MASK_HEAD_KINDS,
    NANO_HEAD_SIZES,
    NANO_WIDTH,
    MaskHeadConfig,
    MaskHeadKind,
    resolve_mask_head_kind,
)
from rfdetr.models.mask_head_dynamic import MaskHeadDynamic
from rfdetr.models.segmentation_head import DepthwiseConvBlock, SegmentationHead

__all__ = [
    "KEY_PREFIXES", "MASK_HEAD_KINDS", "NANO_HEAD_SIZES", "NANO_WIDTH", "MaskHead", "MaskHeadConfig", "MaskHeadKind",
    "MaskHeadNano", "build_mask_head", "resolve_mask_head_kind",
]

def _dot_masks(pixel_embed: torch.Tensor, query_embed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """pixel_embed [B, C, h, w], query_embed [B, N, C] -> mask logits [B, N, h, w]."""
    batch, dim, height, width = pixel_embed.shape
    logits = torch.bmm(query_embed, pixel_embed.reshape(batch, dim, height * width))
    return logits.view(batch, -1, height, width) + bias


class MaskHead(SegmentationHead):
    """rfdetr's segmentation head (spec section 7), with a :class:`MaskHeadConfig` (its sparse training outputs,
    ``forward_sparse`` / ``forward_encoder_sparse``, are :class:`SegmentationHead`'s).

    Args:
        dim: D.
        num_layers: one depthwise block per decoder layer.
        downsample_ratio: masks at 1/ratio of the input.
    """

    kind: ClassVar[str] = "full"
    key_prefix: ClassVar[str] = KEY_PREFIXES["full"]

    def __init__(self, dim: int, num_layers: int, downsample_ratio: int = 4) -> None:
        super().__init__(dim, num_layers, downsample_ratio)
        self.config = MaskHeadConfig("full", dim, num_layers, downsample_ratio=downsample_ratio)


class MaskHeadNano(nn.Module):
    """A light mask head for nano: width-C interaction, one depthwise block shared by all decoder layers.

    Args:
        dim: D, the detector's hidden width.
        num_layers: decoder layers that get masks (they share the pixel embedding).
        width: C, the interaction width.
        downsample_ratio: masks at 1/ratio of the input.
    """

    kind: ClassVar[str] = "nano"
    key_prefix: ClassVar[str] = KEY_PREFIXES["nano"]

    def __init__(self, dim: int, num_layers: int, width: int = NANO_WIDTH, downsample_ratio: int = 4) -> None:
        super().__init__()
        self.config = MaskHeadConfig("nano", dim, num_layers, width=width, downsample_ratio=downsample_ratio)
        self.num_layers, self.downsample_ratio = num_layers, downsample_ratio
        self.input_proj = nn.Conv2d(dim, width, kernel_size=1)
        self.block = DepthwiseConvBlock(width)
        self.spatial_features_proj = nn.Conv2d(width, width, kernel_size=1)
        self.query_features_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.GELU(),
                                                 nn.Linear(width, width))
        self.bias = nn.Parameter(torch.zeros(1))

    def _projected(self, spatial_features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """[B, D, h, w] -> [B, C, H/ratio, W/ratio]: project at stride 16, then upsample (same function, cheaper)."""
        size = (image_size[0] // self.downsample_ratio, image_size[1] // self.downsample_ratio)
        return F.interpolate(self.input_proj(spatial_features), size=size, mode="bilinear", align_corners=False)

    def pixel_embedding(self, spatial_features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel mask embedding [B, C, H/ratio, W/ratio] shared by every decoder layer."""
        return self.spatial_features_proj(self.block(self._projected(spatial_features, image_size)))

    def project_queries(self, query_features: torch.Tensor) -> torch.Tensor:
        """[B, N, D] decoder outputs -> [B, N, C] mask embeddings."""
        return self.query_features_proj(query_features)

    def forward(
        self, spatial_features: torch.Tensor, query_features: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Dense mask logits: one [B, N, H/ratio, W/ratio] tensor per entry of ``query_features`` ([B, N, D])."""
        pixel_embed = self.pixel_embedding(spatial_features, image_size)
        return [_dot_masks(pixel_embed, self.project_queries(q), self.bias) for q in query_features]

    def forward_last(
        self, spatial_features: torch.Tensor, query_features: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Dense masks of one query set (inference): [B, D, h, w] and [B, N, D] -> [B, N, H/ratio, W/ratio]."""
        return self.forward(spatial_features, [query_features], image_size)[0]

    def forward_sparse(
        self, spatial_features: torch.Tensor, query_features: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> list[SparseMaskLogits]:
        """Factorised logits per decoder layer (training): one shared pixel embedding [B, C, H/4, W/4]."""
        pixel_embed = self.pixel_embedding(spatial_features, image_size)
        return [SparseMaskLogits(pixel_embed, self.project_queries(q), self.bias) for q in query_features]

    def forward_encoder_sparse(
        self, spatial_features: torch.Tensor, query_features: torch.Tensor, image_size: tuple[int, int]
    ) -> SparseMaskLogits:
        """Two-stage proposal masks, block skipped (as MaskHead); for single-stage training."""
        pixel_embed = self.spatial_features_proj(self._projected(spatial_features, image_size))
        return SparseMaskLogits(pixel_embed, self.project_queries(query_features), self.bias)


def build_mask_head(cfg: MaskHeadConfig) -> nn.Module:
    """The (randomly initialised) head described by ``cfg``."""
    if cfg.kind == "full":
        return MaskHead(cfg.dim, cfg.num_layers, cfg.downsample_ratio)
    if cfg.kind == "dynamic":
        return MaskHeadDynamic(cfg.dim, cfg.num_layers, cfg.width, cfg.downsample_ratio)
    return MaskHeadNano(cfg.dim, cfg.num_layers, cfg.width, cfg.downsample_ratio)
