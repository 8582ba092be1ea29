"""Predict on images, videos, cameras and streams: ``python -m rfdetr.predict --weights W --source SOURCE``.

    python -m rfdetr.predict --weights runs/segmentation_nano_384_1/checkpoint_best_total.pth --source photos/
    python -m rfdetr.predict --weights exported/inference_model.onnx --source "photos/**/*.jpg" --threshold 0.4
    python -m rfdetr.predict --weights model.onnx --source clip.mp4 --track --stride 2
    python -m rfdetr.predict --weights model.onnx --source 0 --show            # camera 0
    python -m rfdetr.predict --weights model.onnx --source rtsp://host:8554/cam --track --max_frames 3000
    python -m rfdetr.predict --weights checkpoint.pth --source clip.mp4 --engine auto --int8 --calibration data/

``--source`` is an image, a video (.mp4 .avi .mov .mkv .webm ...), a folder (its images and videos), a glob, a camera
index or a stream URL (rtsp, rtmp, http, https). Images: a picture each and one COCO ``predictions.json`` in
``--output`` (see :mod:`rfdetr.deploy.media.predict`). Videos, cameras and streams: an annotated ``<name>.mp4``, a
``<name>.jsonl`` with a line per processed frame and a ``<name>.summary.json`` with the per-stage speed (see
:mod:`rfdetr.deploy.media.video`). ``--weights`` is a checkpoint (loaded as :class:`rfdetr.detr.RFDETR`) or an exported
file (run in its own runtime by :mod:`rfdetr.deploy.runtime.runner`); ``--engine`` runs a checkpoint in a runtime
instead, exported once and cached (:mod:`rfdetr.deploy.runtime.engine_args`). Unreadable images are skipped, counted
and logged; the run fails (exit code 2) when nothing could be read, a camera or stream cannot be opened, or the weights
cannot be loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rfdetr.checkpoint import CheckpointError
from rfdetr.checkpoint.weights import WeightsDownloadError
from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.media.predict import Predictor, predict_images
from rfdetr.deploy.media.sources import collect_sources
from rfdetr.deploy.runtime.engine_args import EngineChoice, add_engine_args
from rfdetr.deploy.runtime.runner import load
from rfdetr.util.cli import HelpFormatter, run_command

EXPORTED_SUFFIXES = {f.suffix for f in FORMATS.values()}


def load_predictor(
    weights: str | os.PathLike[str],
    size: str = "auto",
    resolution: int | None = None,
    device: str | None = None,
    masks: bool | None = None,
    engine: EngineChoice | None = None,
) -> Predictor:
    """An exported file (``.onnx``, ``.tflite``, ...) in its runtime (:func:`rfdetr.deploy.load`), anything else as
    :class:`rfdetr.detr.RFDETR` running on ``engine`` (default: eager PyTorch).

    Raises:
        ValueError: engine flags an exported file cannot honour (:meth:`EngineChoice.check_exported`).
    """
    engine = engine if engine is not None else EngineChoice()
    if Path(weights).suffix.lower() in EXPORTED_SUFFIXES:
        engine.check_exported(weights)
        return load(weights, engine.threads)
    from rfdetr.detr import load_model

    model = load_model(weights, size, resolution=resolution, device=device, masks=masks)
    engine.apply(model)
    return model


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="checkpoint, official weight name, or an exported file (.onnx, .tflite, .xml, .pte)")
    parser.add_argument("--source", required=True,
                        help="an image, a video, a folder (images and videos), a glob (quote it), a camera index (0) "
                             "or a stream URL (rtsp://, http://, https://)")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep detections with score > threshold")
    parser.add_argument("--output", default="runs/predict", help="folder for the pictures and predictions.json")
    parser.add_argument(
        "--size", default="auto", help="model preset; 'auto': the one the checkpoint records, else from its tensors"
    )
    parser.add_argument("--resolution", type=int, default=None, help="square input side (default: the model's)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    parser.add_argument("--no_masks", "--no-masks", action="store_true", help="boxes only, even with a mask head")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    video = parser.add_argument_group("videos, cameras and streams")
    video.add_argument("--track", action="store_true",
                       help="track objects across frames (ByteTrack; needs: pip install 'rtdetr-seg[video]')")
    video.add_argument("--stride", type=int, default=1, help="process every N-th frame (the others are skipped)")
    video.add_argument("--max_frames", "--max-frames", type=int, default=None,
                       help="stop after processing this many frames of each source")
    video.add_argument("--show", action="store_true", help="show the frames in a window (where there is a display)")
    video.add_argument("--stream_buffer", "--stream-buffer", action="store_true",
                       help="cameras and live streams (rtsp, rtmp, udp): process every frame even when that falls "
                            "behind (default: always the newest frame, dropping those the model was too slow for)")
    video.add_argument("--save_frames", "--save-frames", action="store_true",
                       help="also write every processed frame as a PNG (<name>_frames/)")
    video.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                       help="read the next frame and draw / write the last one in threads beside the model; auto: on "
                            "for a model on a GPU, off on a CPU (where it measured no faster on 2 cores)")
    add_engine_args(parser)
    return parser


def run_predict(args: argparse.Namespace) -> None:
    """Load ``args.weights``, predict on ``args.source`` and print what was written."""
    if args.stride < 1:
        raise ValueError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max_frames must be >= 1, got {args.max_frames}")
    engine = EngineChoice.from_args(args)
    images, videos = collect_sources(args.source)
    if args.track and videos:
        from rfdetr.deploy.media.track import require_tracking

        require_tracking()  # before loading the model: a missing package is the first thing to say
    model = load_predictor(args.weights, args.size, args.resolution, args.device, False if args.no_masks else None,
                           engine)
    out = Path(args.output)
    if images:
        summary = predict_images(model, images, out, args.threshold, progress=not args.no_progress)
        print(
            f"{summary.num_images} images, {summary.num_detections} detections, {len(summary.skipped)} skipped "
            f"(unreadable); pictures in {out}, predictions in {summary.predictions}"
        )
        if summary.num_detections == 0:
            print(no_detection_hint(args.threshold))
    if videos:
        from rfdetr.deploy.media.video import predict_videos

        # Image pictures are named after their sources' stems too; keep the videos' outputs apart from them.
        used = {p.stem for p in images}
        summaries = predict_videos(
            model, videos, out, used_names=used, show=args.show, threshold=args.threshold, stride=args.stride,
            max_frames=args.max_frames, track=args.track, save_frames=args.save_frames, buffer=args.stream_buffer,
            progress=not args.no_progress, overlap={"auto": None, "on": True, "off": False}[args.overlap],
        )
        for s in summaries:
            print(f"{s.source}: {s.frames_processed} frames processed of {s.frames_read} read ({s.ended}), "
                  f"{s.detections} detections, {s.fps_processed:.1f} frames/s; video {s.video}, frames {s.jsonl}")
            print(s.speed_line)


def no_detection_hint(threshold: float) -> str:
    """One line on why a run found nothing, with the likely causes."""
    return (f"no detection above {threshold} in any image: the model's scores sit below the threshold (try "
            "--threshold 0.2 to see them), or it is barely trained (random or from-scratch weights, too few epochs: "
            "its run's results.json shows the AP), or trained on other objects")


def main(args: argparse.Namespace) -> int:
    return run_command("rfdetr.predict", run_predict, args, errors=(CheckpointError, WeightsDownloadError))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
