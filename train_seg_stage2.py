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

from rfdetr.train.args import run_training_script
from rfdetr.train.parsers import stage2_parser


def get_args_parser() -> argparse.ArgumentParser:
    return stage2_parser(__doc__)


def main(args: argparse.Namespace) -> int:
    from rfdetr.train.stage2 import run

    return run_training_script("train_seg_stage2.py", run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
