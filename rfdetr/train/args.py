"""What the three training scripts share: common flags, config objects from flags, pretrained loading.

Defaults live in :mod:`rfdetr.train.config` (and the presets in :mod:`rfdetr.config`); the flags are derived from
those dataclasses, so no script restates a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfdetr.checkpoint import CheckpointError, LoadReport, extract_state_dict, load_checkpoint_file, load_into
from rfdetr.checkpoint.files import check_torch_file
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


_UNSET = object()
# Recorded flags that never carry over to a resumed run: the resume itself, and evaluating instead of training.
_NOT_RESUMED = ("resume", "eval_only")


class TrainingArgumentParser(argparse.ArgumentParser):
    """The training scripts' parser: it also records which flags the command line gave (``args._explicit``), so that
    ``--resume`` can take every other setting from the run's own ``config.json`` (:func:`apply_run_config`)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if namespace is None:
            # Parse again into a namespace pre-filled with a marker: argparse leaves a destination it already holds
            # alone unless the command line sets it, so what is no longer the marker was given explicitly.
            probe = argparse.Namespace(**{a.dest: _UNSET for a in self._actions if a.dest != argparse.SUPPRESS})
            probe, _ = super().parse_known_args(args, probe)
            parsed._explicit = sorted(k for k, v in vars(probe).items() if v is not _UNSET)
        return parsed, extras


def apply_run_config(args: argparse.Namespace) -> None:
    """With ``--resume``, take the flags not given on this command line from the run's recorded settings.

    The run folder is the checkpoint's; its ``config_resume.json`` (the latest resume) or else ``config.json`` holds
    the settings under ``args``. Flags given now win (``--epochs 80`` trains a finished 50-epoch run further).

    Raises:
        FileNotFoundError: the ``--resume`` file does not exist.
        CheckpointError: it is not a ``torch.save`` file.
    """
    resume = getattr(args, "resume", None)
    if not resume:
        return
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file; pass a run's checkpoint.pth "
                                "(e.g. runs/detector_nano_384_1/checkpoint.pth)")
    check_torch_file(path)
    run_dir = path.resolve().parent
    source = next((run_dir / n for n in ("config_resume.json", "config.json") if (run_dir / n).is_file()), None)
    if source is None:
        logger.warning("%s has no config.json: resuming with the flags given now and their defaults", run_dir)
        return
    try:
        recorded = json.loads(source.read_text(encoding="utf-8")).get("args", {})
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{source}: cannot read the run's settings ({err}); pass every flag of the run with "
                         "--resume, or restore the file") from None
    explicit = set(getattr(args, "_explicit", ()))
    for key, value in recorded.items():
        if key.startswith("_") or key in _NOT_RESUMED or key in explicit or not hasattr(args, key):
            continue
        setattr(args, key, value)
    given = sorted(explicit - {"resume"})
    logger.info("resuming %s with the settings in %s%s", run_dir, source.name,
                f"; given now: {', '.join('--' + k for k in given)}" if given else "")


def add_training_arguments(parser: argparse.ArgumentParser, sizes: tuple[str, ...], train_overrides: dict[str, Any],
                           loss_defaults: LossConfig | None = None, optim_overrides: dict[str, Any] | None = None,
                           hide: tuple[str, ...] = (),
                           eval_only_help: str = "evaluate the given weights (--resume or --pretrained) on valid "
                                                 "and exit") -> argparse.ArgumentParser:
    """Flags every training script shares: model size, data, output, and the derived config flags.

    ``hide`` names config fields (and ``no_ema``) the script accepts but does not show in ``--help`` because they do
    not apply to it (stage 2's frozen detector: :data:`rfdetr.train.stage2.STAGE2_HIDDEN`).
    """
    parser.add_argument("--size", choices=sizes, default=sizes[0], help="model preset ('tiny': CPU tests and demos)")
    parser.add_argument("--dataset", default="dataset/",
                        help="Roboflow COCO export (train/, valid/, [test/]) or YOLO dataset (data.yaml)")
    parser.add_argument("--output", default=None, help="runs root folder (alias of --output_root)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="square input side (default: the preset's); a multiple of patch size x windows")
    parser.add_argument("--no_amp", "--no-amp", action="store_true", help="float32 even on CUDA")
    parser.add_argument("--no_ema", "--no-ema", action="store_true",
                        help=argparse.SUPPRESS if "no_ema" in hide else "no EMA weights (same as --use_ema 0)")
    parser.add_argument("--eval_only", "--eval-only", action="store_true", help=eval_only_help)
    for cls, overrides, group, skip in ((TrainConfig, train_overrides, "training", ("amp",)),
                                        (OptimConfig, optim_overrides, "optimizer", ()),
                                        (LossConfig, loss_defaults, "loss", ())):
        own = {f.name for f in dataclasses.fields(cls)}
        add_dataclass_arguments(parser, cls, overrides=overrides, skip=skip, group=group,
                                hide=[h for h in hide if h in own])
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
    def resume_then_run(parsed: argparse.Namespace) -> Any:
        apply_run_config(parsed)
        return run(parsed)

    return run_command(script, resume_then_run, args, errors=(CheckpointError, WeightsDownloadError,
                                                              NonFiniteLossError))


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
