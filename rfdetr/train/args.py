"""What the three training scripts share: common flags, config objects from flags, pretrained loading.

Defaults live in :mod:`rfdetr.train.config` (and the presets in :mod:`rfdetr.config`); the flags are derived from
those dataclasses, so no script restates a default.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfdetr.checkpoint import CheckpointError, LoadReport, extract_state_dict, load_checkpoint_file, load_into
from rfdetr.checkpoint.weights import PRESET_WEIGHTS, WeightsDownloadError, resolve_weights
from rfdetr.config import MODEL_PRESETS, TINY_CONFIG, ModelConfig, get_preset
from rfdetr.data.annotations import check_dataset
from rfdetr.train.config import (
    LossConfig,
    OptimConfig,
    TrainConfig,
    add_dataclass_arguments,
    dataclass_from_args,
)
from rfdetr.train.engine import NonFiniteLossError
from rfdetr.util.cli import run_command

logger = logging.getLogger(__name__)

# The fork excludes the projector from the pretrained weights by default; we keep that default (a flag changes it).
DEFAULT_PRETRAIN_EXCLUDE = "backbone.0.projector.*"


def add_training_arguments(parser: argparse.ArgumentParser, sizes: tuple[str, ...], train_overrides: dict[str, Any],
                           loss_defaults: LossConfig | None = None, optim_overrides: dict[str, Any] | None = None,
                           ) -> argparse.ArgumentParser:
    """Flags every training script shares: model size, data, output, and the derived config flags."""
    parser.add_argument("--size", choices=sizes, default=sizes[0], help="model preset ('tiny': CPU tests and demos)")
    parser.add_argument("--dataset", default="dataset/",
                        help="Roboflow COCO export (train/, valid/, [test/]) or YOLO dataset (data.yaml)")
    parser.add_argument("--output", default=None, help="runs root folder (alias of --output_root)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="square input side (default: the preset's); a multiple of patch size x windows")
    parser.add_argument("--no_amp", "--no-amp", action="store_true", help="float32 even on CUDA")
    parser.add_argument("--no_ema", "--no-ema", action="store_true", help="no EMA weights (same as --use_ema 0)")
    parser.add_argument("--eval_only", "--eval-only", action="store_true",
                        help="evaluate the given weights (--resume or --pretrained) on valid and exit")
    add_dataclass_arguments(parser, TrainConfig, overrides=train_overrides, skip=("amp",), group="training")
    add_dataclass_arguments(parser, OptimConfig, overrides=optim_overrides, group="optimizer")
    add_dataclass_arguments(parser, LossConfig, overrides=loss_defaults, group="loss")
    return parser


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, OptimConfig, LossConfig]:
    """The three config dataclasses from parsed flags (``--output`` and ``--no_amp`` folded in)."""
    changes: dict[str, Any] = {"amp": not args.no_amp}
    if args.no_ema:
        changes["use_ema"] = False
    if args.output is not None:
        changes["output_root"] = args.output
    return (dataclass_from_args(TrainConfig, args, **changes), dataclass_from_args(OptimConfig, args),
            dataclass_from_args(LossConfig, args))


def model_config_for(size: str, resolution: int | None, num_classes: int, class_names: list[str]) -> ModelConfig:
    """The preset with the dataset's classes and, if given, another resolution.

    When the stored position-embedding grid is derived from the resolution (every preset but ``base``), it follows
    the new resolution, as rfdetr does; the checkpoint's embeddings are then interpolated at load time.

    Raises:
        ValueError: a resolution that is not a multiple of the preset's patch size x windows.
    """
    cfg = get_preset(size)
    changes: dict[str, Any] = {"num_classes": num_classes, "class_names": tuple(class_names)}
    if resolution is not None and resolution != cfg.resolution:
        if resolution % cfg.input_divisor:
            raise ValueError(f"--resolution {resolution} is not a multiple of {cfg.input_divisor} (patch size "
                             f"{cfg.patch_size} x {cfg.num_windows} windows) for {size}; try "
                             f"{round(resolution / cfg.input_divisor) * cfg.input_divisor}")
        changes["resolution"] = resolution
        if cfg.positional_encoding_size * cfg.patch_size == cfg.resolution:
            changes["positional_encoding_size"] = resolution // cfg.patch_size
    return cfg.replace(**changes)


def default_pretrained(size: str) -> str | None:
    """The official weights' file name for a preset (None if there is none)."""
    return PRESET_WEIGHTS.get(size)


def load_pretrained(model: nn.Module, name_or_path: str, exclude: list[str] | None = None) -> LoadReport:
    """Load official / rfdetr / our weights into ``model``, dropping keys that match ``exclude`` glob patterns.

    Class heads of another class count are re-initialised and query tables sliced (see
    :func:`rfdetr.checkpoint.adapt_state_dict`).

    Raises:
        CheckpointError: keys missing (other than excluded ones, re-initialised class heads and a mask head) or
            unexpected, or shapes of another architecture.
        WeightsDownloadError: an official name that cannot be downloaded (the message says where to put the file).
    """
    path = resolve_weights(name_or_path)
    return load_pretrained_state(model, extract_state_dict(load_checkpoint_file(path)), path, exclude)


def load_pretrained_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                          exclude: list[str] | None = None) -> LoadReport:
    """:func:`load_pretrained` on an already read state dict (``path`` only names it in messages).

    Raises:
        CheckpointError: as :func:`load_pretrained`.
    """
    state = dict(state)
    patterns = [p for p in (exclude or []) if p]
    dropped = [k for k in state if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    for key in dropped:
        del state[key]
    report = load_into(model, state, strict_detector=False)
    allowed = set(dropped) | set(report.reinitialized)
    real_missing = [k for k in report.missing if k not in allowed and not k.startswith("segmentation_head.")]
    if real_missing or report.unexpected or report.mismatched:
        raise CheckpointError(f"{path} does not fit the model: missing {real_missing[:10]}, unexpected "
                              f"{report.unexpected[:10]}, mismatched {report.mismatched[:10]}")
    logger.info("loaded %s: %d tensors; excluded %d (%s); re-initialised %d class-head tensors", path,
                len(state), len(dropped), ", ".join(patterns) or "none", len(report.reinitialized))
    return report


def parse_exclude(text: str | None) -> list[str]:
    """``"a.*,b.c"`` -> ``["a.*", "b.c"]`` (the fork's comma-separated form; a trailing ``*`` is a prefix)."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def run_training_script(script: str, run: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a training entry point: 0 on success; 2 with a one-line ``script: error: ...`` for the errors a user
    can fix (bad paths, data, weights, flags, diverging loss), never a traceback for those."""
    return run_command(script, run, args, errors=(CheckpointError, WeightsDownloadError, NonFiniteLossError))


def pick_device(requested: str | None) -> torch.device:
    """``--device`` or the best available one."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def detection_sizes() -> tuple[str, ...]:
    """Detection presets, then ``tiny`` (a test / demo config without official weights)."""
    return tuple(k for k in MODEL_PRESETS if not k.startswith("seg-")) + (TINY_CONFIG.name,)


def ensure_dataset(root: str | Path) -> Path:
    """Fail early, with the fix, when the dataset folder is neither a Roboflow COCO export nor a YOLO dataset."""
    return check_dataset(root)
