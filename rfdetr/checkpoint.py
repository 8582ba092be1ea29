"""Checkpoint I/O and state-dict surgery for RF-DETR weights.

Everything here is a pure function over plain dicts and tensors (no nn.Module is built), except :func:`load_into`,
which applies an adapted state dict to a module. Supported file layouts (spec section 12.1):

* published rfdetr files: ``{"model": state_dict, "args": argparse.Namespace, ...}``;
* rfdetr >= 1.7 training files: ``model``, ``state_dict`` (``model.``-prefixed), ``args`` as a dict, ``model_config``,
  ``model_name``, Lightning bookkeeping;
* Lightning ``.ckpt`` files: only ``state_dict`` (``model.`` and ``_orig_mod.`` prefixes);
* our own files (:func:`make_checkpoint`), which keep rfdetr's ``model`` / ``args`` keys so upstream rfdetr loads them;
* a bare state dict, possibly with DDP's ``module.`` prefix.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import re
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rfdetr.config import MODEL_PRESETS, ModelConfig

logger = logging.getLogger(__name__)

# Key names of the released checkpoints (spec section 12.2).
PATCH_EMBED_KEY = "backbone.0.encoder.encoder.embeddings.patch_embeddings.projection.weight"
POS_EMBED_KEY = "backbone.0.encoder.encoder.embeddings.position_embeddings"
CLASS_BIAS_KEY = "class_embed.bias"
QUERY_KEYS: tuple[str, ...] = ("query_feat.weight", "refpoint_embed.weight")
# Tensors whose first dimension is the number of class logits; re-initialised when the class count changes.
CLASS_HEAD_PREFIXES: tuple[str, ...] = ("class_embed.", "transformer.enc_out_class_embed.")
# rfdetr >= 1.7 registers this empty keypoint buffer even on detection models; released files do not have it.
IGNORED_KEYS: frozenset[str] = frozenset({"_kp_active_mask"})

# The architecture fields of spec 12.1 that upstream rfdetr reads back from ``args`` (plus the patch/window fields).
_ARGS_FIELDS: tuple[str, ...] = (
    "encoder", "hidden_dim", "patch_size", "num_windows", "positional_encoding_size", "out_feature_indexes",
    "projector_scale", "dec_layers", "sa_nheads", "ca_nheads", "dec_n_points", "num_queries", "num_select",
    "group_detr", "segmentation_head", "mask_downsample_ratio", "resolution", "num_classes", "dim_feedforward",
)
# Fixed for every released variant (spec section 1.1); upstream's args carry them, so ours do too.
_FIXED_ARGS: dict[str, Any] = {
    "two_stage": True, "bbox_reparam": True, "lite_refpoint_refine": True, "layer_norm": True, "num_channels": 3,
    "dataset_file": "roboflow", "pretrain_weights": None,
}
# ModelConfig fields that a saved ``model_config`` dict (ours or upstream's) may override.
_OVERRIDABLE_FIELDS: tuple[str, ...] = ("resolution", "num_windows", "num_queries", "num_select")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or its tensors do not fit the model."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint on the CPU without executing arbitrary pickled code.

    Uses ``torch.load(weights_only=True)`` with ``argparse.Namespace`` as the only extra allowed global (the published
    files store their training arguments as a Namespace).

    Args:
        path: a ``.pth`` / ``.pt`` / ``.ckpt`` file.

    Returns:
        The top-level dict of the file (a bare state dict is returned as is).

    Raises:
        FileNotFoundError: the path does not exist or is a directory.
        CheckpointError: the file is not a torch checkpoint, is truncated, or needs globals we do not allow.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path is not a file: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if match:
            raise CheckpointError(
                f"{path} was pickled with a Python object that is not allowed for safe loading ({match.group(1)}); "
                "only tensors, containers, primitives and argparse.Namespace are accepted. Re-save the checkpoint "
                "with plain types (e.g. `torch.save({'model': model.state_dict()}, path)`)."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unpickling failed: {_first_line(err)})") from None
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {_first_line(err)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict checkpoint or a state dict")
    return dict(obj)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights of any supported checkpoint layout, with wrapper prefixes removed.

    Order of preference: ``model`` (published, rfdetr >= 1.7 and our files), then a Lightning ``state_dict`` (keys
    under ``model.``), then the dict itself when it is a bare state dict. DDP's ``module.`` prefix and
    ``torch.compile``'s ``_orig_mod.`` segments are stripped; ``_kp_active_mask`` is dropped.

    Args:
        ckpt: the dict returned by :func:`load_checkpoint_file`.

    Returns:
        A new ``{key: tensor}`` dict (tensors are shared, not copied).

    Raises:
        CheckpointError: no state dict found, or LoRA adapter weights that must be merged first.
    """
    raw: Mapping[str, Any] | None = None
    if _is_state_dict(ckpt.get("model")):
        raw = ckpt["model"]
    elif _is_state_dict(ckpt.get("state_dict")):
        lightning = ckpt["state_dict"]
        raw = {k[len("model.") :]: v for k, v in lightning.items() if k.startswith("model.")}
        if not raw:  # a plain state dict that someone stored under "state_dict"
            raw = lightning
    elif _is_state_dict(ckpt):
        raw = ckpt
    if raw is None:
        raise CheckpointError(
            "no model weights found in the checkpoint: expected a 'model' or 'state_dict' entry holding tensors, "
            f"got top-level keys {sorted(map(str, ckpt))[:20]}"
        )

    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        key = key.replace("_orig_mod.", "")
        if key.startswith("module."):
            key = key[len("module.") :]
        if key in IGNORED_KEYS:
            continue
        out[key] = value
    if any(".base_model.model." in k or ".lora_" in k for k in out):
        raise CheckpointError(
            "the checkpoint holds LoRA adapter weights (backbone_lora=True); merge the adapters into the encoder "
            "before loading it here"
        )
    return out


def checkpoint_args(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``args`` as a plain dict (Namespace in published files, dict in newer ones; ``{}`` if none)."""
    args = ckpt.get("args")
    if args is None:
        args = ckpt.get("hyper_parameters")  # Lightning's name for the same thing
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def checkpoint_class_names(ckpt: Mapping[str, Any]) -> list[str] | None:
    """Class names recorded in the checkpoint, or ``None``.

    Looked up in our top-level ``class_names`` key, then ``args.class_names`` (rfdetr), then ``model_config``.
    """
    model_config = ckpt.get("model_config")
    candidates = [
        ckpt.get("class_names"),
        checkpoint_args(ckpt).get("class_names"),
        model_config.get("class_names") if isinstance(model_config, Mapping) else None,
    ]
    for names in candidates:
        if isinstance(names, str):
            return [names]
        if isinstance(names, Sequence) and len(names) > 0 and all(isinstance(n, str) for n in names):
            return list(names)
    return None


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


def _named_preset(ckpt: Mapping[str, Any]) -> str | None:
    """Preset name recorded in the checkpoint: ours (``model_config.name``) or rfdetr's class name (``model_name``)."""
    model_config = ckpt.get("model_config")
    model_config = model_config if isinstance(model_config, Mapping) else {}
    if model_config.get("name") in MODEL_PRESETS:
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
    fitting = [key for key, preset in MODEL_PRESETS.items() if _fits(preset, shapes)]
    if not fitting:
        raise CheckpointError(
            "no model preset matches this state dict: "
            f"patch_size={shapes.patch_size} ({PATCH_EMBED_KEY} {tuple(state_dict[PATCH_EMBED_KEY].shape)}), "
            f"vit_width={shapes.vit_width}, pe={shapes.pe} ({POS_EMBED_KEY} {tuple(state_dict[POS_EMBED_KEY].shape)}), "
            f"hidden_dim={shapes.hidden_dim}, dec_layers={shapes.dec_layers}, projector levels={shapes.num_levels}, "
            f"segmentation_head={shapes.segmentation_head}, query rows={shapes.query_rows}, "
            f"class logits={shapes.num_logits}. Known presets: {', '.join(MODEL_PRESETS)}"
        )

    named = _named_preset(ckpt)
    if named in fitting:
        name = named
    else:
        if named is not None:
            logger.warning("checkpoint says %r but its tensors do not fit that preset; matching by shape", named)
        # The stored pe grid separates same-structure presets (e.g. Medium 36 vs Large 44); closest wins when the
        # model was fine-tuned at another resolution.
        name = min(fitting, key=lambda k: abs(MODEL_PRESETS[k].positional_encoding_size - shapes.pe))
    preset = MODEL_PRESETS[name]

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


# ---------------------------------------------------------------------------------------------------------------------
# Adapting a state dict to a model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened when a state dict was adapted and loaded.

    Attributes:
        missing: model keys the state dict did not provide (after adaptation; includes re-initialised heads).
        unexpected: state-dict keys the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` that could not be adapted.
        reinitialized: class-dependent keys dropped because the class count changed (the model keeps its init).
        interpolated: position-embedding keys resampled to the model's grid.
        sliced: query tables cut to fewer queries per group.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    sliced: list[str] = field(default_factory=list)


def interpolate_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """Resample a ViT position embedding to a new square grid (spec 3.3, load-time interpolation).

    Bicubic with antialias, computed in float32 and cast back, as rfdetr does; the CLS position is kept.

    Args:
        pos_embed: [1, 1 + n*n, C].
        grid: target side m.

    Returns:
        [1, 1 + m*m, C].
    """
    n = math.isqrt(pos_embed.shape[1] - 1)
    if n * n != pos_embed.shape[1] - 1:
        raise CheckpointError(f"position embedding {tuple(pos_embed.shape)} is not a square grid plus CLS")
    if n == grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, n, n, dim).permute(0, 3, 1, 2).float()  # [1, C, n, n]
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)  # [1, m*m, C]
    return torch.cat([cls_pos, patch_pos], dim=1)


def slice_queries(table: Tensor, src_groups: int, num_groups: int, num_queries: int) -> Tensor:
    """Keep the first ``num_queries`` rows of each of the first ``num_groups`` groups of a group-major query table.

    A flat slice would be wrong: group g owns rows [g*Q_old, (g+1)*Q_old), so fewer queries per group must be cut
    inside every group.

    Args:
        table: [G_old*Q_old, D].
        src_groups: G_old.
        num_groups: G_new <= G_old.
        num_queries: Q_new <= Q_old.

    Returns:
        [G_new*Q_new, D].
    """
    rows, dim = table.shape
    if rows % src_groups != 0 or num_groups > src_groups or num_queries > rows // src_groups:
        raise CheckpointError(
            f"cannot slice a {tuple(table.shape)} table of {src_groups} query groups to {num_groups}x{num_queries} rows"
        )
    grouped = table.reshape(src_groups, rows // src_groups, dim)  # [G_old, Q_old, D]
    return grouped[:num_groups, :num_queries].reshape(num_groups * num_queries, dim)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the config-dependent tensors only (class heads, position embedding, query tables).

    Enough for :func:`adapt_state_dict` to adapt a state dict to a config without building the model.
    """
    logits, dim = cfg.num_classes + 1, cfg.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {
        "class_embed.weight": (logits, dim),
        "class_embed.bias": (logits,),
        POS_EMBED_KEY: (1, cfg.positional_encoding_size**2 + 1, cfg.vit_width),
        "query_feat.weight": (cfg.group_detr * cfg.num_queries, dim),
        "refpoint_embed.weight": (cfg.group_detr * cfg.num_queries, 4),
    }
    for g in range(cfg.group_detr):
        shapes[f"transformer.enc_out_class_embed.{g}.weight"] = (logits, dim)
        shapes[f"transformer.enc_out_class_embed.{g}.bias"] = (logits,)
    return shapes


def adapt_state_dict(
    state_dict: Mapping[str, Tensor],
    target: Mapping[str, Tensor] | ModelConfig,
    *,
    group_detr: int | None = None,
    strict: bool = True,
) -> tuple[dict[str, Tensor], LoadReport]:
    """Make a checkpoint's tensors fit a model whose class count, resolution or query count differ.

    * class count differs: every class-dependent tensor (``class_embed.*``, ``transformer.enc_out_class_embed.*``)
      is dropped, so the model keeps its fresh initialisation for them (logged);
    * position-embedding grid differs: bicubic/antialias resampling (:func:`interpolate_pos_embed`);
    * fewer queries per group: query tables are sliced per group (:func:`slice_queries`);
    * any other shape difference means another architecture: raises, naming every such key with both shapes
      (with ``strict=False`` those keys are dropped and reported instead).

    Keys present on only one side are passed through; :func:`load_into` reports them.

    Args:
        state_dict: checkpoint weights (not modified).
        target: the model's state dict (or any key -> tensor/shape mapping), or a :class:`ModelConfig`, in which case
            only the config-dependent tensors of :func:`expected_shapes` are checked.
        group_detr: query groups of the model; default ``target.group_detr`` for a config, else the number of
            ``transformer.enc_output.{g}`` entries of the target (13 if none).
        strict: raise on unadaptable shape mismatches.

    Returns:
        ``(new_state_dict, report)``.
    """
    if isinstance(target, ModelConfig):
        groups = group_detr or target.group_detr
        target_shapes = expected_shapes(target)
    else:
        groups = group_detr or _count_indexed(target, "transformer.enc_output.") or 13
        target_shapes = {k: tuple(v.shape) for k, v in target.items()}
    src_groups = _count_indexed(state_dict, "transformer.enc_output.") or groups

    out: dict[str, Tensor] = {}
    report = LoadReport()
    for key, tensor in state_dict.items():
        want = target_shapes.get(key)
        have = tuple(tensor.shape)
        if want is None or want == have:
            out[key] = tensor
        elif key.startswith(CLASS_HEAD_PREFIXES) and have[1:] == want[1:]:
            report.reinitialized.append(key)
        elif key.endswith("embeddings.position_embeddings") and have[-1] == want[-1] and len(have) == len(want) == 3:
            out[key] = interpolate_pos_embed(tensor, math.isqrt(want[1] - 1))
            report.interpolated.append(key)
        elif key in QUERY_KEYS and _can_slice(have, want, src_groups, groups):
            out[key] = slice_queries(tensor, src_groups, groups, want[0] // groups)
            report.sliced.append(key)
        else:
            report.mismatched.append((key, have, want))

    if report.reinitialized:
        logger.info(
            "class count changed (checkpoint %d logits, model %d): re-initialising %d class-head tensors: %s",
            state_dict[CLASS_BIAS_KEY].shape[0] if CLASS_BIAS_KEY in state_dict else -1,
            target_shapes[CLASS_BIAS_KEY][0] if CLASS_BIAS_KEY in target_shapes else -1,
            len(report.reinitialized),
            _short_list(report.reinitialized),
        )
    for key in report.interpolated:
        logger.info("interpolated %s: %s -> %s", key, tuple(state_dict[key].shape), tuple(out[key].shape))
    for key in report.sliced:
        logger.info("sliced %s per group: %s -> %s", key, tuple(state_dict[key].shape), tuple(out[key].shape))
    if report.mismatched:
        lines = "\n".join(f"  {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in report.mismatched)
        if strict:
            raise CheckpointError(
                f"{len(report.mismatched)} checkpoint tensors do not fit the model (another architecture?):\n{lines}"
            )
        logger.warning("dropping %d checkpoint tensors of mismatched shape:\n%s", len(report.mismatched), lines)
    return out, report


def _can_slice(have: tuple[int, ...], want: tuple[int, ...], src_groups: int, groups: int) -> bool:
    """Whether a [G_old*Q_old, D] query table can be cut to [G_new*Q_new, D] (never grown)."""
    if len(have) != 2 or have[1:] != want[1:] or have[0] % src_groups or want[0] % groups:
        return False
    return groups <= src_groups and want[0] // groups <= have[0] // src_groups and want[0] < have[0]


def _short_list(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... (+{len(keys) - limit})"


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], strict_detector: bool = True) -> LoadReport:
    """Adapt ``state_dict`` to ``model`` (:func:`adapt_state_dict`) and load it.

    Args:
        model: the target module; its config-dependent tensors keep their init where the checkpoint is dropped.
        state_dict: checkpoint weights.
        strict_detector: raise on shape mismatches, unexpected keys, or missing keys outside the re-initialised class
            heads and ``segmentation_head.*`` (a detector checkpoint may seed a segmentation model; the missing mask
            head is then only logged). With ``False`` everything is reported and logged, nothing raised.

    Returns:
        The :class:`LoadReport`.

    Raises:
        CheckpointError: with ``strict_detector``, on any problem listed above.
    """
    adapted, report = adapt_state_dict(state_dict, model.state_dict(), strict=strict_detector)
    result = model.load_state_dict(adapted, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)

    allowed_missing = set(report.reinitialized)
    mask_head_missing = [k for k in report.missing if k.startswith("segmentation_head.")]
    real_missing = [k for k in report.missing if k not in allowed_missing and k not in mask_head_missing]
    if mask_head_missing:
        logger.warning("checkpoint has no segmentation head: %d mask-head tensors keep their init",
                       len(mask_head_missing))
    problems = []
    if real_missing:
        problems.append(f"missing {len(real_missing)} keys: {_short_list(real_missing, 20)}")
    if report.unexpected:
        problems.append(f"unexpected {len(report.unexpected)} keys: {_short_list(report.unexpected, 20)}")
    if problems:
        message = "checkpoint does not match the model (another architecture?): " + "; ".join(problems)
        if strict_detector:
            raise CheckpointError(message)
        logger.warning(message)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------------------------------------------------


def make_checkpoint(
    model_state_dict: Mapping[str, Tensor],
    cfg: ModelConfig,
    class_names: Sequence[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a checkpoint dict that both this package and upstream rfdetr can load.

    Keeps rfdetr's top-level ``model`` and ``args`` (an ``argparse.Namespace`` with the architecture fields upstream
    reads back: num_classes, class_names, resolution, patch_size, num_queries, group_detr, segmentation_head ...), and
    adds ``model_name`` (the rfdetr class), ``model_config`` (our config as a dict) and ``class_names``.

    Args:
        model_state_dict: the weights; tensors are detached and moved to the CPU.
        cfg: the model's config.
        class_names: label names indexed by class id (``None``: ``cfg.class_names`` if set, else not recorded).
        **extra: more top-level entries (``stage``, ``epoch``, ``optimizer`` ...); must be ``weights_only``-loadable.

    Returns:
        The checkpoint dict, ready for :func:`save_checkpoint`.
    """
    names = list(class_names) if class_names is not None else list(cfg.class_names) or None
    args = {k: _plain(getattr(cfg, k)) for k in _ARGS_FIELDS}
    args.update(_FIXED_ARGS)
    if names is not None:  # upstream treats a present class_names as authoritative, so never write an empty one
        args["class_names"] = names
    config = cfg.to_dict()
    config["class_names"] = names or []
    ckpt: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in model_state_dict.items() if k not in IGNORED_KEYS},
        "args": argparse.Namespace(**args),
        "model_name": cfg.upstream_name,
        "model_config": config,
        "class_names": names,
    }
    ckpt.update(extra)
    return ckpt


def _plain(value: Any) -> Any:
    """Tuples become lists, as in rfdetr's own args."""
    return list(value) if isinstance(value, tuple) else value


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: a crash never leaves a partial file at ``path``.

    The data goes to a temporary file in the same directory, is fsync-ed, then renamed over ``path``
    (``os.replace`` is atomic within one file system).

    Args:
        obj: the checkpoint dict (see :func:`make_checkpoint`).
        path: destination; parent directories are created.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_temp_path(path, ".tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never clobber; plain open keeps the umask-based file mode
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _unique_temp_path(dest: Path, suffix: str) -> Path:
    """A fresh hidden file name next to ``dest`` (same folder, so ``os.replace`` onto ``dest`` is atomic)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows), where it is skipped.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
