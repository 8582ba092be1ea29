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

from rfdetr.train.args import run_training_script
from rfdetr.train.parsers import single_stage_parser


def get_args_parser() -> argparse.ArgumentParser:
    return single_stage_parser(__doc__)


def main(args: argparse.Namespace) -> int:
    from rfdetr.train.single_stage import run

    return run_training_script("train_seg_single_stage.py", run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
