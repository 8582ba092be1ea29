"""Predict on images and draw the results: ``python -m rfdetr.predict --weights W --source IMG|DIR|GLOB``.

    python -m rfdetr.predict --weights runs/segmentation_nano_384_1/checkpoint_best_total.pth --source photos/
    python -m rfdetr.predict --weights exported/inference_model.onnx --source "photos/**/*.jpg" --threshold 0.4

Writes a picture per image and one COCO ``predictions.json`` to ``--output`` (see :mod:`rfdetr.deploy.predict`).
``--weights`` is a checkpoint (loaded as :class:`rfdetr.detr.RFDETR`) or an exported file (run in its own runtime by
:mod:`rfdetr.deploy.runner`). Files that cannot be read as images are skipped, counted and logged; the run fails
(exit code 2) only when no image could be read or the weights cannot be loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rfdetr.checkpoint import CheckpointError
from rfdetr.checkpoint.weights import WeightsDownloadError
from rfdetr.deploy.formats import FORMATS
from rfdetr.deploy.predict import Predictor, collect_images, predict_images
from rfdetr.deploy.runner import load
from rfdetr.util.cli import run_command

EXPORTED_SUFFIXES = {f.suffix for f in FORMATS.values()}


def load_predictor(
    weights: str | os.PathLike[str],
    size: str = "auto",
    resolution: int | None = None,
    device: str | None = None,
    masks: bool | None = None,
) -> Predictor:
    """An exported file (``.onnx``, ``.tflite``, ...) in its runtime (:func:`rfdetr.deploy.load`), anything else as
    :class:`rfdetr.detr.RFDETR`."""
    if Path(weights).suffix.lower() in EXPORTED_SUFFIXES:
        return load(weights)
    from rfdetr.detr import load_model

    return load_model(weights, size, resolution=resolution, device=device, masks=masks)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="checkpoint, official weight name, or an exported file (.onnx, .tflite, .xml, .pte)")
    parser.add_argument("--source", required=True, help="an image, a folder of images, or a glob (quote it)")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep detections with score > threshold")
    parser.add_argument("--output", default="runs/predict", help="folder for the pictures and predictions.json")
    parser.add_argument(
        "--size", default="auto", help="model preset; 'auto': the one the checkpoint records, else from its tensors"
    )
    parser.add_argument("--resolution", type=int, default=None, help="square input side (default: the model's)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    parser.add_argument("--no_masks", "--no-masks", action="store_true", help="boxes only, even with a mask head")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    return parser


def run_predict(args: argparse.Namespace) -> None:
    """Load ``args.weights``, predict on ``args.source`` and print what was written."""
    paths = collect_images(args.source)
    model = load_predictor(args.weights, args.size, args.resolution, args.device, False if args.no_masks else None)
    summary = predict_images(model, paths, args.output, args.threshold, progress=not args.no_progress)
    print(
        f"{summary.num_images} images, {summary.num_detections} detections, {len(summary.skipped)} skipped "
        f"(unreadable); pictures in {Path(args.output)}, predictions in {summary.predictions}"
    )


def main(args: argparse.Namespace) -> int:
    return run_command("rfdetr.predict", run_predict, args, errors=(CheckpointError, WeightsDownloadError))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
