"""Training from Python, the way rfdetr and Ultralytics users start: ``model.train(dataset_dir=..., epochs=...)``.

:meth:`rfdetr.detr.RFDETR.train`, :meth:`~rfdetr.detr.RFDETR.train_masks` and :meth:`~rfdetr.detr.RFDETR.evaluate`
delegate here. Keyword arguments become the flags of the mode's script and are parsed by the same parser
(:mod:`rfdetr.train.parsers`), so a Python run and a script run with the same settings and seed write the same run
folder and weights: one place for defaults, one run function per mode. Names are the scripts' flags (``batch_size``,
``grad_accum_steps``, ``num_workers``, ``lr_encoder``, ``use_ema``, ``early_stopping_patience`` ...), which are
rfdetr 1.11.2's ``TrainConfig`` names where the meaning is the same, plus rfdetr's ``dataset_dir``, ``output_dir``
(here: the folder that receives the run folder ``<mode>_<size>_<resolution>_<n>``), ``project`` and ``run`` (Weights &
Biases). An unknown name is refused with the list of valid ones.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfdetr.train.parsers import single_stage_parser, stage1_parser, stage2_parser

__all__ = ["RFDETR_ALIASES", "TrainingMethods", "TrainingRun", "build_args", "run_mode"]

# rfdetr 1.11.2's TrainConfig names whose flag here is spelled differently (same meaning).
RFDETR_ALIASES: dict[str, str] = {
    "dataset_dir": "dataset",
    "output_dir": "output",
    "project": "wandb_project",
    "run": "wandb_run",
}
# Flags the model itself decides (its preset, its weights) or that are not training.
_NOT_KEYWORDS = frozenset({"help", "size", "eval_only", "pretrained", "checkpoint", "stage1_run"})


@dataclass(frozen=True)
class TrainingRun:
    """What a Python training call ran: the mode, its parsed settings, and the run folder it wrote."""

    mode: str
    args: argparse.Namespace
    run_dir: Path

    @property
    def best_checkpoint(self) -> Path:
        """``checkpoint_best_total.pth``: the weights the model holds after training."""
        return self.run_dir / "checkpoint_best_total.pth"


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> the action of its main spelling (``--batch_size``, not ``--no_...`` or an alias)."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        if not action.option_strings or action.dest in _NOT_KEYWORDS or action.dest == argparse.SUPPRESS:
            continue
        if action.default is argparse.SUPPRESS and action.dest in actions:
            continue  # --no_x and --seg_lr spellings: the main flag is enough
        actions.setdefault(action.dest, action)
    return actions


def build_args(parser: argparse.ArgumentParser, fixed: Mapping[str, Any], kwargs: Mapping[str, Any],
               method: str) -> argparse.Namespace:
    """Parse ``kwargs`` (plus the model's own ``fixed`` flags) with the script's ``parser``.

    Args:
        parser: the mode's parser (:mod:`rfdetr.train.parsers`).
        fixed: flags the model sets (``size``, ``pretrained`` ...), by destination.
        kwargs: the user's keyword arguments (flag destinations or :data:`RFDETR_ALIASES`).
        method: for messages (``RFDETRNano.train``).

    Raises:
        TypeError: an unknown keyword; the message lists the valid names.
        ValueError: a value the flag refuses (the parser's own message).
    """
    actions = _flags(parser)
    argv: list[str] = []
    for name, value in kwargs.items():
        dest = RFDETR_ALIASES.get(name, name)
        if dest not in actions:
            valid = sorted(set(actions) | set(RFDETR_ALIASES))
            raise TypeError(f"{method}() got an unknown argument {name!r}; valid: {', '.join(valid)}")
        argv += _argv(actions[dest], value)
    for dest, value in fixed.items():
        action = next(a for a in parser._actions if a.dest == dest and a.option_strings)  # noqa: SLF001
        argv += _argv(action, value)
    try:
        return parser.parse_args(argv)
    except SystemExit:
        raise ValueError(f"{method}(): invalid arguments {argv} (see the message above)") from None


def _argv(action: argparse.Action, value: Any) -> list[str]:
    """The command-line words that give ``action`` the ``value`` (None: leave the default)."""
    if value is None:
        return []
    flag = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001 - e.g. --no_amp
        return [flag] if value else []
    if isinstance(value, bool):
        return [flag, "1" if value else "0"]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return [flag, str(value)]


def _run_function(mode: str) -> Callable[[argparse.Namespace], Any]:
    if mode == "stage1":
        from rfdetr.train.stage1 import run
    elif mode == "stage2":
        from rfdetr.train.stage2 import run
    else:
        from rfdetr.train.single_stage import run
    return run


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "stage1": stage1_parser, "stage2": stage2_parser, "single_stage": single_stage_parser,
}


def run_mode(mode: str, fixed: Mapping[str, Any], kwargs: Mapping[str, Any], method: str) -> TrainingRun:
    """Train ``mode`` (``stage1``, ``stage2`` or ``single_stage``) with the scripts' parser and run function.

    Errors are raised as they are (one-line messages: unreadable images, a bad dataset, a finished run ...), not
    turned into exit codes as the scripts do.

    Raises:
        TypeError, ValueError, FileNotFoundError: see :func:`build_args` and the mode's run function.
        RuntimeError: the run ended without a run folder (an evaluation-only call).
    """
    from rfdetr.train.args import apply_run_config

    args = build_args(PARSERS[mode](), fixed, kwargs, method)
    apply_run_config(args)  # as the scripts do: --resume alone takes the run's recorded settings
    result = _run_function(mode)(args)
    run_dir = getattr(result, "run_dir", None)
    if run_dir is None:
        raise RuntimeError(f"{method}() trained nothing (no run folder): {result}")
    return TrainingRun(mode, args, Path(run_dir))


class TrainingMethods:
    """``train`` and ``train_masks`` of :class:`rfdetr.detr.RFDETR` (a mixin: it reads the model's ``size``,
    ``weights_path``, ``resolution``, ``device`` and ``model_config``, and reloads the model from the run's best
    checkpoint afterwards, so that ``predict`` and ``export`` use the trained weights at once)."""

    size: str | None
    weights_path: Path | None
    resolution: int
    last_run: TrainingRun | None = None

    def train(self, **kwargs: Any) -> TrainingRun:
        """Train this model on a dataset, as ``train_detector_stage1.py`` (detection presets) or
        ``train_seg_single_stage.py`` (segmentation presets, or a detection preset given ``mask_head=``: detector and
        mask head trained together) would with the same settings.

        The run starts from this model's weights file (``pretrain_weights``; none: random initialisation) and from
        its resolution and device unless given.

        Args:
            **kwargs: the scripts' settings by name: ``dataset_dir`` (or ``dataset``), ``epochs``, ``batch_size``,
                ``grad_accum_steps``, ``lr``, ``lr_encoder``, ``output_dir`` (the runs root), ``resume``,
                ``device``, ``seed``, ``num_workers``, ``use_ema``, ``early_stopping_patience`` ... (see
                :mod:`rfdetr.train.api`).

        Returns:
            The :class:`TrainingRun` (its ``run_dir`` holds config.json, log.jsonl, checkpoints, results.json).

        Raises:
            TypeError: an unknown argument (the message lists the valid ones).
            ValueError, FileNotFoundError: bad settings, dataset or weights (one-line messages).
        """
        segmentation = bool(getattr(self.model_config, "segmentation_head", False))  # type: ignore[attr-defined]
        # A mask head asked of a detection preset: detector and masks trained together, as
        # ``train_seg_single_stage.py --size nano --mask_head nano`` does.
        mode = "single_stage" if segmentation or "mask_head" in kwargs else "stage1"
        fixed = {"size": self.size, "pretrained": str(self.weights_path) if self.weights_path else "none"}
        run = run_mode(mode, fixed, self._with_model_defaults(kwargs), f"{type(self).__name__}.train")
        self._reload(run, masks=None)
        return run

    def train_masks(self, **kwargs: Any) -> TrainingRun:
        """Train a mask head on this detector, frozen: stage 2, as ``train_seg_stage2.py --checkpoint <weights>``.

        The detector is this model's weights file (after :meth:`train`: its run's best checkpoint). Afterwards the
        model holds the detector and the trained mask head, with masks on.

        Args:
            **kwargs: the stage-2 script's settings by name (``dataset_dir``, ``epochs``, ``lr``, ``mask_head``,
                ``cache_features``, ``augment``, ``multi_scale`` ...).

        Raises:
            ValueError: the model has no weights file, or is a segmentation preset (it already has masks).
            TypeError: an unknown argument.
        """
        name = f"{type(self).__name__}.train_masks"
        if getattr(self.model_config, "segmentation_head", False):  # type: ignore[attr-defined]
            raise ValueError(f"{name}(): {type(self).__name__} is a segmentation preset and has masks already; "
                             "stage 2 trains a mask head on a detection preset (RFDETRNano ...)")
        if self.weights_path is None:
            raise ValueError(f"{name}(): the detector has no weights file to freeze: train it first "
                             f"(model.train(...)) or load one ({type(self).__name__}(pretrain_weights=PATH))")
        fixed = {"size": self.size, "checkpoint": str(self.weights_path)}
        run = run_mode("stage2", fixed, self._with_model_defaults(kwargs), name)
        self._reload(run, masks=True)
        return run

    def _with_model_defaults(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The user's settings, plus this model's resolution and device where not given."""
        out = dict(kwargs)
        out.setdefault("resolution", self.resolution)
        device = getattr(self, "device", None)
        if device is not None:
            out.setdefault("device", str(device))
        return out

    def _reload(self, run: TrainingRun, masks: bool | None) -> None:
        trained = type(self)(pretrain_weights=run.best_checkpoint, device=getattr(self, "device", None),  # type: ignore[call-arg]
                             masks=masks)
        self.__dict__.update(trained.__dict__)
        self.last_run = run
