"""Single stage: train detection and instance masks together (rfdetr's segmentation recipe, nothing frozen).

    python train_seg_single_stage.py --size seg-nano --dataset dataset/ --epochs 50 --batch 2 --accum 8
    python train_seg_single_stage.py --size nano --dataset dataset/ ...        # detector + mask head, trained jointly
    torchrun --nproc_per_node 2 train_seg_single_stage.py --size seg-small ...   # many GPUs (DDP)
    python train_seg_single_stage.py --resume runs/seg_single_seg-nano_312_1/checkpoint.pth ...   # continue a run

Segmentation presets start from the official rf-detr-seg-*.pt weights (--pretrained to change); detection presets
start from the size's detection weights and add a mask head (--mask_head). Writes
runs/seg_single_{size}_{resolution}_{n}/ (config.json, log.jsonl, tb/, checkpoint*.pth, results.json); "best" and early
stopping follow mask AP50:95. Seg-preset checkpoints load in rfdetr (RFDETRSegNano(pretrain_weights=...)).
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.models.mask_head import MASK_HEAD_KINDS
from rfdetr.train.args import TrainingArgumentParser, add_training_arguments, run_training_script
from rfdetr.train.config import SEGMENTATION_LOSS


def get_args_parser() -> argparse.ArgumentParser:
    from rfdetr.train.single_stage import SINGLE_STAGE_PRETRAIN_EXCLUDE, SINGLE_STAGE_TRAIN_DEFAULTS, single_stage_sizes

    parser = TrainingArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(
        parser, single_stage_sizes(), train_overrides=SINGLE_STAGE_TRAIN_DEFAULTS, loss_defaults=SEGMENTATION_LOSS
    )
    parser.add_argument(
        "--pretrained",
        "--pretrain_weights",
        "--init_ckpt",
        default=None,
        help="weights to start from: a path (ours, rfdetr's), an official name (rf-detr-seg-nano.pt) "
        "or 'none' (default: the size's official weights: rf-detr-seg-*.pt for seg sizes)",
    )
    parser.add_argument(
        "--pretrain_exclude_keys",
        "--pretrain-exclude-keys",
        default=SINGLE_STAGE_PRETRAIN_EXCLUDE,
        help="comma-separated key patterns ('*' wildcard) dropped from --pretrained before loading (default: none)",
    )
    parser.add_argument(
        "--mask_head",
        "--mask-head",
        choices=MASK_HEAD_KINDS,
        default="auto",
        help="detection sizes only: MaskHead (rfdetr's head), MaskHeadNano (light), or auto (nano for --size nano)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    from rfdetr.train.single_stage import run

    return run_training_script("train_seg_single_stage.py", run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
