"""Optimizer side of training: parameter groups, AdamW, the per-step LR schedule and the AMP precision choice.

Parameter groups follow RF-DETR (spec ``rfdetr_training.md`` section 3):

* ViT encoder (names containing ``backbone.0.encoder``): layer-wise decayed LR
  ``lr_encoder * lr_vit_layer_decay ** (L + 1 - layer_id) * lr_component_decay ** 2`` with ``L =
  out_feature_indexes[-1] + 1`` and ``layer_id`` 0 for embeddings, ``b + 1`` for block ``b``, ``L + 1`` otherwise
  (the final LayerNorm); no weight decay for biases, norms, embeddings, ``gamma``, ``pos_embed``, ``rel_pos``;
* decoder (``transformer.decoder``): ``lr * lr_component_decay``, full weight decay;
* everything else: ``lr``, full weight decay.

Unlike upstream (one group per tensor) parameters sharing ``(lr, weight_decay)`` share one group, which carries a
readable ``name`` such as ``encoder.block3/no_decay``. The group order is deterministic (first appearance in
``named_parameters``), so an optimizer state saved by one run loads into another built the same way.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

ENCODER_KEY = "backbone.0.encoder"
DECODER_KEY = "transformer.decoder"
# Substrings of encoder parameter names that get no weight decay. DINOv2's LayerScale is ``lambda1``, so it IS decayed.
NO_DECAY_KEYS = ("gamma", "pos_embed", "rel_pos", "bias", "norm", "embeddings")
_BLOCK = re.compile(r"\.layer\.(\d+)\.")
NO_DECAY_TAG = "/no_decay"


def _rule(
    name: str,
    lr: float,
    lr_encoder: float,
    weight_decay: float,
    lr_vit_layer_decay: float,
    lr_component_decay: float,
    num_layers: int,
) -> tuple[str, float, float]:
    """(label, lr, weight_decay) of the parameter called ``name``."""
    if ENCODER_KEY in name:
        block = _BLOCK.search(name)
        if "embeddings" in name:
            label, layer_id = "encoder.embeddings", 0
        elif block is not None:
            label, layer_id = f"encoder.block{block.group(1)}", int(block.group(1)) + 1
        else:
            label, layer_id = "encoder.head", num_layers + 1
        # Blocks past the last tapped stage would get a negative exponent (an LR above the encoder base, or a
        # division by zero when the decay is 0); they do not occur in the released variants, so clamp at 0.
        exponent = max(0, num_layers + 1 - layer_id)
        group_lr = lr_encoder * lr_vit_layer_decay**exponent * lr_component_decay**2
        if any(key in name for key in NO_DECAY_KEYS):
            return label + NO_DECAY_TAG, group_lr, 0.0
        return label, group_lr, weight_decay
    if DECODER_KEY in name:
        return "decoder", lr * lr_component_decay, weight_decay
    return "other", lr, weight_decay


def _spans(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> ``0-2,5``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _compress_labels(labels: Iterable[str]) -> str:
    """Join labels with ``+``, writing blocks that share a tag as one item, e.g. ``encoder.block0-11/no_decay``."""
    order: list[str] = []  # plain labels, and one "encoder.block*<tag>" key per tag
    blocks: dict[str, list[int]] = {}
    for label in labels:
        match = re.fullmatch(r"encoder\.block(\d+)(.*)", label)
        if match is None:
            order.append(label)
            continue
        key = f"encoder.block*{match.group(2)}"
        if key not in blocks:
            blocks[key] = []
            order.append(key)
        blocks[key].append(int(match.group(1)))
    return "+".join(key.replace("*", _spans(blocks[key])) if key in blocks else key for key in order)


def param_groups(
    model: nn.Module,
    lr: float,
    lr_encoder: float,
    weight_decay: float,
    lr_vit_layer_decay: float,
    lr_component_decay: float,
    out_feature_indexes: Sequence[int],
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with RF-DETR's per-parameter LR and weight decay, merged by (lr, weight_decay).

    Args:
        model: the detector (possibly wrapped in DDP / ``torch.compile``: names are matched by substring).
        lr: base LR ("everything else").
        lr_encoder: ViT encoder base LR.
        weight_decay: AdamW weight decay.
        lr_vit_layer_decay: per-block decay inside the ViT.
        lr_component_decay: decoder factor (its square scales the encoder).
        out_feature_indexes: the model's 1-based tapped ViT stages; ``L = out_feature_indexes[-1] + 1``.

    Returns:
        Groups ``{"params", "lr", "weight_decay", "name"}`` in first-appearance order; parameters with
        ``requires_grad=False`` are left out.
    """
    num_layers = out_feature_indexes[-1] + 1
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    labels: dict[tuple[float, float], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        label, group_lr, group_wd = _rule(
            name, lr, lr_encoder, weight_decay, lr_vit_layer_decay, lr_component_decay, num_layers
        )
        key = (group_lr, group_wd)
        if key not in groups:
            groups[key] = {"params": [], "lr": group_lr, "weight_decay": group_wd}
            labels[key] = []
        groups[key]["params"].append(param)
        if label not in labels[key]:
            labels[key].append(label)
    for key, group in groups.items():
        group["name"] = _compress_labels(labels[key])
    return list(groups.values())


def describe_param_groups(groups: Sequence[dict[str, Any]]) -> str:
    """One line per group (name, tensors, parameters, lr, weight decay) for the console log."""
    lines = []
    for group in groups:
        numel = sum(p.numel() for p in group["params"])
        lines.append(
            f"{group.get('name', '?'):<40} tensors {len(group['params']):>4}  params {numel:>11,}  "
            f"lr {group['lr']:.3e}  wd {group['weight_decay']:.1e}"
        )
    return "\n".join(lines)


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    lr_encoder: float,
    weight_decay: float,
    lr_vit_layer_decay: float,
    lr_component_decay: float,
    out_feature_indexes: Sequence[int],
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW (default betas and eps) over :func:`param_groups`.

    Args:
        model: the model to optimise; only parameters with ``requires_grad`` are included.
        lr, lr_encoder, weight_decay, lr_vit_layer_decay, lr_component_decay, out_feature_indexes: see
            :func:`param_groups`.
        fused: use the fused CUDA kernel; ``None`` picks it when every trainable parameter is a floating CUDA
            tensor (it is faster and numerically equivalent).

    Raises:
        ValueError: when the model has no trainable parameter.
    """
    groups = param_groups(model, lr, lr_encoder, weight_decay, lr_vit_layer_decay, lr_component_decay,
                          out_feature_indexes)
    return make_adamw(groups, lr=lr, weight_decay=weight_decay, fused=fused)


def make_adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, fused: bool | None = None
               ) -> torch.optim.AdamW:
    """AdamW over parameter groups, fused whenever possible.

    The fused kernel exists for CPU and CUDA floating-point tensors; on the CPU it is ~5x faster than the default
    per-tensor loop for a 30M-parameter model (0.33 s vs 1.7 s per step on 2 cores), with the same update rule.

    Raises:
        ValueError: when the groups hold no parameter (everything frozen).
    """
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    if fused is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    logger.info("AdamW over %d groups (fused=%s):\n%s", len(groups), fused, describe_param_groups(groups))
    # fused=None lets torch pick its default (foreach) implementation; False would force the slow loop.
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def steps_per_epoch(
    num_samples: int, batch_size: int, grad_accum_steps: int, world_size: int = 1, drop_last: bool = True
) -> int:
    """Optimizer steps in one epoch: samples / (batch_size * grad_accum_steps * world_size), at least 1.

    Rounded down when the loader drops the last incomplete batch, so the schedule matches the steps actually taken
    (upstream rounds up while dropping, which shifts its schedule by up to one step per epoch).
    """
    per_step = batch_size * grad_accum_steps * world_size
    steps = num_samples // per_step if drop_last else math.ceil(num_samples / per_step)
    return max(1, steps)


def lr_factor(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    schedule: str,
    lr_drop: int,
    lr_min_factor: float = 0.0,
) -> float:
    """Multiplier of every group's initial LR at optimizer step ``step`` (0-based); spec section 2.4.

    * warm-up (``step < steps_per_epoch * warmup_epochs``): linear from 0;
    * ``"cosine"``: half cosine from 1 to ``lr_min_factor`` over the remaining steps of ``epochs``;
    * ``"step"``: 1 before epoch ``lr_drop``, 0.1 from then on (with the defaults the LR never drops).
    """
    warm = int(steps_per_epoch * warmup_epochs)
    if step < warm:
        return step / max(1, warm)
    if schedule == "cosine":
        total = steps_per_epoch * epochs
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return lr_min_factor + (1.0 - lr_min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 1.0 if step < lr_drop * steps_per_epoch else 0.1
    raise ValueError(f"unknown LR schedule {schedule!r}; choose 'step' or 'cosine'")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    schedule: str,
    lr_drop: int,
    lr_min_factor: float = 0.0,
) -> LambdaLR:
    """``LambdaLR`` over :func:`lr_factor`; call ``scheduler.step()`` once per optimizer step."""
    factor = functools.partial(
        lr_factor, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=warmup_epochs, schedule=schedule,
        lr_drop=lr_drop, lr_min_factor=lr_min_factor,
    )
    factor(0)  # fail here, not at the first step, on an unknown schedule name
    return LambdaLR(optimizer, factor)


def autocast_dtype(device: torch.device, amp: bool, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device``, or ``None`` for float32 (``amp`` off).

    ``dtype="auto"``: bf16 on CUDA where supported, else fp16; float32 on other devices (CPU autocast is not used by
    default: upstream trains in fp32 on CPU and bf16 CPU kernels are often slower). ``"bfloat16"`` / ``"float16"``
    force that dtype on any device: the CPU tests use it to run the very code path CUDA training takes.
    """
    if not amp:
        return None
    if dtype != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's range, so scaling would only cost time)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
