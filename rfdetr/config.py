"""Model presets as data: the one place where RF-DETR's architecture hyper-parameters live.

Every preset is a frozen :class:`ModelConfig`. The numbers come from the variant table of the RF-DETR spec
(``rfdetr_architecture.md`` section 1). Presets state everything explicitly so that a checkpoint can be matched to
one by shape alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# ImageNet statistics used by every released RF-DETR model (predict, evaluation and export).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ViT encoder sizes: width, heads, depth (MLP ratio 4). "tiny" is not an rfdetr encoder: it exists for fast CPU tests
# and demos (TINY_CONFIG) and never loads released weights.
VIT_SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 384, "heads": 6, "depth": 12},
    "base": {"width": 768, "heads": 12, "depth": 12},
    "tiny": {"width": 96, "heads": 2, "depth": 4},
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one RF-DETR variant.

    Attributes:
        name: our preset name (``nano``, ``seg-nano``, ...).
        upstream_name: the matching rfdetr class name, written into checkpoints as ``model_name``.
        encoder: rfdetr's encoder id (``dinov2_windowed_small`` or ``dinov2_windowed_base``).
        hidden_dim: decoder / projector width D.
        patch_size: ViT patch size.
        num_windows: windows per side in the windowed ViT blocks (1 = no windowing).
        resolution: default square input side in pixels.
        positional_encoding_size: side of the position-embedding grid stored in the checkpoint.
        out_feature_indexes: 1-based ViT stages tapped for the projector (also decides the global blocks).
        projector_scale: projector output levels, e.g. ``("P4",)``.
        dec_layers: number of decoder layers L.
        num_queries: queries per group Q.
        num_select: detections kept by the post-processor.
        sa_nheads / ca_nheads: decoder self- and cross-attention heads.
        dec_n_points: deformable-attention sampling points per head and level.
        segmentation_head: whether the model has rfdetr's segmentation head.
        num_classes: largest class id; the head has ``num_classes + 1`` logits (DETR convention).
        group_detr: query groups used in training (only group 0 at inference).
        mask_downsample_ratio: mask logits are at 1/ratio of the input.
        dim_feedforward: decoder FFN width.
    """

    name: str
    upstream_name: str
    encoder: str = "dinov2_windowed_small"
    hidden_dim: int = 256
    patch_size: int = 16
    num_windows: int = 2
    resolution: int = 384
    positional_encoding_size: int = 24
    out_feature_indexes: tuple[int, ...] = (3, 6, 9, 12)
    projector_scale: tuple[str, ...] = ("P4",)
    dec_layers: int = 2
    num_queries: int = 300
    num_select: int = 300
    sa_nheads: int = 8
    ca_nheads: int = 16
    dec_n_points: int = 2
    segmentation_head: bool = False
    num_classes: int = 90
    group_detr: int = 13
    mask_downsample_ratio: int = 4
    dim_feedforward: int = 2048
    class_names: tuple[str, ...] = field(default=(), compare=False)

    @property
    def vit_size(self) -> str:
        """``small`` or ``base``, parsed from the encoder id."""
        return self.encoder.rsplit("_", 1)[-1]

    @property
    def vit_width(self) -> int:
        return VIT_SIZES[self.vit_size]["width"]

    @property
    def input_divisor(self) -> int:
        """Input H and W must be multiples of this (patch size times windows per side)."""
        return self.patch_size * self.num_windows

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (presets are frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict (lists instead of tuples) for JSON and checkpoints."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**kwargs)


def _seg(name: str, upstream: str, **kw: Any) -> ModelConfig:
    base: dict[str, Any] = dict(patch_size=12, segmentation_head=True, dec_layers=4, num_queries=100, num_select=100)
    base.update(kw)
    return ModelConfig(name=name, upstream_name=upstream, **base)


MODEL_PRESETS: dict[str, ModelConfig] = {
    "nano": ModelConfig("nano", "RFDETRNano", resolution=384, positional_encoding_size=24, dec_layers=2),
    "small": ModelConfig("small", "RFDETRSmall", resolution=512, positional_encoding_size=32, dec_layers=3),
    "medium": ModelConfig("medium", "RFDETRMedium", resolution=576, positional_encoding_size=36, dec_layers=4),
    "large": ModelConfig("large", "RFDETRLarge", resolution=704, positional_encoding_size=44, dec_layers=4),
    "base": ModelConfig(
        "base", "RFDETRBase", patch_size=14, num_windows=4, resolution=560, positional_encoding_size=37,
        out_feature_indexes=(2, 5, 8, 11), dec_layers=3,
    ),
    "seg-preview": _seg(
        "seg-preview", "RFDETRSegPreview", num_windows=2, resolution=432, positional_encoding_size=36,
        num_queries=200, num_select=200,
    ),
    "seg-nano": _seg("seg-nano", "RFDETRSegNano", num_windows=1, resolution=312, positional_encoding_size=26),
    "seg-small": _seg("seg-small", "RFDETRSegSmall", num_windows=2, resolution=384, positional_encoding_size=32),
    "seg-medium": _seg(
        "seg-medium", "RFDETRSegMedium", num_windows=2, resolution=432, positional_encoding_size=36, dec_layers=5,
        num_queries=200, num_select=200,
    ),
    "seg-large": _seg(
        "seg-large", "RFDETRSegLarge", num_windows=2, resolution=504, positional_encoding_size=42, dec_layers=5,
        num_queries=200, num_select=200,
    ),
    "seg-xlarge": _seg(
        "seg-xlarge", "RFDETRSegXLarge", num_windows=2, resolution=624, positional_encoding_size=52, dec_layers=6,
        num_queries=300, num_select=300,
    ),
    "seg-2xlarge": _seg(
        "seg-2xlarge", "RFDETRSeg2XLarge", num_windows=2, resolution=768, positional_encoding_size=64, dec_layers=6,
        num_queries=300, num_select=300,
    ),
}

# A few-MB model with every RF-DETR component (windowed ViT, projector, two-stage 13-group decoder) for CPU tests.
TINY_CONFIG = ModelConfig(
    "tiny", "RFDETRNano", encoder="dinov2_windowed_tiny", hidden_dim=64, patch_size=16, num_windows=2, resolution=64,
    positional_encoding_size=4, out_feature_indexes=(1, 2, 3, 4), dec_layers=2, num_queries=20, num_select=20,
    sa_nheads=4, ca_nheads=4, dec_n_points=2, dim_feedforward=128,
)

# TINY_CONFIG with rfdetr's segmentation head, for single-stage CPU tests. 96 px, not 64: at 64 px its 4x4 token grid
# is smaller than the 20 queries, and then train-mode (13 groups) and eval-mode outputs differ.
TINY_SEG_CONFIG = TINY_CONFIG.replace(
    name="seg-tiny", upstream_name="RFDETRSegNano", segmentation_head=True, resolution=96, positional_encoding_size=6
)
# Configs for tests and demos only: never in MODEL_PRESETS (no official weights, never inferred from a checkpoint).
TEST_PRESETS: dict[str, ModelConfig] = {c.name: c for c in (TINY_CONFIG, TINY_SEG_CONFIG)}

DETECTION_PRESETS: tuple[str, ...] = ("nano", "small", "medium", "base", "large")
SEGMENTATION_PRESETS: tuple[str, ...] = tuple(k for k in MODEL_PRESETS if k.startswith("seg-"))


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; raises ``ValueError`` listing the valid names otherwise."""
    if name in TEST_PRESETS:
        return TEST_PRESETS[name]
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; choose one of: {', '.join(MODEL_PRESETS)}") from None
