"""Hugging Face transformers' RF-DETR folders (``config.json`` + ``model.safetensors``), read and written.

transformers (verified: 5.25.0) ships RF-DETR as ``RfDetrForObjectDetection`` and ``RfDetrForInstanceSegmentation``:
the same network under other key names, with the decoder's packed self-attention ``in_proj`` split into ``q/k/v``.

* :func:`read_transformers_checkpoint` turns such a folder (or its ``model.safetensors`` with ``config.json`` beside
  it) into a checkpoint dict of ours (:func:`~rfdetr.checkpoint.files.make_checkpoint`), so every loader that goes
  through :func:`~rfdetr.checkpoint.reader.load_checkpoint_file` accepts it. Needs ``safetensors`` and JSON only,
  never transformers.
* :func:`save_transformers_folder` writes a checkpoint of ours as a folder ``transformers.AutoModelForObjectDetection``
  (or ``AutoModelForInstanceSegmentation``) loads with no missing keys, plus ``preprocessor_config.json``.

The key mapping is data (:data:`RENAMES`, :data:`SEGMENTATION_RENAMES`, :data:`PACKED`), used in both directions.
Folders are written under the modules' own names (``model.backbone.backbone...``, as ``model.state_dict()`` has them).
transformers 5.25's own ``save_pretrained`` writes rfdetr's key names instead (its loader converts them on the fly);
both layouts are read.

One step transformers computes differently: its projector's conv LayerNorms use ``config.layer_norm_eps`` (default
1e-5), rfdetr's use 1e-6. Folders written here say 1e-6, so transformers computes exactly rfdetr's network; folders
converted by transformers' own script keep 1e-5, and this toolkit then computes with 1e-6 (logged): that eps is the
difference transformers' port reports against rfdetr (1.7e-4 on RFDETRSmall's logits).

CLI (direction from the input: a transformers folder becomes a ``.pth`` of ours, anything else a folder)::

    python -m rfdetr.checkpoint.huggingface --checkpoint runs/detector_nano_384_1/checkpoint_best_total.pth --output hf/
    python -m rfdetr.checkpoint.huggingface --checkpoint hf/ --output model.pth
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rfdetr.checkpoint.files import (
    TRANSFORMERS_CONFIG_FILE as CONFIG_FILE,
)
from rfdetr.checkpoint.files import (
    TRANSFORMERS_WEIGHTS_FILE as WEIGHTS_FILE,
)
from rfdetr.checkpoint.files import (
    CheckpointError,
    checkpoint_class_names,
    extract_state_dict,
    is_transformers_checkpoint,
    load_torch_checkpoint,
    make_checkpoint,
)
from rfdetr.checkpoint.infer import infer_model_config, read_shapes
from rfdetr.checkpoint.loading import resolve_class_names
from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD, VIT_SIZES, ModelConfig, get_preset
from rfdetr.models.mask_head import MaskHeadConfig

__all__ = [
    "CONFIG_FILE", "PROCESSOR_FILE", "WEIGHTS_FILE", "from_transformers_state_dict", "is_transformers_checkpoint",
    "read_transformers_checkpoint", "save_model_as_transformers", "save_transformers_folder",
    "to_transformers_state_dict", "transformers_config", "transformers_processor_config",
]

logger = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "rf_detr"
DETECTION_CLASS = "RfDetrForObjectDetection"
SEGMENTATION_CLASS = "RfDetrForInstanceSegmentation"
# The transformers release these folders were verified with (written into config.json as transformers does).
TRANSFORMERS_VERSION = "5.25.0"
INSTALL_HINT = "pip install 'rtdetr-seg[hf]' (or: pip install safetensors==0.8.0)"
# rfdetr's projector LayerNorm eps; transformers reads it from config.layer_norm_eps.
PROJECTOR_EPS = 1e-6

# Key renames, ours -> transformers' RfDetrForObjectDetection, first match wins (in both directions). Each rule maps a
# key prefix; ``{i}`` is a number carried across; the rest of the key is kept.
RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.0.encoder.encoder.embeddings.", "model.backbone.backbone.embeddings."),
    ("backbone.0.encoder.encoder.encoder.layer.{i}.attention.attention.query.",
     "model.backbone.backbone.encoder.layer.{i}.attention.q_proj."),
    ("backbone.0.encoder.encoder.encoder.layer.{i}.attention.attention.key.",
     "model.backbone.backbone.encoder.layer.{i}.attention.k_proj."),
    ("backbone.0.encoder.encoder.encoder.layer.{i}.attention.attention.value.",
     "model.backbone.backbone.encoder.layer.{i}.attention.v_proj."),
    ("backbone.0.encoder.encoder.encoder.layer.{i}.attention.output.dense.",
     "model.backbone.backbone.encoder.layer.{i}.attention.o_proj."),
    ("backbone.0.encoder.encoder.encoder.layer.{i}.", "model.backbone.backbone.encoder.layer.{i}."),
    ("backbone.0.encoder.encoder.layernorm.", "model.backbone.backbone.layernorm."),
    ("backbone.0.projector.stages.0.0.cv1.conv.", "model.backbone.projector.projector_layer.conv1.conv."),
    ("backbone.0.projector.stages.0.0.cv1.bn.", "model.backbone.projector.projector_layer.conv1.norm."),
    ("backbone.0.projector.stages.0.0.cv2.conv.", "model.backbone.projector.projector_layer.conv2.conv."),
    ("backbone.0.projector.stages.0.0.cv2.bn.", "model.backbone.projector.projector_layer.conv2.norm."),
    ("backbone.0.projector.stages.0.0.m.{i}.cv1.conv.",
     "model.backbone.projector.projector_layer.bottlenecks.{i}.conv1.conv."),
    ("backbone.0.projector.stages.0.0.m.{i}.cv1.bn.",
     "model.backbone.projector.projector_layer.bottlenecks.{i}.conv1.norm."),
    ("backbone.0.projector.stages.0.0.m.{i}.cv2.conv.",
     "model.backbone.projector.projector_layer.bottlenecks.{i}.conv2.conv."),
    ("backbone.0.projector.stages.0.0.m.{i}.cv2.bn.",
     "model.backbone.projector.projector_layer.bottlenecks.{i}.conv2.norm."),
    ("backbone.0.projector.stages.0.1.", "model.backbone.projector.layer_norm."),
    ("transformer.decoder.layers.{i}.self_attn.out_proj.", "model.decoder.layers.{i}.self_attn.o_proj."),
    ("transformer.decoder.layers.{i}.norm1.", "model.decoder.layers.{i}.self_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.cross_attn.", "model.decoder.layers.{i}.cross_attn."),
    ("transformer.decoder.layers.{i}.norm2.", "model.decoder.layers.{i}.cross_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.linear1.", "model.decoder.layers.{i}.mlp.fc1."),
    ("transformer.decoder.layers.{i}.linear2.", "model.decoder.layers.{i}.mlp.fc2."),
    ("transformer.decoder.layers.{i}.norm3.", "model.decoder.layers.{i}.layer_norm."),
    ("transformer.decoder.norm.", "model.decoder.layernorm."),
    ("transformer.decoder.ref_point_head.", "model.decoder.ref_point_head."),
    ("transformer.enc_output_norm.", "model.enc_output_norm."),
    ("transformer.enc_output.", "model.enc_output."),
    ("transformer.enc_out_class_embed.", "model.enc_out_class_embed."),
    ("transformer.enc_out_bbox_embed.", "model.enc_out_bbox_embed."),
    ("query_feat.", "model.query_feat."),
    ("refpoint_embed.", "model.reference_point_embed."),
    ("class_embed.", "class_embed."),
    ("bbox_embed.", "bbox_embed."),
)
# rfdetr's segmentation head -> RfDetrForInstanceSegmentation's own modules (whose detector sits under ``model.``).
SEGMENTATION_RENAMES: tuple[tuple[str, str], ...] = (
    ("segmentation_head.blocks.{i}.dwconv.", "blocks.{i}.depthwise_conv."),
    ("segmentation_head.blocks.{i}.norm.", "blocks.{i}.layernorm."),
    ("segmentation_head.blocks.{i}.pwconv1.", "blocks.{i}.pointwise_conv."),
    ("segmentation_head.spatial_features_proj.", "spatial_features_proj."),
    ("segmentation_head.query_features_block.norm_in.", "query_features_block.norm."),
    ("segmentation_head.query_features_block.layers.0.", "query_features_block.mlp.fc1."),
    ("segmentation_head.query_features_block.layers.2.", "query_features_block.mlp.fc2."),
    ("segmentation_head.query_features_proj.", "query_features_proj."),
    ("segmentation_head.bias", "segmentation_bias"),
)
SEGMENTATION_DETECTOR_PREFIX = "model."
# Packed tensors: ours (prefix + weight|bias) is [3D, ...], transformers holds its three row blocks in this order.
PACKED: tuple[tuple[str, str, tuple[str, str, str]], ...] = (
    ("transformer.decoder.layers.{i}.self_attn.in_proj_", "model.decoder.layers.{i}.self_attn.",
     ("q_proj.", "k_proj.", "v_proj.")),
)
_PACKED_SUFFIXES = ("weight", "bias")

# config.json fields whose value is fixed by rfdetr's architecture: another value is a network this toolkit cannot
# build. (field, expected); backbone fields are under backbone_config.
_FIXED_FIELDS: tuple[tuple[str, Any], ...] = (
    ("hidden_expansion", 0.5), ("c2f_num_blocks", 3), ("activation_function", "silu"),
    ("decoder_activation_function", "relu"), ("num_feature_levels", 1), ("attention_bias", True),
    ("mask_downsample_ratio", 4), ("segmentation_head_activation_function", "gelu"),
)
_FIXED_BACKBONE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("model_type", "rf_detr_dinov2"), ("num_hidden_layers", 12), ("mlp_ratio", 4), ("hidden_act", "gelu"),
    ("qkv_bias", True), ("use_swiglu_ffn", False), ("num_channels", 3), ("layer_norm_eps", 1e-6),
    ("apply_layernorm", True), ("reshape_hidden_states", True),
)


# ---------------------------------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------------------------------


def _compile(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + r"(\d+)".join(re.escape(part) for part in prefix.split("{i}")))


def _rename(key: str, rules: Sequence[tuple[str, str]], reverse: bool) -> str | None:
    """``key`` under the first rule whose source prefix matches it, or ``None``."""
    for ours, theirs in rules:
        source, target = (theirs, ours) if reverse else (ours, theirs)
        match = _compile(source).match(key)
        if match:
            new = target.replace("{i}", match.group(1)) if match.groups() else target
            return new + key[match.end():]
    return None


def to_transformers_state_dict(state_dict: Mapping[str, Tensor], segmentation: bool) -> dict[str, Tensor]:
    """Our state dict (a detector, or one with rfdetr's ``segmentation_head.*``) under transformers' key names.

    Args:
        state_dict: ours, as in a checkpoint's ``model`` entry.
        segmentation: write ``RfDetrForInstanceSegmentation``'s layout (needs ``segmentation_head.*`` keys).

    Returns:
        New contiguous tensors (safetensors refuses shared storage): packed ``in_proj`` [3D, D] becomes three [D, D].

    Raises:
        CheckpointError: a key no rule maps (not an rfdetr P4 layout, e.g. a multi-level projector).
    """
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        head = key.startswith("segmentation_head")
        packed = _split_packed(key, tensor)
        if packed is not None:
            items = packed
        else:
            new = _rename(key, SEGMENTATION_RENAMES if head else RENAMES, reverse=False)
            items = [(new, tensor)] if new is not None and (segmentation or not head) else []
        if not items:
            unmapped.append(key)
            continue
        # In RfDetrForInstanceSegmentation the whole detector sits one level down, under "model.".
        prefix = SEGMENTATION_DETECTOR_PREFIX if segmentation and not head else ""
        for new_key, value in items:
            out[prefix + new_key] = value.detach().cpu().contiguous().clone()
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} tensors have no transformers RF-DETR counterpart (transformers builds the single-level "
            f"P4 projector and rfdetr's segmentation head only): {', '.join(unmapped[:6])}"
        )
    return out


def _split_packed(key: str, tensor: Tensor) -> list[tuple[str, Tensor]] | None:
    for ours, theirs, parts in PACKED:
        match = _compile(ours).match(key)
        if match and key[match.end():] in _PACKED_SUFFIXES:
            suffix = key[match.end():]
            target = theirs.replace("{i}", match.group(1))
            return [(target + part + suffix, chunk) for part, chunk in zip(parts, tensor.chunk(3, dim=0), strict=True)]
    return None


def from_transformers_state_dict(tensors: Mapping[str, Tensor], segmentation: bool) -> dict[str, Tensor]:
    """Inverse of :func:`to_transformers_state_dict` (``q/k/v`` joined back into ``in_proj``).

    Raises:
        CheckpointError: a key no rule maps, or a ``q/k/v`` triple with a member missing.
    """
    out: dict[str, Tensor] = {}
    pending: dict[str, dict[str, Tensor]] = {}
    unmapped = []
    for key, tensor in tensors.items():
        inner = key
        if segmentation:
            new = _rename(key, SEGMENTATION_RENAMES, reverse=True)
            if new is not None:
                out[new] = tensor
                continue
            if not key.startswith(SEGMENTATION_DETECTOR_PREFIX):
                unmapped.append(key)
                continue
            inner = key[len(SEGMENTATION_DETECTOR_PREFIX):]
        if _collect_packed(inner, tensor, pending):
            continue
        new = _rename(inner, RENAMES, reverse=True)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = tensor
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} tensors are not part of transformers' RF-DETR "
            f"({SEGMENTATION_CLASS if segmentation else DETECTION_CLASS}): {', '.join(unmapped[:6])}"
        )
    for ours_key, parts in pending.items():
        names = PACKED[0][2]
        if set(parts) != set(names):
            raise CheckpointError(f"{ours_key}: transformers' weights hold {sorted(parts)} of {list(names)}")
        out[ours_key] = torch.cat([parts[name] for name in names], dim=0)
    return out


def _collect_packed(key: str, tensor: Tensor, pending: dict[str, dict[str, Tensor]]) -> bool:
    for ours, theirs, parts in PACKED:
        match = _compile(theirs).match(key)
        if not match:
            continue
        rest = key[match.end():]
        for part in parts:
            suffix = rest[len(part):]
            if rest.startswith(part) and suffix in _PACKED_SUFFIXES:
                pending.setdefault(ours.replace("{i}", match.group(1)) + suffix, {})[part] = tensor
                return True
    return False


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------


def transformers_config(cfg: ModelConfig, class_names: Sequence[str], segmentation: bool) -> dict[str, Any]:
    """``config.json`` of transformers' ``RfDetrConfig`` for a model of ours.

    Every architecture field is written explicitly (transformers' defaults describe another model), the projector's
    LayerNorm eps included (1e-6, rfdetr's; transformers defaults to 1e-5).

    Args:
        cfg: the model's config; its stored grid ``positional_encoding_size * patch_size`` is the backbone's
            ``image_size``.
        class_names: one name per logit (``num_classes + 1``), written as ``id2label``.
        segmentation: ``RfDetrForInstanceSegmentation`` instead of ``RfDetrForObjectDetection``.
    """
    vit = VIT_SIZES[cfg.vit_size]
    id2label = {str(i): str(name) for i, name in enumerate(class_names)}
    backbone = {
        "model_type": "rf_detr_dinov2", "hidden_size": vit["width"], "num_attention_heads": vit["heads"],
        "num_hidden_layers": vit["depth"], "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "image_size": cfg.positional_encoding_size * cfg.patch_size, "patch_size": cfg.patch_size,
        "num_channels": 3, "qkv_bias": True, "layerscale_value": 1.0, "drop_path_rate": 0.0,
        "use_swiglu_ffn": False, "use_mask_token": True, "apply_layernorm": True, "reshape_hidden_states": True,
        "num_windows": cfg.num_windows, "out_indices": list(cfg.out_feature_indexes),
        "out_features": [f"stage{i}" for i in cfg.out_feature_indexes],
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }
    return {
        "architectures": [SEGMENTATION_CLASS if segmentation else DETECTION_CLASS],
        "model_type": MODEL_TYPE,
        "backbone_config": backbone,
        "d_model": cfg.hidden_dim,
        "decoder_layers": cfg.dec_layers,
        "decoder_self_attention_heads": cfg.sa_nheads,
        "decoder_cross_attention_heads": cfg.ca_nheads,
        "decoder_n_points": cfg.dec_n_points,
        "decoder_ffn_dim": cfg.dim_feedforward,
        "num_queries": cfg.num_queries,
        "group_detr": cfg.group_detr,
        "num_feature_levels": len(cfg.projector_scale),
        "hidden_expansion": 0.5,
        "c2f_num_blocks": 3,
        "activation_function": "silu",
        "decoder_activation_function": "relu",
        "attention_bias": True,
        "layer_norm_eps": PROJECTOR_EPS,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "mask_downsample_ratio": cfg.mask_downsample_ratio,
        "intermediate_size": 4 * cfg.hidden_dim,
        "segmentation_head_activation_function": "gelu",
        "id2label": id2label,
        "label2id": {name: int(i) for i, name in id2label.items()},
        "dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
    }


def transformers_processor_config(cfg: ModelConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` for ``RfDetrImageProcessor``, as close to ours as it goes.

    Ours: RGB / 255, bilinear resize (no antialias) to R x R, ImageNet normalisation. transformers' processor does the
    same steps in the same order (rescale, resize with ``antialias=False``, normalise); no padding is needed for a
    fixed square size. The pixel difference measured on real images is in README (transformers section).
    """
    return {
        "image_processor_type": "RfDetrImageProcessor",
        "do_resize": True,
        "size": {"height": cfg.resolution, "width": cfg.resolution},
        "resample": 2,  # PIL.Image.BILINEAR
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_pad": False,
        "do_convert_annotations": True,
        "format": "coco_detection",
    }


def _id2label_names(config: Mapping[str, Any], num_logits: int) -> list[str] | None:
    """Names indexed by logit from ``id2label``; ``None`` when absent or only transformers' ``LABEL_i`` defaults."""
    raw = config.get("id2label")
    if not isinstance(raw, Mapping) or not raw:
        return None
    names: list[str] = []
    for i in range(num_logits):
        name = raw.get(str(i), raw.get(i))  # type: ignore[call-overload]
        names.append(str(name) if name is not None else f"class_{i}")
    # Placeholders at the end (transformers' LABEL_i, our class_i for the spare logit) are no names.
    while names and names[-1] in (f"LABEL_{len(names) - 1}", f"class_{len(names) - 1}"):
        names.pop()
    return names or None


# ---------------------------------------------------------------------------------------------------------------------
# Reading a transformers folder
# ---------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: a transformers checkpoint needs its config.json beside "
                              f"{WEIGHTS_FILE}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _locate(path: Path) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a folder or of a weights file."""
    if path.is_dir():
        config, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not weights.is_file():
            extra = " (a sharded model.safetensors.index.json is not supported; re-save with max_shard_size='10GB')" \
                if (path / f"{WEIGHTS_FILE}.index.json").is_file() else ""
            raise CheckpointError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}: the config without its weights; "
                                  f"copy the weights file there{extra}")
        return config, weights
    return path.parent / CONFIG_FILE, path


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as err:
        raise ImportError(f"reading {path} needs safetensors: {INSTALL_HINT}") from err
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): "
                              f"{str(err).splitlines()[0]}") from None


def _to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
    """(our state dict, segmentation?) from any of the three key layouts transformers 5.25 reads and writes.

    * rfdetr's own names (``backbone.0.encoder...``): its ``save_pretrained`` writes them back for a model it loaded
      from them (its loader converts them on the fly);
    * the modules' names (``model.backbone.backbone...``): ``model.state_dict()``, what we write;
    * the same without the ``model.`` prefixes (``backbone.backbone...``): its ``save_pretrained`` after loading the
      former.
    """
    if any(k.startswith(("backbone.0.", "transformer.")) for k in tensors):
        return dict(tensors), any(k.startswith("segmentation_head") for k in tensors)
    if not any(k.startswith(SEGMENTATION_DETECTOR_PREFIX) for k in tensors):
        head_prefixes = tuple(theirs.split("{i}")[0] for _, theirs in SEGMENTATION_RENAMES)
        segmentation = any(k.startswith(head_prefixes) for k in tensors)
        top_level = tuple(theirs for _, theirs in RENAMES if not theirs.startswith(SEGMENTATION_DETECTOR_PREFIX))
        canonical = {}
        for key, tensor in tensors.items():
            if segmentation and key.startswith(head_prefixes):
                canonical[key] = tensor
                continue
            inner = key if key.startswith(top_level) else SEGMENTATION_DETECTOR_PREFIX + key
            canonical[SEGMENTATION_DETECTOR_PREFIX + inner if segmentation else inner] = tensor
        tensors = canonical
    else:
        segmentation = any(k.startswith(SEGMENTATION_DETECTOR_PREFIX * 2) for k in tensors)
    return from_transformers_state_dict(tensors, segmentation), segmentation


def _check_fields(config: Mapping[str, Any], config_path: Path) -> None:
    """Refuse a transformers model of another architecture, naming the field."""
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise CheckpointError(f"{config_path} describes a transformers {model_type!r} model, not RF-DETR "
                              f"(model_type {MODEL_TYPE!r}): only RfDetrForObjectDetection / "
                              f"RfDetrForInstanceSegmentation folders can be loaded here")
    backbone = config.get("backbone_config")
    if not isinstance(backbone, Mapping):
        raise CheckpointError(f"{config_path}: no backbone_config object (not an RfDetrConfig)")
    checks = [(k, config.get(k, v), v) for k, v in _FIXED_FIELDS]
    checks += [(f"backbone_config.{k}", backbone.get(k, v), v) for k, v in _FIXED_BACKBONE_FIELDS]
    for field, value, expected in checks:
        same = math.isclose(value, expected) if isinstance(expected, float) and isinstance(value, float) \
            else value == expected
        if not same:
            raise CheckpointError(f"{config_path}: {field}={value!r}, but rfdetr's architecture has {expected!r}; "
                                  f"this toolkit cannot build that model")
    if backbone.get("hidden_size") not in {v["width"] for k, v in VIT_SIZES.items() if k != "tiny"}:
        raise CheckpointError(f"{config_path}: backbone_config.hidden_size={backbone.get('hidden_size')!r}, rfdetr's "
                              "encoders are 384 (ViT-S) or 768 (ViT-B) wide")


def _config_fields(config: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Our ModelConfig fields as config.json states them: {our field: (config.json field, value)}."""
    backbone = config["backbone_config"]
    out_indices = backbone.get("out_indices")
    if out_indices is None and isinstance(backbone.get("out_features"), list):
        out_indices = [int(str(s).removeprefix("stage")) for s in backbone["out_features"]]
    image_size = backbone.get("image_size")
    patch = backbone.get("patch_size")
    fields: dict[str, tuple[str, Any]] = {
        "patch_size": ("backbone_config.patch_size", patch),
        "vit_width": ("backbone_config.hidden_size", backbone.get("hidden_size")),
        "out_feature_indexes": ("backbone_config.out_indices", tuple(out_indices or ())),
        "num_windows": ("backbone_config.num_windows", backbone.get("num_windows", 4)),
        "hidden_dim": ("d_model", config.get("d_model", 256)),
        "dec_layers": ("decoder_layers", config.get("decoder_layers", 3)),
        "sa_nheads": ("decoder_self_attention_heads", config.get("decoder_self_attention_heads", 8)),
        "ca_nheads": ("decoder_cross_attention_heads", config.get("decoder_cross_attention_heads", 16)),
        "dec_n_points": ("decoder_n_points", config.get("decoder_n_points", 4)),
        "dim_feedforward": ("decoder_ffn_dim", config.get("decoder_ffn_dim", 2048)),
        "num_queries": ("num_queries", config.get("num_queries", 300)),
        "group_detr": ("group_detr", config.get("group_detr", 13)),
    }
    if isinstance(image_size, int) and isinstance(patch, int) and patch > 0:
        fields["positional_encoding_size"] = ("backbone_config.image_size / patch_size", image_size // patch)
    return fields


def _resolution(folder: Path, cfg: ModelConfig) -> int:
    """The processor's square size when it has one the model can take, else the stored grid's side."""
    processor = folder / PROCESSOR_FILE
    fallback = cfg.positional_encoding_size * cfg.patch_size
    if fallback % cfg.input_divisor != 0:  # Base: a 37 x 14 = 518 grid, run at 560
        fallback = get_preset(cfg.name).resolution
    if not processor.is_file():
        return fallback
    size = _read_json(processor).get("size")
    if isinstance(size, Mapping) and size.get("height") == size.get("width") and isinstance(size.get("height"), int):
        side = int(size["height"])
        if side > 0 and side % cfg.input_divisor == 0:
            return side
    logger.warning("%s: size %s is not a square the model takes (multiple of %d); using %d", processor, size,
                   cfg.input_divisor, fallback)
    return fallback


def read_transformers_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A transformers RF-DETR folder (or its ``model.safetensors``, config.json beside it) as a checkpoint of ours.

    The preset comes from the tensors (:func:`~rfdetr.checkpoint.infer.infer_model_config`) and must agree with
    config.json; the class names from ``id2label``; the resolution from ``preprocessor_config.json`` (else the stored
    grid). An ``RfDetrForInstanceSegmentation`` whose detector is a detection preset (a stage-2 checkpoint of ours with
    the full MaskHead, exported) comes back as that stage-2 checkpoint.

    Returns:
        A dict as :func:`~rfdetr.checkpoint.files.make_checkpoint` builds it, plus ``source: "transformers"``.

    Raises:
        CheckpointError: another architecture, a config without its weights, weights that do not match the config,
            unreadable files (each a one-line message naming the file and field).
        ImportError: safetensors is not installed.
    """
    path = Path(path)
    config_path, weights_path = _locate(path)
    config = _read_json(config_path)
    _check_fields(config, config_path)
    tensors = _load_safetensors(weights_path)
    state, segmentation = _to_ours(tensors)
    architectures = config.get("architectures") or []
    if architectures and (SEGMENTATION_CLASS in architectures) != segmentation:
        raise CheckpointError(f"{config_path} says {architectures} but {weights_path} holds "
                              f"{SEGMENTATION_CLASS if segmentation else DETECTION_CLASS} weights")
    try:
        shapes = read_shapes(state)
    except CheckpointError as err:
        raise CheckpointError(f"{weights_path}: {err}") from None

    fields = _config_fields(config)
    recorded = {"model_config": {"num_windows": fields["num_windows"][1]}}
    mask_head: MaskHeadConfig | None = None
    try:
        cfg = infer_model_config(state, recorded)
    except CheckpointError:
        if not segmentation:
            raise
        # A detection preset with rfdetr's segmentation head on top: our stage-2 layout with the full MaskHead.
        detector = {k: v for k, v in state.items() if not k.startswith("segmentation_head.")}
        cfg = infer_model_config(detector, recorded)
        mask_head = MaskHeadConfig("full", cfg.hidden_dim, cfg.dec_layers, downsample_ratio=cfg.mask_downsample_ratio)

    queries, groups = fields["num_queries"][1], fields["group_detr"][1]
    if not isinstance(queries, int) or not isinstance(groups, int) or queries * groups != shapes.query_rows:
        raise CheckpointError(f"{config_path}: num_queries={queries!r} x group_detr={groups!r} does not match the "
                              f"{shapes.query_rows} query rows in {weights_path}: the config does not describe these "
                              "weights")
    cfg = cfg.replace(num_queries=queries, num_select=queries, group_detr=groups)
    cfg = cfg.replace(resolution=_resolution(config_path.parent, cfg))
    for name, (field, value) in fields.items():
        have = getattr(cfg, name)
        if value != have:
            raise CheckpointError(f"{config_path}: {field}={value!r} but {weights_path} holds a model with "
                                  f"{have!r} ({name}): the config does not describe these weights")
    labels = config.get("id2label")
    if isinstance(labels, Mapping) and labels and len(labels) != shapes.num_logits:
        raise CheckpointError(f"{config_path}: id2label names {len(labels)} labels but {weights_path} has "
                              f"{shapes.num_logits} class logits: the config does not describe these weights")
    eps = config.get("layer_norm_eps", 1e-5)
    if not (isinstance(eps, float) and math.isclose(eps, PROJECTOR_EPS)):
        logger.info("%s: layer_norm_eps=%s; rfdetr's projector uses %s, as this toolkit does (outputs move by about "
                    "1e-4 against transformers' forward)", config_path, eps, PROJECTOR_EPS)
    names = _id2label_names(config, shapes.num_logits)
    extra: dict[str, Any] = {"source": "transformers"}
    if mask_head is not None:
        extra.update(stage="seg_stage2", mask_head=mask_head.to_dict())
    return make_checkpoint(state, cfg, names, **extra)


# ---------------------------------------------------------------------------------------------------------------------
# Writing a transformers folder
# ---------------------------------------------------------------------------------------------------------------------


def save_transformers_folder(ckpt: Mapping[str, Any], output_dir: str | os.PathLike[str],
                             class_names: Sequence[str] | None = None) -> Path:
    """Write a checkpoint of ours as a transformers RF-DETR folder: config.json, model.safetensors and
    preprocessor_config.json (each written atomically; other files in ``output_dir`` are left alone).

    Detection presets and stage-1 checkpoints become ``RfDetrForObjectDetection``; segmentation presets and stage-2
    checkpoints with the full MaskHead (rfdetr's segmentation head) ``RfDetrForInstanceSegmentation``.

    Args:
        ckpt: a checkpoint dict of ours (:func:`~rfdetr.checkpoint.reader.load_checkpoint_file`).
        output_dir: the folder (created).
        class_names: names per logit for ``id2label`` (default: the checkpoint's; ``class_{i}`` where it has none).

    Returns:
        ``output_dir``.

    Raises:
        CheckpointError: a stage-2 head transformers has no class for (MaskHeadNano, MaskHeadDynamic), or tensors
            of a layout transformers does not build (a multi-level projector).
        ImportError: safetensors is not installed.
    """
    from rfdetr.util.run_dir import write_bytes_atomic, write_json_atomic

    state = extract_state_dict(ckpt)
    mask_head = ckpt.get("mask_head")
    if isinstance(mask_head, Mapping) and mask_head.get("kind") != "full":
        head = {"nano": "MaskHeadNano", "dynamic": "MaskHeadDynamic"}.get(str(mask_head.get("kind")),
                                                                           str(mask_head.get("kind")))
        raise CheckpointError(
            f"the checkpoint's stage-2 mask head is {head}, which transformers has no class for: export the detector "
            "alone (load it with masks=False, or its stage-1 checkpoint) to transformers, or the whole model with "
            "`python -m rfdetr.export` (ONNX, OpenVINO, TFLite, ExecuTorch)"
        )
    try:
        cfg = infer_model_config({k: v for k, v in state.items() if not k.startswith("segmentation_head.")}
                                 if isinstance(mask_head, Mapping) else state, ckpt)
    except CheckpointError as err:
        raise CheckpointError(f"cannot describe the checkpoint as transformers' RF-DETR: {err}") from None
    if len(cfg.projector_scale) != 1:
        raise CheckpointError(f"{cfg.upstream_name} has a {len(cfg.projector_scale)}-level projector; transformers' "
                              "RF-DETR builds the single-level (P4) one only")
    segmentation = any(k.startswith("segmentation_head.") for k in state)
    logits = cfg.num_classes + 1
    names = resolve_class_names(logits, class_names, checkpoint_class_names(ckpt))
    if len(names) > logits:
        logger.warning("%d class names for %d logits: writing class_{i} in id2label", len(names), logits)
        names = []
    # Names are indexed by class id and may stop before the last logit (the spare one): id2label names every logit.
    names = list(names) + [f"class_{i}" for i in range(len(names), logits)]
    tensors = to_transformers_state_dict(state, segmentation)
    try:
        from safetensors.torch import save
    except ImportError as err:
        raise ImportError(f"writing a transformers folder needs safetensors: {INSTALL_HINT}") from err
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_json_atomic(out / CONFIG_FILE, transformers_config(cfg, names, segmentation))
    write_json_atomic(out / PROCESSOR_FILE, transformers_processor_config(cfg))
    logger.info("wrote %s (%s, %d tensors) to %s", WEIGHTS_FILE, SEGMENTATION_CLASS if segmentation
                else DETECTION_CLASS, len(tensors), out)
    return out


def save_model_as_transformers(model: torch.nn.Module, cfg: ModelConfig, class_names: Sequence[str],
                               output_dir: str | os.PathLike[str]) -> Path:
    """:func:`save_transformers_folder` for a built model (``RFDETR.save_pretrained``): a detector, an rfdetr
    segmentation preset, or a stage-2 :class:`~rfdetr.models.segmenter.Segmenter` (full MaskHead only).

    Args:
        model: the module (any device; tensors are copied to the CPU).
        cfg: its config.
        class_names: one name per logit.
        output_dir: the folder (created).
    """
    from rfdetr.models.segmenter import Segmenter

    extra: dict[str, Any] = {}
    if isinstance(model, Segmenter):
        state = model.checkpoint_state_dict()
        extra["mask_head"] = {"kind": getattr(model.mask_head, "kind", type(model.mask_head).__name__)}
    else:
        state = model.state_dict()
    ckpt = make_checkpoint(state, cfg, class_names, **extra)
    return save_transformers_folder(ckpt, output_dir, class_names)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rfdetr.checkpoint.huggingface", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="ours / rfdetr's checkpoint (or an official weight name), or a transformers folder")
    parser.add_argument("--output", required=True,
                        help="the transformers folder to write, or the .pth to write for a transformers input")
    return parser


def main(args: argparse.Namespace) -> int:
    from rfdetr.checkpoint.files import save_checkpoint
    from rfdetr.checkpoint.weights import WeightsDownloadError, resolve_weights
    from rfdetr.util.cli import run_command

    def run(ns: argparse.Namespace) -> None:
        source = resolve_weights(ns.checkpoint)
        if Path(ns.output).resolve() == Path(source).resolve():
            raise ValueError(f"--output {ns.output} is the input: inputs are never overwritten")
        if is_transformers_checkpoint(source):
            print(save_checkpoint(read_transformers_checkpoint(source), ns.output))
        else:
            print(save_transformers_folder(load_torch_checkpoint(source), ns.output))

    return run_command("rfdetr.checkpoint.huggingface", run, args, (CheckpointError, WeightsDownloadError))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
