"""The :class:`~rfdetr.config.ModelConfig` a state dict was trained with, read from its tensor shapes.

Spec section 12.1: never trust a checkpoint's ``args`` for the architecture. The preset is matched by shapes; a
recorded ``model_name`` / ``model_config`` only chooses among presets of the same structure.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rfdetr.checkpoint.files import (
    _OVERRIDABLE_FIELDS,
    CLASS_BIAS_KEY,
    PATCH_EMBED_KEY,
    POS_EMBED_KEY,
    CheckpointError,
    checkpoint_args,
    checkpoint_class_names,
)
from rfdetr.config import MODEL_PRESETS, TEST_PRESETS, ModelConfig

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateDictShapes:
    """Architecture facts read from tensor shapes alone (spec 12.1: never trust ``args`` for the architecture).

    Attributes:
        patch_size: from the patch-embedding conv, [C, 3, p, p].
        vit_width: C.
        pe: side of the stored position-embedding grid, [1, pe*pe + 1, C].
        hidden_dim: decoder width D, from ``query_feat.weight`` [G*Q, D].
        dec_layers: number of ``transformer.decoder.layers.{l}``.
        num_levels: number of projector stages.
        segmentation_head: whether ``segmentation_head.*`` tensors exist.
        group_detr: number of ``transformer.enc_output.{g}`` entries.
        query_rows: G*Q.
        num_logits: K = num_classes + 1.
    """

    patch_size: int
    vit_width: int
    pe: int
    hidden_dim: int
    dec_layers: int
    num_levels: int
    segmentation_head: bool
    group_detr: int
    query_rows: int
    num_logits: int

    @property
    def queries_per_group(self) -> int:
        return self.query_rows // max(self.group_detr, 1)


def _count_indexed(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """Number of distinct ``{prefix}{i}.`` indices (0 if none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def read_shapes(state_dict: Mapping[str, Tensor]) -> StateDictShapes:
    """Read the architecture facts of an RF-DETR state dict (see :class:`StateDictShapes`).

    Raises:
        CheckpointError: a required key is missing (not an RF-DETR state dict).
    """
    required = (PATCH_EMBED_KEY, POS_EMBED_KEY, "query_feat.weight", CLASS_BIAS_KEY)
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"not an RF-DETR state dict: missing {missing}; first keys: {list(state_dict)[:8]}"
        )
    patch = state_dict[PATCH_EMBED_KEY].shape  # [C, 3, p, p]
    pos = state_dict[POS_EMBED_KEY].shape  # [1, pe*pe + 1, C]
    pe = math.isqrt(pos[1] - 1)
    if pe * pe != pos[1] - 1:
        raise CheckpointError(f"{POS_EMBED_KEY} has {pos[1] - 1} patch positions, which is not a square grid")
    return StateDictShapes(
        patch_size=int(patch[-1]),
        vit_width=int(patch[0]),
        pe=pe,
        hidden_dim=int(state_dict["query_feat.weight"].shape[1]),
        dec_layers=_count_indexed(state_dict, "transformer.decoder.layers."),
        num_levels=_count_indexed(state_dict, "backbone.0.projector.stages."),
        segmentation_head=any(k.startswith("segmentation_head.") for k in state_dict),
        group_detr=_count_indexed(state_dict, "transformer.enc_output.") or 1,
        query_rows=int(state_dict["query_feat.weight"].shape[0]),
        num_logits=int(state_dict[CLASS_BIAS_KEY].shape[0]),
    )


def _fits(preset: ModelConfig, shapes: StateDictShapes) -> bool:
    """Whether the preset's structure (everything but resolution and query count) matches the shapes."""
    return (
        preset.patch_size == shapes.patch_size
        and preset.vit_width == shapes.vit_width
        and preset.hidden_dim == shapes.hidden_dim
        and preset.dec_layers == shapes.dec_layers
        and len(preset.projector_scale) == shapes.num_levels
        and preset.segmentation_head == shapes.segmentation_head
    )


def _named_preset(ckpt: Mapping[str, Any], candidates: Mapping[str, ModelConfig]) -> str | None:
    """Preset name recorded in the checkpoint: ours (``model_config.name``) or rfdetr's class name (``model_name``)."""
    model_config = ckpt.get("model_config")
    model_config = model_config if isinstance(model_config, Mapping) else {}
    if model_config.get("name") in candidates:
        return str(model_config["name"])
    by_upstream = {p.upstream_name: key for key, p in MODEL_PRESETS.items()}
    for name in (ckpt.get("model_name"), model_config.get("model_name")):
        if isinstance(name, str) and name.strip() in by_upstream:
            return by_upstream[name.strip()]
    return None


def infer_model_config(state_dict: Mapping[str, Tensor], ckpt: Mapping[str, Any] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` that a state dict was trained with.

    The preset is matched by tensor shapes (patch size, ViT width, decoder depth, projector levels, seg head), using a
    recorded ``model_name`` / ``model_config`` to choose among presets of the same structure, then the stored
    position-embedding grid. The class count and pe come from the tensors. Resolution, windows and query counts come
    from a saved ``model_config`` when present, else ``args.resolution``, else the preset.

    Query count: rfdetr slices stored query tables to the preset's count per group, so with no saved config we keep
    ``min(preset Q, rows / groups)``. This is what makes the SegLarge file (likely 300 stored queries per group,
    preset 200; spec 12.6) reproduce rfdetr.

    Args:
        state_dict: weights from :func:`extract_state_dict`.
        ckpt: the full checkpoint dict, for ``model_name`` / ``model_config`` / ``args`` / class names.

    Raises:
        CheckpointError: no preset has this structure; the message lists the shapes that were read.
    """
    ckpt = ckpt or {}
    shapes = read_shapes(state_dict)
    # A checkpoint that records one of the test configs (``tiny``: the demo and the tests) says what it is; shape
    # matching alone never picks those configs, since no released file has them.
    candidates = dict(MODEL_PRESETS)
    recorded = ckpt.get("model_config")
    if isinstance(recorded, Mapping) and recorded.get("name") in TEST_PRESETS:
        candidates[str(recorded["name"])] = TEST_PRESETS[str(recorded["name"])]
    fitting = [key for key, preset in candidates.items() if _fits(preset, shapes)]
    if not fitting:
        raise CheckpointError(
            "no model preset matches this state dict: "
            f"patch_size={shapes.patch_size} ({PATCH_EMBED_KEY} {tuple(state_dict[PATCH_EMBED_KEY].shape)}), "
            f"vit_width={shapes.vit_width}, pe={shapes.pe} ({POS_EMBED_KEY} {tuple(state_dict[POS_EMBED_KEY].shape)}), "
            f"hidden_dim={shapes.hidden_dim}, dec_layers={shapes.dec_layers}, projector levels={shapes.num_levels}, "
            f"segmentation_head={shapes.segmentation_head}, query rows={shapes.query_rows}, "
            f"class logits={shapes.num_logits}. Known presets: {', '.join(MODEL_PRESETS)}"
        )

    named = _named_preset(ckpt, candidates)
    if named in fitting:
        name = named
    else:
        if named is not None:
            logger.warning("checkpoint says %r but its tensors do not fit that preset; matching by shape", named)
        # The stored pe grid separates same-structure presets (e.g. Medium 36 vs Large 44); closest wins when the
        # model was fine-tuned at another resolution.
        name = min(fitting, key=lambda k: abs(candidates[k].positional_encoding_size - shapes.pe))
    preset = candidates[name]

    changes: dict[str, Any] = {
        "num_classes": shapes.num_logits - 1,
        "positional_encoding_size": shapes.pe,
        "group_detr": shapes.group_detr,
        "num_queries": min(preset.num_queries, shapes.queries_per_group),
    }
    if shapes.pe != preset.positional_encoding_size:
        # rfdetr derives pe = resolution / patch when the resolution is changed (all but Base).
        changes["resolution"] = shapes.pe * shapes.patch_size

    saved = ckpt.get("model_config")
    if isinstance(saved, Mapping):
        for key in _OVERRIDABLE_FIELDS:
            value = saved.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                changes[key] = value
    elif isinstance(checkpoint_args(ckpt).get("resolution"), int):
        changes["resolution"] = checkpoint_args(ckpt)["resolution"]

    if changes["num_queries"] > shapes.queries_per_group:
        logger.warning(
            "saved num_queries=%d exceeds the %d stored per group; using %d",
            changes["num_queries"], shapes.queries_per_group, shapes.queries_per_group,
        )
        changes["num_queries"] = shapes.queries_per_group
    divisor = shapes.patch_size * changes.get("num_windows", preset.num_windows)
    if changes.get("resolution", preset.resolution) % divisor != 0:
        logger.warning(
            "recorded resolution %s is not a multiple of %d; using the preset's %d",
            changes.get("resolution"), divisor, preset.resolution,
        )
        changes["resolution"] = preset.resolution
    names = checkpoint_class_names(ckpt)
    if names is not None:
        changes["class_names"] = tuple(names)
    return preset.replace(**changes)


