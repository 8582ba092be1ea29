"""Stage 1: train an RF-DETR detector (boxes + classes) on a Roboflow COCO dataset.

    python train_detector_stage1.py --size nano --dataset dataset/ --epochs 50 --batch 4 --accum 4
    torchrun --nproc_per_node 2 train_detector_stage1.py --size nano ...      # many GPUs (DDP)
    python train_detector_stage1.py --resume runs/detector_nano_384_1/checkpoint.pth   # continue a run

Writes runs/detector_{size}_{resolution}_{n}/ (config.json, log.jsonl, tb/, checkpoint*.pth, results.json).
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.train.args import (
    DEFAULT_PRETRAIN_EXCLUDE,
    TrainingArgumentParser,
    add_training_arguments,
    detection_sizes,
    run_training_script,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = TrainingArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, detection_sizes(), train_overrides={})
    parser.add_argument("--pretrained", default=None,
                        help="weights to start from: a path, an official name (rf-detr-nano.pth) or 'none' "
                             "(default: the size's official COCO weights)")
    parser.add_argument("--pretrain_exclude_keys", "--pretrain-exclude-keys", default=DEFAULT_PRETRAIN_EXCLUDE,
                        help="comma-separated key patterns ('*' wildcard) dropped from --pretrained before loading")
    return parser


def main(args: argparse.Namespace) -> int:
    from rfdetr.train.stage1 import run

    return run_training_script("train_detector_stage1.py", run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
