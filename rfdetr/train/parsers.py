"""The flags of the three training modes, in the package so that the scripts and the Python API
(:mod:`rfdetr.train.api`) parse exactly the same settings.

Each function builds the parser its script shows (``train_detector_stage1.py``, ``train_seg_stage2.py``,
``train_seg_single_stage.py`` pass their docstring as ``description``); every default comes from the config
dataclasses of :mod:`rfdetr.train.config` through :func:`rfdetr.train.args.add_training_arguments`.
"""

from __future__ import annotations

import argparse

from rfdetr.models.mask_head_config import MASK_HEAD_KINDS
from rfdetr.train.args import (
    DEFAULT_PRETRAIN_EXCLUDE,
    TrainingArgumentParser,
    add_training_arguments,
    detection_sizes,
)
from rfdetr.train.config import SEGMENTATION_LOSS

__all__ = ["single_stage_parser", "stage1_parser", "stage2_parser"]


def _parser(description: str | None) -> TrainingArgumentParser:
    return TrainingArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def stage1_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Stage 1 (the detector): ``train_detector_stage1.py``'s flags."""
    parser = _parser(description)
    add_training_arguments(parser, detection_sizes(), train_overrides={})
    parser.add_argument("--pretrained", default=None,
                        help="weights to start from: a path, an official name (rf-detr-nano.pth) or 'none' "
                             "(default: the size's official COCO weights)")
    parser.add_argument("--pretrain_exclude_keys", "--pretrain-exclude-keys", default=DEFAULT_PRETRAIN_EXCLUDE,
                        help="comma-separated key patterns ('*' wildcard) dropped from --pretrained before loading")
    return parser


def stage2_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Stage 2 (a mask head on the frozen detector): ``train_seg_stage2.py``'s flags."""
    from rfdetr.train.stage2 import STAGE2_HIDDEN, STAGE2_OPTIM_DEFAULTS, STAGE2_TRAIN_DEFAULTS

    parser = _parser(description)
    add_training_arguments(parser, detection_sizes(), train_overrides=STAGE2_TRAIN_DEFAULTS,
                           loss_defaults=SEGMENTATION_LOSS, optim_overrides=STAGE2_OPTIM_DEFAULTS, hide=STAGE2_HIDDEN,
                           eval_only_help="evaluate a stage-2 checkpoint (--checkpoint FILE, or --resume) on valid "
                                          "and exit")
    parser.add_argument("--stage1_run", "--stage1-run", default=None,
                        help="stage-1 run folder; its best checkpoint is used unless --checkpoint is given")
    parser.add_argument("--checkpoint", default=None,
                        help="detector weights: ours (e.g. shrink_head.py's output), an official rf-detr-*.pth or an "
                             "rfdetr training checkpoint; a stage-2 checkpoint also restores its mask head")
    parser.add_argument("--mask_head", "--mask-head", choices=MASK_HEAD_KINDS, default="auto",
                        help="MaskHead (rfdetr's head), MaskHeadNano (light), or auto: nano for --size nano")
    parser.add_argument("--mask_head_weights", "--mask-head-weights", default=None, metavar="PATH",
                        help="start the mask head from another stage-2 checkpoint's head (e.g. one trained on a "
                             "larger dataset); the detector still comes from --checkpoint / --stage1_run")
    parser.add_argument("--cache_features", "--cache-features", nargs="?", const="memory", default=None,
                        metavar="DIR", help="compute the frozen detector's outputs once (needs --augment 0 "
                                            "--multi_scale 0); in memory, or float16 files under DIR")
    parser.add_argument("--seg_lr", "--seg-lr", dest="lr", type=float, default=argparse.SUPPRESS,
                        help="learning rate of the mask head (same as --lr)")
    return parser


def single_stage_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Single stage (detector and masks trained together): ``train_seg_single_stage.py``'s flags."""
    from rfdetr.train.single_stage import SINGLE_STAGE_PRETRAIN_EXCLUDE, SINGLE_STAGE_TRAIN_DEFAULTS, single_stage_sizes

    parser = _parser(description)
    add_training_arguments(parser, single_stage_sizes(), train_overrides=SINGLE_STAGE_TRAIN_DEFAULTS,
                           loss_defaults=SEGMENTATION_LOSS)
    parser.add_argument("--pretrained", "--pretrain_weights", "--init_ckpt", default=None,
                        help="weights to start from: a path (ours, rfdetr's), an official name (rf-detr-seg-nano.pt) "
                             "or 'none' (default: the size's official weights: rf-detr-seg-*.pt for seg sizes)")
    parser.add_argument("--pretrain_exclude_keys", "--pretrain-exclude-keys", default=SINGLE_STAGE_PRETRAIN_EXCLUDE,
                        help="comma-separated key patterns ('*' wildcard) dropped from --pretrained before loading "
                             "(default: none)")
    parser.add_argument("--mask_head", "--mask-head", choices=MASK_HEAD_KINDS, default="auto",
                        help="detection sizes only: MaskHead (rfdetr's head), MaskHeadNano (light), or auto (nano "
                             "for --size nano)")
    return parser
