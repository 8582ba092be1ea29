"""COCO mAP of a checkpoint or of any exported file: ``python -m rfdetr.evaluate --weights W --dataset D``.

    python -m rfdetr.evaluate --weights runs/segmentation_nano_384_1/checkpoint_best_total.pth --dataset data/
    python -m rfdetr.evaluate --weights exported/inference_model.tflite --dataset data/ --split test
    python -m rfdetr.evaluate --weights checkpoint.pth --dataset data/ --engine openvino --int8 --calibration data/

Prints COCO's bbox (and, for models with masks, segm) summary with per-class APs and writes the same numbers as JSON
(``--output``, default ``runs/evaluate/<weights name>_<split>.json``). The exported file runs in its own runtime through
the same ``predict()`` as the PyTorch model (:mod:`rfdetr.deploy.runtime.evaluate`), so the two are directly comparable.
``--engine`` runs a checkpoint in a runtime, exported once and cached as ``optimize_for_inference`` does
(:mod:`rfdetr.deploy.runtime.engine_args`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfdetr.checkpoint import CheckpointError
from rfdetr.checkpoint.weights import WeightsDownloadError
from rfdetr.deploy.runtime.engine_args import EngineChoice, add_engine_args
from rfdetr.deploy.runtime.evaluate import evaluate_predictor
from rfdetr.predict import load_predictor
from rfdetr.util.cli import HelpFormatter, run_command
from rfdetr.util.run_dir import write_json_atomic


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="checkpoint, official weight name, or an exported file (.onnx, .tflite, .xml, .pte)")
    parser.add_argument("--dataset", required=True,
                        help="Roboflow COCO export (train/, valid/, [test/]) or YOLO dataset (data.yaml)")
    parser.add_argument("--split", default="valid", help="split to evaluate on (valid/val, test, train)")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--max_dets", "--max-dets", type=int, default=100, help="detections per image COCOeval uses")
    parser.add_argument("--size", default="auto", help="model preset; 'auto': the one the checkpoint records")
    parser.add_argument("--resolution", type=int, default=None, help="square input side (default: the model's)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    add_engine_args(parser)
    return parser


def run_evaluate(args: argparse.Namespace) -> dict:
    """Load ``args.weights``, evaluate, print and write the results; returns them."""
    model = load_predictor(args.weights, args.size, args.resolution, args.device,
                           engine=EngineChoice.from_args(args))
    results = evaluate_predictor(model, args.dataset, args.split, args.max_dets, progress=not args.no_progress)
    default = Path("runs/evaluate") / f"{Path(args.weights).name}_{args.split}.json"
    output = Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    results = {"weights": str(args.weights), "dataset": str(args.dataset), **results}
    write_json_atomic(output, results)
    print(results["summary"])
    maps = ", ".join(f"{t} mAP50:95 {results[t]['mAP']:.4f} mAP50 {results[t]['mAP50']:.4f}"
                     for t in ("bbox", "segm") if t in results)
    print(f"{args.weights} on {args.split} ({results['images']} images): {maps}; results in {output}")
    return results


def main(args: argparse.Namespace) -> int:
    return run_command("rfdetr.evaluate", run_evaluate, args, errors=(CheckpointError, WeightsDownloadError))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
