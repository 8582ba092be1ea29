"""Adapting a state dict to a model: class heads of another class count, position-embedding grids, query tables.

:func:`adapt_state_dict` is a pure function over tensors; :func:`load_into` applies its result to a module and reports
what was missing, unexpected, re-initialised, interpolated or sliced (:class:`LoadReport`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rfdetr.checkpoint.files import CLASS_BIAS_KEY, CLASS_HEAD_PREFIXES, POS_EMBED_KEY, QUERY_KEYS, CheckpointError
from rfdetr.checkpoint.infer import _count_indexed
from rfdetr.config import ModelConfig

logger = logging.getLogger(__name__)

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


