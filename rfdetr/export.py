"""Export a checkpoint for deployment: ``python -m rfdetr.export --weights W [--format onnx]``.

    python -m rfdetr.export --weights runs/segmentation_nano_384_1/checkpoint_best_total.pth
    python -m rfdetr.export --weights rf-detr-seg-nano.pt --output exported/ --dynamic_batch

Writes ``inference_model[_fp16].<suffix>`` (default: next to the weights) and prints its path. Every format has the
contract of :meth:`rfdetr.detr.RFDETR.export`; run the file with :func:`rfdetr.deploy.load` or
``python -m rfdetr.predict --weights inference_model.tflite``. Exit code 2 with a one-line message for a bad weights
path, an unknown format, a resolution the model cannot take or a missing optional package (with the pip command).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfdetr.checkpoint import CheckpointError
from rfdetr.checkpoint.weights import WeightsDownloadError
from rfdetr.deploy.export.formats import COMPUTE, DEFAULT_INT8_IO, EXPORT_FORMATS, INT8_IO, get_format
from rfdetr.deploy.export.formats.onnx import MAX_OPSET, MIN_OPSET
from rfdetr.util.cli import HelpFormatter, run_command


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--weights",
        required=True,
        help="checkpoint (ours, rfdetr's, stage 2) or an official weight name (rf-detr-nano.pth ...)",
    )
    parser.add_argument("--format", default="onnx",
                        help=f"export format: {', '.join(EXPORT_FORMATS)}, or {HUGGINGFACE} (a Hugging Face "
                             "transformers folder: config.json + model.safetensors)")
    parser.add_argument("--half", action="store_true",
                        help="float16 weights, half the file, computed in float32 (tflite, openvino); for speed on "
                             "bf16 CPUs see --compute")
    parser.add_argument("--compute", choices=COMPUTE, default="auto",
                        help="openvino: precision of the float computation. bfloat16: faster and less exact, bf16 "
                             "where the CPU has it natively (AMX, AVX512-BF16), float32 elsewhere; auto: bfloat16 "
                             "for --int8 files when this CPU has native bf16 and the report's check agrees, else "
                             "float32")
    parser.add_argument("--int8", action="store_true", help="full-integer INT8, calibrated on --calibration images")
    parser.add_argument("--int8_io", "--int8-io", choices=INT8_IO, default=DEFAULT_INT8_IO,
                        help="with --int8: type of the file's input and outputs (integers for NPUs; tflite)")
    parser.add_argument("--calibration", default=None, help="dataset folder or folder of images for INT8 calibration")
    parser.add_argument("--calibration_images", "--calibration-images", type=int, default=64,
                        help="calibration images used")
    parser.add_argument("--check_images", "--check-images", default=None,
                        help="dataset folder or folder of pictures: the report checks the file's detections against "
                             "PyTorch's on them (default: the calibration images, else one random input)")
    parser.add_argument("--dataset", default=None,
                        help="COCO or YOLO dataset: the report gets the file's mAP50:95 against the float32 model's")
    parser.add_argument("--split", default="valid", help="split of --dataset that is scored")
    parser.add_argument("--max_map_drop", "--max-map-drop", type=float, default=None,
                        help="refuse (exit 2, report kept, file deleted) a file that loses more mAP50:95 points")
    parser.add_argument("--output", default=None, help="output folder (default: the folder of --weights)")
    parser.add_argument(
        "--size", default="auto", help="model preset; 'auto': the one the checkpoint records, else from its tensors"
    )
    parser.add_argument("--resolution", type=int, default=None, help="square input side (default: the model's)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=1, help="static batch size of the file")
    parser.add_argument("--dynamic_batch", "--dynamic-batch", action="store_true", help="symbolic batch dimension")
    parser.add_argument("--simplify", action="store_true", help="run onnxsim when it is installed")
    parser.add_argument(
        "--no_masks",
        "--no-masks",
        action="store_true",
        help="export boxes and logits only, even for a segmentation / stage-2 model",
    )
    return parser


# Not a runtime file but a folder for transformers (rfdetr.checkpoint.huggingface): written from the checkpoint itself.
HUGGINGFACE = "huggingface"


def export_huggingface(args: argparse.Namespace) -> Path:
    """``--format huggingface``: the checkpoint as a transformers folder (``--output``, default beside the weights).

    Raises:
        ValueError: an option that only runtime formats take.
        CheckpointError: a stage-2 head transformers has no class for (the message says what to export instead).
    """
    from rfdetr.checkpoint import load_checkpoint_file
    from rfdetr.checkpoint.huggingface import save_transformers_folder
    from rfdetr.checkpoint.weights import resolve_weights

    taken = [flag for flag, value in (("--half", args.half), ("--int8", args.int8), ("--dataset", args.dataset),
                                      ("--compute", args.compute != "auto"),
                                      ("--dynamic_batch", args.dynamic_batch), ("--no_masks", args.no_masks))
             if value]
    if taken:
        raise ValueError(f"--format {HUGGINGFACE} writes the checkpoint's float32 weights as they are; it does not "
                         f"take {', '.join(taken)}")
    weights = Path(resolve_weights(args.weights))
    output = Path(args.output) if args.output else weights.resolve().parent / f"{weights.stem}_hf"
    return save_transformers_folder(load_checkpoint_file(weights), output)


def run_export(args: argparse.Namespace) -> Path:
    """Load ``args.weights`` and export it; returns the written file.

    Raises:
        ValueError: unknown format or size, bad resolution / opset / batch size.
        FileNotFoundError: the weights do not exist.
        ImportError: onnx is not installed.
    """
    from rfdetr.detr import load_model

    if args.format == HUGGINGFACE:
        return export_huggingface(args)
    get_format(args.format).require()  # before the model is loaded: a missing package fails at once
    kwargs = {"device": "cpu", "resolution": args.resolution, "masks": False if args.no_masks else None}
    model = load_model(args.weights, args.size, **kwargs)
    output = Path(args.output) if args.output else Path(args.weights).resolve().parent
    return model.export(
        output,
        format=args.format,
        half=args.half,
        int8=args.int8,
        int8_io=args.int8_io,
        compute=args.compute,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
        check_images=args.check_images,
        dataset=args.dataset,
        split=args.split,
        max_map_drop=args.max_map_drop,
        opset=args.opset,
        batch_size=args.batch_size,
        dynamic_batch=args.dynamic_batch,
        simplify=args.simplify,
    )


def main(args: argparse.Namespace) -> int:
    return run_command("rfdetr.export", lambda a: print(run_export(a)), args,
                       errors=(CheckpointError, WeightsDownloadError))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
