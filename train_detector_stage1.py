"""Stage 1: train an RF-DETR detector (boxes + classes) on a Roboflow COCO dataset.

    python train_detector_stage1.py --size nano --dataset dataset/ --epochs 50 --batch 4 --accum 4
    torchrun --nproc_per_node 2 train_detector_stage1.py --size nano ...      # many GPUs (DDP)
    python train_detector_stage1.py --resume runs/detector_nano_384_1/checkpoint.pth   # continue a run

Writes runs/detector_{size}_{resolution}_{n}/ (config.json, log.jsonl, tb/, checkpoint*.pth, results.json).
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.train.args import run_training_script
from rfdetr.train.parsers import stage1_parser


def get_args_parser() -> argparse.ArgumentParser:
    return stage1_parser(__doc__)


def main(args: argparse.Namespace) -> int:
    from rfdetr.train.stage1 import run

    return run_training_script("train_detector_stage1.py", run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
