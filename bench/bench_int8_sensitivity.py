"""Per-layer INT8 sensitivity of a trained model's ONNX export: which groups of layers may stay in float.

    python bench/bench_int8_sensitivity.py --weights runs/demo/model.pth --dataset runs/demo/dataset

Exports the model to float32 ONNX, calibrates on ``--calibration_images`` images of the dataset's train split, and
for each group of layers (one ViT block, the projector, a decoder layer, the proposal heads, the box / class heads,
the mask head) quantizes that group alone, everything else float, and prints the mean absolute change of boxes,
scores (sigmoid of the logits) and mask probabilities on ``--held_out`` valid images, most sensitive first, then the
same with every group INT8 (:func:`rfdetr.deploy.export.sensitivity.int8_sensitivity`). Without ``--weights`` it
measures the ``tiny`` configuration with random weights (a smoke run: random weights say little about a trained model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rfdetr.deploy.export.calibration import calibration_arrays, calibration_files  # noqa: E402
from rfdetr.deploy.export.sensitivity import int8_sensitivity  # noqa: E402
from rfdetr.detr import load_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="a checkpoint (default: tiny, random weights)")
    parser.add_argument("--dataset", required=True, help="COCO dataset folder (train/ calibrates, valid/ measures)")
    parser.add_argument("--calibration_images", type=int, default=32)
    parser.add_argument("--held_out", type=int, default=8, help="valid images the errors are measured on")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.weights:
        model = load_model(args.weights, device="cpu")
    else:
        from rfdetr.detr import RFDETRTiny

        model = RFDETRTiny(pretrain_weights=False, device="cpu")
    resolution = model.resolution
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # what predict() normalises with
    dataset = Path(args.dataset)
    calibration = calibration_arrays(calibration_files(dataset, args.calibration_images), resolution, mean, std)
    held_out = calibration_arrays(calibration_files(dataset / "valid", args.held_out), resolution, mean, std)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = model.export(tmp, format="onnx")
        results = int8_sensitivity(path, calibration, held_out)
    print(f"INT8 sensitivity of {args.weights or 'tiny (random weights)'} at {resolution} px: {len(calibration)} "
          f"calibration and {len(held_out)} held-out images ({time.perf_counter() - start:.0f} s)")
    names = list(results[-1].errors)
    print(f"{'group (only this INT8)':34s} {'nodes':>5s} " + " ".join(f"{n:>9s}" for n in names))
    for r in results:
        print(f"{r.group:34s} {r.nodes:5d} " + " ".join(f"{r.errors[n]:9.2e}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
