"""Make the demo's starting weights (``assets/demo_shapes_tiny.pth``), as official weights are made: a long stage-1
run of the ``tiny`` detector on a large synthetic shapes dataset (another seed than the demo's own data, so the demo's
test images are never seen).

The demo then fine-tunes from this file as a user fine-tunes from the official weights, which is what makes a 1M
parameter detector trained for a few CPU minutes visibly right. The committed file was made by three cosine cycles
(about an hour of CPU on a busy 2-core machine; valid bbox mAP50:95 0.23, 0.46, then 0.78), from the repository root::

    python tools/make_demo_weights.py --output runs/dw1 --resolution 128 --epochs 10 --lr 2e-3 --weights runs/dw1.pth
    python tools/make_demo_weights.py --output runs/dw2 --resolution 128 --epochs 12 --lr 1e-3 --start runs/dw1.pth \
        --weights runs/dw2.pth
    python tools/make_demo_weights.py --output runs/dw3 --epochs 12 --lr 1e-3 --start runs/dw2.pth
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

from rfdetr.checkpoint.files import extract_state_dict, load_checkpoint_file, save_checkpoint  # noqa: E402
from rfdetr.data.synthetic import write_synthetic_dataset  # noqa: E402
from rfdetr.demo import COMMON, DEMO_DATA, PRETRAINED, RESOLUTION, _only_run, _run_script  # noqa: E402

# Eight times the demo's training set, from another seed; the same image size and shapes.
PRETRAIN_DATA = dataclasses.replace(DEMO_DATA, splits=(("train", 1024), ("valid", 64)), seed=1000)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo_weights", help="work folder (dataset and the stage-1 run)")
    parser.add_argument("--weights", default=str(PRETRAINED), help="the slim weights file written at the end")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=RESOLUTION, help="training resolution (the demo's: 160)")
    parser.add_argument("--lr", default="2e-3")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--start", default="none", help="weights to continue from (a second, lower-lr cosine cycle)")
    return parser


def main(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    dataset = write_synthetic_dataset(out / "dataset", PRETRAIN_DATA)
    run_root = out / "stage1"
    if not run_root.is_dir() or not any(run_root.iterdir()):
        common = [str(args.resolution) if i and COMMON[i - 1] == "--resolution" else a for i, a in enumerate(COMMON)]
        stage1 = [*common, "--seed", "1000", "--dataset", str(dataset), "--output", str(run_root), "--pretrained",
                  args.start, "--pretrain_exclude_keys", "", "--epochs", str(args.epochs), "--lr", args.lr,
                  "--lr_encoder", args.lr, "--augment", "1", "--run_test", "0"]
        _run_script("train_detector_stage1.py", stage1, args.threads)
    ckpt = load_checkpoint_file(_only_run(run_root) / "checkpoint_best_total.pth")
    # Weights and the records that say what the model is; no optimiser state (a third of the size).
    slim = {k: v for k, v in ckpt.items() if k in ("args", "model_name", "model_config", "class_names")}
    slim["model"] = {k: v.to(torch.float32) for k, v in extract_state_dict(ckpt).items()}
    path = save_checkpoint(slim, args.weights)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
