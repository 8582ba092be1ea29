"""Stage 2: train a mask head on the frozen stage-1 detector (instance segmentation).

    python train_seg_stage2.py --size nano --stage1_run runs/detector_nano_384_1 \\
        --checkpoint runs/detector_nano_384_1/checkpoint_3class.pth --dataset dataset/ --epochs 50 --batch 2 --accum 2
    python train_seg_stage2.py ... --augment 0 --multi_scale 0 --cache_features   # detector runs once per image
    python train_seg_stage2.py --resume runs/segmentation_nano_384_1/checkpoint.pth ...   # continue a run
    python train_seg_stage2.py ... --eval_interval 1   # COCO evaluation every epoch (default: every 5th and the last)

Every detector weight is loaded and frozen; only the mask head trains (MaskHeadNano for nano with --mask_head auto).
Writes runs/segmentation_{size}_{resolution}_{n}/ (config.json, log.jsonl, tb/, checkpoint*.pth, results.json);
predict with RFDETRNano(pretrain_weights=".../checkpoint_best_total.pth", masks=True).
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.models.mask_head import MASK_HEAD_KINDS
from rfdetr.train.args import TrainingArgumentParser, add_training_arguments, detection_sizes, run_training_script
from rfdetr.train.config import SEGMENTATION_LOSS


def get_args_parser() -> argparse.ArgumentParser:
    from rfdetr.train.stage2 import STAGE2_HIDDEN, STAGE2_OPTIM_DEFAULTS, STAGE2_TRAIN_DEFAULTS

    parser = TrainingArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(args: argparse.Namespace) -> int:
    from rfdetr.train.stage2 import run

    return run_training_script("train_seg_stage2.py", run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
