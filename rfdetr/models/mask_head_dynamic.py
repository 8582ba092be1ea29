"""MaskHeadDynamic: a stage-2 mask head that sees the image at stride 4 and draws each mask with its own small MLP.

Why: the frozen detector's features are a stride-16 map trained for boxes. MaskHead and MaskHeadNano upsample it and
take a dot product with each query, which is linear per pixel: it cannot draw an edge the features do not carry, and
a frozen ViT has nothing finer than its patches. Measured with ``bench/bench_two_stage.py``, their masks fall behind
joint training at AP75 (the edges). This head adds what they lack, as the anchors do (Mask R-CNN and Mask Frozen-DETR
refine masks inside each box at a higher resolution than the detector's features):

* a light trainable path from the image itself: two stride-2 3x3 convolutions give a [B, C, H/4, W/4] map of edges
  and colours, added to the (projected, upsampled) detector map and mixed by one depthwise block;
* per-query nonlinear masks (CondInst, arXiv 2003.05664): a controller maps each query's decoder feature to the
  weights of a 3-layer MLP of width 8 that runs on every pixel's 8 mask features plus the pixel's coordinates
  relative to that query's predicted box (edges at -1 and +1). The box tells the MLP where the object is, the image
  path where its border is, and the query what it is; the output is still [B, N, H/4, W/4] logits, so the export
  contract, the runner and the loss are unchanged.

Training reads only the matched queries' masks (:class:`rfdetr.losses.mask_logits.DynamicMaskLogits`), as the other
heads' factorised logits do. Boxes are detached: in single-stage training the mask loss must not move the boxes
through the coordinates.

Sizes on nano (D = 256, C = 32, hidden 8): 124,753 parameters (16 % of MaskHead), 109k of them the controller.
Measured (README "Why two stages", tiny at 192 px): on the harder synthetic set segm mAP50:95 0.109 against 0.022
(MaskHeadNano), 0.031 (MaskHead) and 0.055 for detector and MaskHeadNano trained jointly from the same detector, at
0.18x joint training's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.losses.mask_logits import DynamicMaskLogits, dynamic_param_count
from rfdetr.models.mask_head_config import KEY_PREFIXES, MaskHeadConfig
from rfdetr.models.segmentation_head import DepthwiseConvBlock

__all__ = ["DYNAMIC_HIDDEN", "DYNAMIC_MASK_CHANNELS", "MaskHeadDynamic"]

# CondInst's sizes: 8 mask-feature channels and 8-wide hidden layers (169 dynamic parameters per query).
DYNAMIC_MASK_CHANNELS = 8
DYNAMIC_HIDDEN = 8


class MaskHeadDynamic(nn.Module):
    """Image path at stride 4 + per-query dynamic MLPs on box-relative coordinates.

    Args:
        dim: D, the detector's hidden width (projector map and queries).
        num_layers: decoder layers that get masks (they share the pixel features).
        width: C, the pixel path's width.
        downsample_ratio: masks at 1/ratio of the input; a power of two (one stride-2 convolution per factor 2).
    """

    kind: ClassVar[str] = "dynamic"
    key_prefix: ClassVar[str] = KEY_PREFIXES["dynamic"]
    # What the Segmenter must pass besides the detector's features and queries.
    reads: ClassVar[tuple[str, ...]] = ("pixels", "boxes")

    def __init__(self, dim: int, num_layers: int, width: int = 32, downsample_ratio: int = 4) -> None:
        super().__init__()
        if downsample_ratio < 2 or downsample_ratio & (downsample_ratio - 1):
            raise ValueError(f"MaskHeadDynamic needs a power-of-two downsample ratio >= 2, got {downsample_ratio}")
        self.config = MaskHeadConfig("dynamic", dim, num_layers, width=width, downsample_ratio=downsample_ratio)
        self.num_layers, self.downsample_ratio, self.hidden = num_layers, downsample_ratio, DYNAMIC_HIDDEN
        self.input_proj = nn.Conv2d(dim, width, kernel_size=1)
        stem: list[nn.Module] = []
        channels = 3
        for i in range(downsample_ratio.bit_length() - 1):
            out = width if 2 ** (i + 2) > downsample_ratio else max(width // 2, 8)
            stem += [nn.Conv2d(channels, out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            channels = out
        self.stem = nn.Sequential(*stem[:-1])  # no activation on the sum's input: the block normalises it
        self.block = DepthwiseConvBlock(width)
        self.mask_features = nn.Conv2d(width, DYNAMIC_MASK_CHANNELS, kernel_size=1)
        num_params = dynamic_param_count(DYNAMIC_MASK_CHANNELS + 2, DYNAMIC_HIDDEN)
        self.controller = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_params))
        self._init_controller()

    def _init_controller(self) -> None:
        """Every query starts with the same well-scaled MLP (the output layer's bias, laid out as nn.Linear would
        initialise three layers) and small query-dependent deviations; an all-small start would leave the three
        weight matrices multiplying each other's near-zero gradients."""
        last = self.controller[-1]
        cin, hidden = DYNAMIC_MASK_CHANNELS + 2, DYNAMIC_HIDDEN
        parts = []
        for fan_in, fan_out in ((cin, hidden), (hidden, hidden), (hidden, 1)):
            layer = nn.Linear(fan_in, fan_out)
            parts += [layer.weight.detach().flatten(), layer.bias.detach()]
        with torch.no_grad():
            last.bias.copy_(torch.cat(parts))
            last.weight.mul_(0.1)

    def pixel_features(self, spatial_features: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] detector map and [B, 3, H, W] input -> [B, 8, H/ratio, W/ratio] mask features."""
        size = (pixels.shape[-2] // self.downsample_ratio, pixels.shape[-1] // self.downsample_ratio)
        coarse = F.interpolate(self.input_proj(spatial_features), size=size, mode="bilinear", align_corners=False)
        fine = self.stem(pixels)[..., : size[0], : size[1]]
        return self.mask_features(self.block(coarse + fine))

    def _logits(self, features: torch.Tensor, queries: torch.Tensor, boxes: torch.Tensor) -> DynamicMaskLogits:
        return DynamicMaskLogits(features, self.controller(queries), boxes.detach(), self.hidden)

    @staticmethod
    def _check(pixels: torch.Tensor | None, boxes: object) -> None:
        if pixels is None or boxes is None:
            raise ValueError("MaskHeadDynamic reads the input pixels and the predicted boxes: pass pixels= and boxes=")

    def forward(self, spatial_features: torch.Tensor, query_features: Sequence[torch.Tensor],
                image_size: tuple[int, int], *, pixels: torch.Tensor | None = None,
                boxes: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Dense logits [B, N, H/ratio, W/ratio] per decoder layer (queries [B, N, D], boxes [B, N, 4] cxcywh)."""
        self._check(pixels, boxes)
        feats = self.pixel_features(spatial_features, pixels)
        return [self._logits(feats, q, b).dense() for q, b in zip(query_features, boxes, strict=True)]

    def forward_last(self, spatial_features: torch.Tensor, query_features: torch.Tensor, image_size: tuple[int, int],
                     *, pixels: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Dense masks of one query set (inference, export): [B, N, H/ratio, W/ratio]."""
        self._check(pixels, boxes)
        return self._logits(self.pixel_features(spatial_features, pixels), query_features, boxes).dense()

    def forward_sparse(self, spatial_features: torch.Tensor, query_features: Sequence[torch.Tensor],
                       image_size: tuple[int, int], *, pixels: torch.Tensor | None = None,
                       boxes: Sequence[torch.Tensor] | None = None) -> list[DynamicMaskLogits]:
        """Per decoder layer, logits the loss reads for matched queries only (shared pixel features)."""
        self._check(pixels, boxes)
        feats = self.pixel_features(spatial_features, pixels)
        return [self._logits(feats, q, b) for q, b in zip(query_features, boxes, strict=True)]

    def forward_encoder_sparse(self, spatial_features: torch.Tensor, query_features: torch.Tensor,
                               image_size: tuple[int, int], *, pixels: torch.Tensor | None = None,
                               boxes: torch.Tensor | None = None) -> DynamicMaskLogits:
        """Two-stage proposal masks (single-stage training): the proposals' features and boxes."""
        self._check(pixels, boxes)
        return self._logits(self.pixel_features(spatial_features, pixels), query_features, boxes)
