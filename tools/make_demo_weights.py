"""Make the demo's starting weights, as official weights are made: long runs on a large synthetic shapes dataset
(another seed than the demo's own data, so the demo's test images are never seen):

* ``assets/demo_shapes_tiny.pth``: the ``tiny`` detector after stage-1 cycles on 1024 images;
* ``assets/demo_shapes_tiny_mask_head.pth``: a MaskHeadNano trained by stage 2 on that detector and the same 1024
  images (the head's tensors and its config only; ``train_seg_stage2.py --mask_head_weights`` starts from it).

The demo fine-tunes from these as a user fine-tunes the official detection and segmentation weights, which is what
makes a 1M-parameter model trained for a minute right on every host: trained on the demo's 96 images alone, the mask
head fits them (mask IoU 0.90 on its training images) but not new ones (0.71 on 256 held-out images), and the label of
a low-contrast shape depends on the host's rounding. The committed files come from six cosine cycles (about 90 CPU
minutes), each run from the repository root; bbox mAP50:95 on 256 held-out images (seed 11) at 160 px after cycles
3 / 4 / 5: 0.74 / 0.83 / 0.84, after cycle 6 at 192 px 0.91 (AP50 0.99); the mask head (stage 2, 40 epochs on the
1024 images at 192 px) is what the demo fine-tunes to segm AP50 0.93 there::

    python tools/make_demo_weights.py --output runs/dw1 --resolution 128 --epochs 10 --lr 2e-3 --weights runs/dw1.pth \
        --mask_head_epochs 0
    python tools/make_demo_weights.py --output runs/dw2 --resolution 128 --epochs 12 --lr 1e-3 --start runs/dw1.pth \
        --weights runs/dw2.pth --mask_head_epochs 0
    python tools/make_demo_weights.py --output runs/dw3 --resolution 160 --epochs 12 --lr 1e-3 --start runs/dw2.pth \
        --weights runs/dw3.pth --mask_head_epochs 0
    python tools/make_demo_weights.py --output runs/dw4 --resolution 160 --epochs 12 --lr 5e-4 --start runs/dw3.pth \
        --weights runs/dw4.pth --mask_head_epochs 0
    python tools/make_demo_weights.py --output runs/dw5 --resolution 160 --epochs 12 --lr 3e-4 --start runs/dw4.pth \
        --weights runs/dw5.pth --mask_head_epochs 0
    python tools/make_demo_weights.py --output runs/dw6 --epochs 12 --lr 3e-4 --start runs/dw5.pth
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rfdetr.checkpoint import extract_state_dict, load_checkpoint_file, save_checkpoint  # noqa: E402
from rfdetr.data.synthetic import write_synthetic_dataset  # noqa: E402
from rfdetr.demo import (  # noqa: E402
    COMMON,
    DEMO_DATA,
    PRETRAINED,
    PRETRAINED_MASK_HEAD,
    RESOLUTION,
    _only_run,
    _run_script,
)
from rfdetr.train.stage2 import split_mask_head  # noqa: E402

# Eight times the demo's training set, from another seed; the same image size and shapes.
PRETRAIN_DATA = dataclasses.replace(DEMO_DATA, splits=(("train", 1024), ("valid", 64)), seed=1000)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo_weights", help="work folder (dataset and the stage-1 run)")
    parser.add_argument("--weights", default=str(PRETRAINED), help="the slim weights file written at the end")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=RESOLUTION, help="training resolution (the demo's: 192)")
    parser.add_argument("--lr", default="2e-3")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--start", default="none", help="weights to continue from (a second, lower-lr cosine cycle)")
    parser.add_argument("--mask_head_epochs", type=int, default=40,
                        help="stage-2 epochs of the mask head on the final detector (0: detector only)")
    parser.add_argument("--mask_head_weights", default=str(PRETRAINED_MASK_HEAD), help="the mask-head file written")
    return parser


def common_args(resolution: int) -> list[str]:
    """The demo's shared training flags at ``resolution``."""
    return [str(resolution) if i and COMMON[i - 1] == "--resolution" else a for i, a in enumerate(COMMON)]


def main(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    dataset = write_synthetic_dataset(out / "dataset", PRETRAIN_DATA)
    run_root = out / "stage1"
    if not run_root.is_dir() or not any(run_root.iterdir()):
        stage1 = [*common_args(args.resolution), "--seed", "1000", "--dataset", str(dataset), "--output",
                  str(run_root), "--pretrained", args.start, "--pretrain_exclude_keys", "", "--epochs",
                  str(args.epochs), "--lr", args.lr, "--lr_encoder", args.lr, "--augment", "1", "--run_test", "0"]
        _run_script("train_detector_stage1.py", stage1, args.threads)
    ckpt = load_checkpoint_file(_only_run(run_root) / "checkpoint_best_total.pth")
    # Weights and the records that say what the model is; no optimiser state (a third of the size).
    slim = {k: v for k, v in ckpt.items() if k in ("args", "model_name", "model_config", "class_names")}
    slim["model"] = {k: v.to(torch.float32) for k, v in extract_state_dict(ckpt).items()}
    path = save_checkpoint(slim, args.weights)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    if args.mask_head_epochs > 0:
        head_root = out / "stage2"
        if not head_root.is_dir() or not any(head_root.iterdir()):
            stage2 = [*common_args(args.resolution), "--seed", "1000", "--dataset", str(dataset), "--output",
                      str(head_root), "--checkpoint", str(path), "--epochs", str(args.mask_head_epochs), "--seg_lr",
                      "2e-3", "--augment", "0", "--cache_features", "--run_test", "0"]
            _run_script("train_seg_stage2.py", stage2, args.threads)
        ckpt = load_checkpoint_file(_only_run(head_root) / "checkpoint.pth")  # the last epoch (cosine: lr ~0)
        _, head = split_mask_head(extract_state_dict(ckpt))
        slim_head = {"model": {k: v.to(torch.float32) for k, v in head.items()}, "mask_head": ckpt["mask_head"],
                     "model_name": ckpt.get("model_name")}
        head_path = save_checkpoint(slim_head, args.mask_head_weights)
        print(f"wrote {head_path} ({os.path.getsize(head_path) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
