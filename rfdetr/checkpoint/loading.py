"""What a checkpoint says about the model to build: its preset config, a stage-2 mask head, its class names.

Used by :class:`rfdetr.detr.RFDETR` when it loads weights; everything here works on checkpoint dicts and configs, and
builds modules only for a stage-2 mask head.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rfdetr.checkpoint.files import CLASS_BIAS_KEY, CheckpointError
from rfdetr.checkpoint.infer import infer_model_config
from rfdetr.config import ModelConfig, get_preset
from rfdetr.data.coco_classes import COCO_CLASSES
from rfdetr.models.mask_head import MaskHeadConfig, build_mask_head
from rfdetr.models.segmenter import Segmenter

__all__ = ["attach_mask_head", "model_config_for_checkpoint", "resolve_class_names", "split_stage2", "with_resolution"]

logger = logging.getLogger(__name__)

# rfdetr records the 80 COCO names for its COCO models, but their logits are indexed by category id.
_COCO_80 = [name for name in COCO_CLASSES if name != "N/A"]


def model_config_for_checkpoint(
size: str,
    state_dict: dict[str, torch.Tensor] | None,
    ckpt: dict[str, Any] | None,
    num_classes: int | None,
    resolution: int | None,
) -> ModelConfig:
    """The preset ``size``, aligned with a checkpoint (class count, stored grid, queries) and the user's overrides.

    Args:
        size: preset key of the model class being built.
        state_dict: the detector's weights (``None``: a randomly initialised model).
        ckpt: the checkpoint they came from.
        num_classes: a class count that overrides the checkpoint's.
        resolution: an input side that overrides the preset's.

    Raises:
        ValueError: ``num_classes`` < 1, or a resolution the preset cannot take.
    """
    preset = get_preset(size)
    cfg = preset
    if state_dict is not None:
        try:
            found: ModelConfig | None = infer_model_config(state_dict, ckpt)
        except CheckpointError:
            found = None
        if found is not None and found.name == preset.name:
            cfg = found
        else:
            # Another preset's weights: keep this architecture and let loading report what does not fit
            # (same-structure presets, e.g. Medium weights in a Large, load with an interpolated grid).
            if found is not None:
                logger.warning("checkpoint looks like %s, loading it into %s", found.upstream_name,
                               preset.upstream_name)
            if CLASS_BIAS_KEY in state_dict:
                cfg = cfg.replace(num_classes=int(state_dict[CLASS_BIAS_KEY].shape[0]) - 1)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = cfg.replace(num_classes=int(num_classes))
    if resolution is not None:
        cfg = with_resolution(cfg, preset, int(resolution))
    return cfg



def split_stage2(
    ckpt: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], MaskHeadConfig | None]:
    """(detector keys, mask-head keys without their prefix, head config) of a stage-2 checkpoint.

    Other checkpoints come back unchanged with no head (rfdetr segmentation checkpoints keep their
    ``segmentation_head.*``: it is part of their preset).
    """
    stored = ckpt.get("mask_head")
    if not isinstance(stored, dict):
        return state_dict, {}, None
    try:
        head_cfg = MaskHeadConfig.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's 'mask_head' entry {stored} is not a mask-head config: {err}") from None
    prefix = head_cfg.key_prefix
    head = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not head:
        raise CheckpointError(f"the checkpoint records a {head_cfg.kind} mask head but holds no '{prefix}*' tensors")
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix)}, head, head_cfg


def attach_mask_head(detector: nn.Module, head_cfg: MaskHeadConfig, head_state: dict[str, torch.Tensor],
                      owner: str) -> Segmenter:
    """The detector plus the stage-2 head rebuilt from its config and weights (strict)."""
    head = build_mask_head(head_cfg)
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"cannot load the checkpoint's {head_cfg.kind} mask head into {owner}: "
                              f"{str(err).splitlines()[0]}") from None
    return Segmenter(detector, head, freeze_detector=True)


def with_resolution(cfg: ModelConfig, preset: ModelConfig, resolution: int) -> ModelConfig:
    """Change the input side; presets whose grid is resolution / patch (all but Base) follow it (spec 3.3)."""
    if resolution <= 0 or resolution % cfg.input_divisor != 0:
        raise ValueError(
            f"resolution must be a positive multiple of patch_size * num_windows = {cfg.input_divisor} "
            f"for {preset.upstream_name}, got {resolution}"
        )
    if preset.positional_encoding_size * preset.patch_size == preset.resolution:
        return cfg.replace(resolution=resolution, positional_encoding_size=resolution // cfg.patch_size)
    return cfg.replace(resolution=resolution)


def resolve_class_names(num_logits: int, explicit: Sequence[str] | None, from_ckpt: Sequence[str] | None) -> list[str]:
    """Names indexed by class id: explicit > checkpoint > COCO (91 logits) > ``class_{i}``."""
    if explicit is not None:
        return list(explicit)
    if from_ckpt is not None and list(from_ckpt) != _COCO_80:
        return list(from_ckpt)
    # rfdetr records the 80 COCO names for its COCO models, but their logits are indexed by category id.
    if num_logits == len(COCO_CLASSES):
        return list(COCO_CLASSES)
    return [f"class_{i}" for i in range(num_logits)]
