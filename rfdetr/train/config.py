"""Training defaults as data: every training hyper-parameter has its default here, and only here.

Three frozen dataclasses split the knobs by who reads them:

* :class:`OptimConfig`: optimizer, parameter groups and LR schedule (read by :mod:`rfdetr.train.optim`);
* :class:`LossConfig`: loss weights and matcher costs (read by the criterion / matcher builders);
* :class:`TrainConfig`: the run itself (epochs, batch, EMA, early stopping, logging, ...).

The numbers are RF-DETR 1.4.1's ``TrainConfig`` plus the "hidden" ``populate_args`` defaults (spec
``rfdetr_training.md`` 2.1-2.2), except where noted in a field's help. Scripts never restate a default: they derive
their flags with :func:`add_dataclass_arguments` (changing per-script defaults through ``overrides``) and rebuild the
dataclass with :func:`dataclass_from_args`. This module imports neither torch nor anything heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

LRSchedule = Literal["step", "cosine"]
AmpDtype = Literal["auto", "bfloat16", "float16"]
T = TypeVar("T")


def _field(default: Any, doc: str, aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field whose metadata carries its CLI help text and any extra flag spellings."""
    return field(default=default, metadata={"help": doc, "aliases": aliases})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, per-group learning rates (spec section 3), gradient clipping and the per-step LR schedule (2.3-2.4)."""

    lr: float = _field(1e-4, "base learning rate (decoder gets lr * lr_component_decay)")
    lr_encoder: float = _field(1.5e-4, "ViT encoder learning rate before the layer-wise and component decays")
    weight_decay: float = _field(1e-4, "AdamW weight decay (0 for encoder biases, norms and embeddings)")
    lr_vit_layer_decay: float = _field(0.8, "per-block LR decay inside the ViT (0 freezes all but the final norm)")
    lr_component_decay: float = _field(0.7, "LR factor for the decoder, squared for the encoder")
    clip_max_norm: float = _field(0.1, "global L2 gradient-norm clip (0 disables clipping)")
    lr_scheduler: LRSchedule = _field("step", "LR schedule stepped per optimizer step")
    lr_drop: int = _field(100, "'step' schedule: epoch from which the LR is multiplied by 0.1")
    lr_min_factor: float = _field(0.0, "'cosine' schedule: final LR as a fraction of the initial LR")
    warmup_epochs: float = _field(0.0, "linear LR warm-up from 0, in (fractional) epochs")

    def __post_init__(self) -> None:
        _require(self.lr >= 0 and self.lr_encoder >= 0, "lr and lr_encoder must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay must be >= 0")
        _require(self.lr_vit_layer_decay >= 0 and self.lr_component_decay >= 0, "LR decays must be >= 0")
        _require(self.clip_max_norm >= 0, "clip_max_norm must be >= 0 (0 disables clipping)")
        _require(self.lr_scheduler in typing.get_args(LRSchedule), f"lr_scheduler must be one of {LRSchedule}")
        _require(self.warmup_epochs >= 0, "warmup_epochs must be >= 0")
        _require(0.0 <= self.lr_min_factor <= 1.0, "lr_min_factor must be in [0, 1]")


@dataclass(frozen=True)
class LossConfig:
    """Loss coefficients and Hungarian-matcher costs (spec section 4). Detection values; see SEGMENTATION_LOSS."""

    cls_loss_coef: float = _field(1.0, "classification (IA-BCE) loss weight; 5.0 for segmentation")
    bbox_loss_coef: float = _field(5.0, "L1 box loss weight")
    giou_loss_coef: float = _field(2.0, "GIoU loss weight")
    mask_ce_loss_coef: float = _field(5.0, "point-sampled mask BCE loss weight (segmentation)")
    mask_dice_loss_coef: float = _field(5.0, "mask Dice loss weight (segmentation)")
    set_cost_class: float = _field(2.0, "matcher: focal classification cost weight")
    set_cost_bbox: float = _field(5.0, "matcher: L1 box cost weight")
    set_cost_giou: float = _field(2.0, "matcher: -GIoU cost weight")
    set_cost_mask_ce: float = _field(5.0, "matcher: mask BCE cost weight (segmentation)")
    set_cost_mask_dice: float = _field(5.0, "matcher: mask Dice cost weight (segmentation)")
    focal_alpha: float = _field(0.25, "alpha of the focal matcher cost and of IA-BCE")
    mask_point_sample_ratio: int = _field(16, "mask points sampled = H*W / ratio (matcher and mask loss)")
    ia_bce_loss: bool = _field(True, "IoU-aware BCE classification loss (off: sigmoid focal loss)")
    aux_loss: bool = _field(True, "supervise every decoder layer, not only the last")
    sum_group_losses: bool = _field(False, "sum over query groups instead of normalising by groups * boxes")

    def __post_init__(self) -> None:
        _require(0.0 <= self.focal_alpha <= 1.0, "focal_alpha must be in [0, 1]")
        _require(self.mask_point_sample_ratio >= 1, "mask_point_sample_ratio must be >= 1")


DETECTION_LOSS = LossConfig()
# RF-DETR's SegmentationTrainConfig differs from the detection defaults only in the class-loss weight.
SEGMENTATION_LOSS = LossConfig(cls_loss_coef=5.0)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: loop sizes, precision, EMA, early stopping, checkpoints, evaluation and logging."""

    epochs: int = _field(100, "training epochs")
    batch_size: int = _field(4, "micro-batch per process", aliases=("--batch",))
    grad_accum_steps: int = _field(4, "micro-batches per optimizer step", aliases=("--accum",))
    num_workers: int = _field(2, "DataLoader worker processes per process", aliases=("--workers",))
    seed: int = _field(42, "random seed (each process adds its rank)")
    device: str | None = _field(None, "torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    amp: bool = _field(True, "mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); CPU is fp32")
    amp_dtype: AmpDtype = _field("auto", "autocast dtype when amp is on: 'auto' (CUDA: bfloat16 where supported, else "
                                         "float16; CPU: float32), or 'bfloat16' / 'float16' on any device (float16 "
                                         "adds the GradScaler; on CPU this runs the CUDA mixed-precision path, for "
                                         "tests)")
    augment: bool = _field(True, "random flip and resize-crop of training images (off: square resize only)")
    multi_scale: bool = _field(True, "resize each optimizer step's batch to a random scale of the model's list")
    expanded_scales: bool = _field(True, "use the wider multi-scale list (+-5 blocks instead of -3..+4)")
    do_random_resize_via_padding: bool = _field(False, "pick the scale per image in the dataset, no batch resize")
    use_ema: bool = _field(True, "keep an exponential moving average of the weights and evaluate it too")
    ema_decay: float = _field(0.993, "EMA decay after warm-up")
    ema_tau: float = _field(100.0, "EMA warm-up in optimizer steps: decay_t = ema_decay * (1 - exp(-t / ema_tau))")
    early_stopping: bool = _field(True, "stop when validation AP50:95 has not improved for `patience` epochs")
    early_stopping_patience: int = _field(10, "epochs (not evaluations) without improvement before stopping; checked "
                                              "at evaluations only", aliases=("--patience",))
    early_stopping_min_delta: float = _field(0.001, "smallest AP50:95 gain that counts as an improvement")
    early_stopping_use_ema: bool = _field(False, "early-stop on the EMA model's AP only (default: best of raw/EMA)")
    checkpoint_interval: int = _field(10, "also keep a numbered checkpoint every N epochs")
    eval_interval: int = _field(1, "evaluate on valid (COCO mAP, validation pictures) every N epochs and always "
                                   "after the last one; best checkpoints and early stopping only see those epochs")
    eval_num_select: int = _field(300, "detections kept per image in training-time evaluation")
    eval_max_dets: int = _field(500, "largest COCOeval maxDets value")
    run_test: bool = _field(True, "evaluate the best weights on the test split after training")
    freeze_encoder: bool = _field(False, "freeze the ViT encoder (the projector still trains)")
    resume: str | None = _field(None, "checkpoint to resume from (model, optimizer, schedule, EMA, RNG, epoch)")
    output_root: str = _field("runs", "folder holding one sub-folder per run")
    run_name: str | None = _field(None, "run folder prefix (default: <stage>_<size>_<resolution>); _N is appended")
    print_freq: int = _field(10, "iterations between console log lines")
    tensorboard: bool = _field(True, "write TensorBoard event files into the run folder")
    plots: bool = _field(True, "write the run folder's pictures and tables (results.png/.csv, PR and F1 curves, "
                               "confusion matrix, per_class.csv, labels, train batches, validation predictions); "
                               "0: a bare folder")
    wandb: bool = _field(False, "log to Weights & Biases (needs `pip install wandb`; honours WANDB_MODE=offline)")
    wandb_project: str = _field("rtdetr-seg", "W&B project")
    wandb_run: str | None = _field(None, "W&B run name (default: the run folder name)")

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs must be >= 1")
        _require(self.batch_size >= 1 and self.grad_accum_steps >= 1, "batch_size and grad_accum_steps must be >= 1")
        _require(self.num_workers >= 0, "num_workers must be >= 0")
        _require(0.0 <= self.ema_decay <= 1.0, "ema_decay must be in [0, 1]")
        _require(self.ema_tau >= 0, "ema_tau must be >= 0")
        _require(self.early_stopping_patience >= 1, "early_stopping_patience must be >= 1")
        _require(self.checkpoint_interval >= 1, "checkpoint_interval must be >= 1")
        _require(self.eval_interval >= 1, "eval_interval must be >= 1")
        _require(self.amp_dtype in typing.get_args(AmpDtype), f"amp_dtype must be one of {typing.get_args(AmpDtype)}")


# ---------------------------------------------------------------------------------------------------------------------
# argparse derived from the dataclasses
# ---------------------------------------------------------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    """``1/0``, ``true/false``, ``yes/no``, ``on/off`` (any case) -> bool; the seed fork's flags accept these."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on", "y", "t"):
        return True
    if value in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0, true/false, yes/no), got {text!r}")


def _flag_spellings(name: str, aliases: Iterable[str] = ()) -> list[str]:
    """``lr_encoder`` -> ``--lr_encoder``, ``--lr-encoder`` (plus aliases), without duplicates, canonical first."""
    spellings = [f"--{name}", f"--{name.replace('_', '-')}", *aliases]
    return list(dict.fromkeys(spellings))


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; other types unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return args[0]
    return tp


def _defaults_of(overrides: Mapping[str, Any] | object | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if dataclasses.is_dataclass(overrides) and not isinstance(overrides, type):
        return {f.name: getattr(overrides, f.name) for f in dataclasses.fields(overrides)}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    raise TypeError(f"overrides must be a mapping or a dataclass instance, not {type(overrides).__name__}")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    overrides: Mapping[str, Any] | object | None = None,
    skip: Iterable[str] = (),
    group: str | None = None,
    hide: Iterable[str] = (),
) -> argparse.ArgumentParser:
    """Add one CLI flag per field of the dataclass ``cls``.

    Each field ``some_name`` gets ``--some_name`` and ``--some-name`` (plus the ``aliases`` in its metadata, e.g.
    ``--batch``), its help text from the field metadata and its default from the dataclass. Types map as follows:
    ``bool`` -> ``--x [BOOL]`` (bare flag = true, also ``--x 0``) plus ``--no_x`` / ``--no-x``; ``Literal`` ->
    ``choices``; ``X | None`` -> ``X``; ``tuple[X, ...]`` -> ``nargs="+"``.

    Args:
        parser: the parser to extend.
        cls: a dataclass type such as :class:`TrainConfig`.
        overrides: per-script defaults replacing the dataclass ones, as a ``{field: value}`` mapping or a dataclass
            instance (e.g. ``SEGMENTATION_LOSS``); unknown names raise ``ValueError``.
        skip: fields the script does not expose (it passes them to :func:`dataclass_from_args` instead).
        group: title of an argument group to put the flags in (``None``: directly on ``parser``).
        hide: fields whose flags are accepted but left out of ``--help`` (a script they do not apply to, which still
            takes them so shared command lines keep working).

    Returns:
        ``parser``, for chaining.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = _defaults_of(overrides)
    skipped, hidden = set(skip), set(hide)
    unknown = (set(defaults) | skipped | hidden) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    target: Any = parser.add_argument_group(group) if group else parser
    for name, f in fields.items():
        if name in skipped:
            continue
        default = defaults.get(name, f.default)
        tp = _unwrap_optional(hints[name])
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if "(default:" not in help_text:  # a help that explains its default itself keeps only that explanation
            help_text += f" (default: {default})"
        if name in hidden:
            help_text = argparse.SUPPRESS
        flags = _flag_spellings(name, f.metadata.get("aliases", ()))
        if tp is bool:
            target.add_argument(*flags, dest=name, nargs="?", const=True, default=default, type=parse_bool,
                                metavar="BOOL", help=help_text)
            negated = _flag_spellings(f"no_{name}")
            target.add_argument(*negated, dest=name, action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS if name in hidden else f"same as --{name} 0")
        elif typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            target.add_argument(*flags, dest=name, type=type(choices[0]), choices=choices, default=default,
                                help=help_text)
        elif typing.get_origin(tp) is tuple:
            item_type = typing.get_args(tp)[0]
            target.add_argument(*flags, dest=name, type=item_type, nargs="+", default=default, help=help_text)
        else:
            target.add_argument(*flags, dest=name, type=tp, default=default, help=help_text)
    return parser


def dataclass_from_args(cls: type[T], args: argparse.Namespace | Mapping[str, Any], **changes: Any) -> T:
    """Build ``cls`` from parsed arguments, taking only its own fields (missing ones keep their defaults).

    Args:
        cls: the dataclass type.
        args: the ``argparse`` result (or a plain mapping).
        **changes: values that win over ``args``, e.g. for fields the script ``skip``-ped or hard-codes.

    Returns:
        A validated instance (lists from ``nargs="+"`` become tuples).
    """
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs.update(changes)
    return cls(**kwargs)
