"""Video prediction frames per second: our loop (PyTorch, exported runtimes) next to rfdetr 1.11.2 + supervision.

    python bench/bench_video.py --upstream-python /work/upstream-venv/bin/python
    python bench/bench_video.py --formats onnx openvino openvino-int8 --rounds 6 --iters 5

A synthetic 640x480 clip (moving shapes on a gradient, ``--frames`` frames) is written with OpenCV. Each model then
runs the whole per-frame loop of a video prediction in its own long-lived worker process (:mod:`harness`): read the
next frame, predict (nano, random weights, 384 px, batch 1, ``--threads`` threads), draw the detections and write the
frame to an MP4. The workers take turns ``--iters`` frames at a time in a rotating order for ``--rounds`` rounds, so
they all see the same load changes of a shared machine.

* ours: frames from :class:`rfdetr.deploy.media.sources.VideoReader`, ``predict()`` of :class:`rfdetr.detr.RFDETRNano`
  or of
  an exported file through :func:`rfdetr.deploy.load`, :func:`rfdetr.deploy.media.visualize.render_detections`,
  ``cv2.VideoWriter`` (what ``python -m rfdetr.predict --source clip.mp4`` runs); the per-stage milliseconds of
  :class:`rfdetr.deploy.runtime.timing.StageTimer` are printed too.
* ours loop (``--engine``, default ``auto`` with ``--int8``): the whole loop of ``python -m rfdetr.predict --source
  clip.mp4 --engine auto --int8``, :func:`rfdetr.deploy.media.video.predict_video`, timed with its overlap of reading,
  drawing and writing with the model (``overlap``) and without (``in turn``).
* upstream (with ``--upstream-python``, a venv with rfdetr==1.11.2): ``sv.get_video_frames_generator``,
  ``RFDETRNano.predict``, supervision's mask, box and label annotators and ``sv.VideoSink``, as its docs show.

Printed per model: median ms per frame, frames per second, the spread (min-max of the per-round medians, in frames
per second), the ratio to upstream, and detections per frame (random weights: the sides may find different counts,
which changes the drawing cost).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deploy import export_all, synthetic_calibration  # noqa: E402
from harness import SERVE, Worker, measure  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, FPS = 640, 480, 30.0
CALIBRATION_IMAGES = 32

_WORKER = SERVE + r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import logging; logging.disable(logging.WARNING)
import numpy as np, torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
impl, res, threshold = cfg["impl"], cfg["resolution"], cfg["threshold"]
stats = {"detections": 0, "frames": 0}
if impl == "upstream":
    import rfdetr, supervision as sv
    model = rfdetr.RFDETRNano(pretrain_weights=None, resolution=res)
    info = sv.VideoInfo.from_video_path(cfg["clip"])
    sink = sv.VideoSink(cfg["out"], video_info=info)
    sink.__enter__()
    annotators = [sv.MaskAnnotator(), sv.BoxAnnotator(), sv.LabelAnnotator()]
    frames = iter(())
    def step():
        global frames
        frame = next(frames, None)
        if frame is None:  # the clip ended: start it again
            frames = iter(sv.get_video_frames_generator(cfg["clip"]))
            frame = next(frames)
        dets = model.predict(frame[:, :, ::-1].copy(), threshold=threshold)  # BGR -> RGB
        scene = frame.copy()
        for annotator in annotators:
            scene = annotator.annotate(scene, dets)
        sink.write_frame(scene)
        stats["detections"] += len(dets)
    finish = lambda: sink.__exit__(None, None, None)
    timer = None
elif impl == "loop":
    # The whole `python -m rfdetr.predict --source clip.mp4 --engine ...` loop: predict_video on `chunk` frames per
    # step (opening the clip and the MP4 each time: a small fixed cost against `chunk` forwards).
    from rfdetr.deploy.media.sources import VideoSource
    from rfdetr.deploy.media.video import predict_video
    from rfdetr.detr import RFDETRNano
    model = RFDETRNano(pretrain_weights=False, resolution=res, device="cpu")
    if cfg["engine"] != "torch":
        model.optimize_for_inference(engine=cfg["engine"], int8=cfg["int8"], calibration=cfg.get("calibration"),
                                     calibration_images=cfg.get("calibration_images", 32), cache_dir=cfg["cache"],
                                     threads=cfg["threads"])
    timer = None
    def step():
        summary = predict_video(model, VideoSource(cfg["clip"], "file"), cfg["out"], threshold=threshold,
                                max_frames=cfg["chunk"], progress=False, overlap=cfg["overlap"], name="loop")
        stats["detections"] += summary.detections / cfg["chunk"]
    finish = lambda: None
else:
    import cv2
    from rfdetr.deploy.media.sources import VideoReader, VideoSource
    from rfdetr.deploy.runtime.timing import StageTimer
    from rfdetr.deploy.media.visualize import render_detections
    if impl == "torch":
        from rfdetr.detr import RFDETRNano
        model = RFDETRNano(pretrain_weights=False, resolution=res, device="cpu")
    else:
        from rfdetr.deploy import load
        model = load(cfg["path"], threads=cfg["threads"])
    writer = cv2.VideoWriter(cfg["out"], cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (cfg["width"], cfg["height"]))
    timer = StageTimer()
    frames = iter(())
    def step():
        global frames
        with timer.stage("read"):
            frame = next(frames, None)
            if frame is None:
                frames = iter(VideoReader(VideoSource(cfg["clip"], "file")))
                frame = next(frames)
        dets = model.predict(frame.image, threshold=threshold, timer=timer)
        with timer.stage("draw"):
            picture = render_detections(frame.image, dets)
        with timer.stage("write"):
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        stats["detections"] += len(dets)
    finish = writer.release


def reset():
    if timer is not None:
        timer.total_ms.clear(); timer.calls.clear()
    stats["detections"] = 0


def report(n):
    stats["frames"] += n
    answer = {"detections_per_frame": stats["detections"] / stats["frames"]}
    if timer is not None:
        answer["stages"] = timer.mean_ms(per=stats["frames"])
    return answer


serve(step, cfg["warmup"], reset=reset, report=report)
finish()
"""


@dataclass
class VideoWorker(Worker):
    """A :class:`harness.Worker` that keeps its last answer (detections per frame, stage means); a ``loop`` worker's
    step is ``frames_per_step`` frames, and its times are divided back to per frame."""

    last: dict = field(default_factory=dict)
    frames_per_step: int = 1

    def time(self, n: int) -> list[float]:
        times = [t / self.frames_per_step for t in super().time(n)]
        if self.frames_per_step != 1:  # Worker.time appended the per-step values: keep the per-frame ones
            del self.times[-n:]
            self.times.extend(times)
            self.rounds[-1] = statistics.median(times)
        return times

    def _read(self) -> dict:
        answer = super()._read()
        if "times" in answer:
            self.last = answer
        return answer


def write_clip(path: Path, frames: int) -> Path:
    """A 640x480 MP4 at 30 fps: a disc, a square and a triangle moving over a colour gradient."""
    import cv2
    import numpy as np

    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    background = np.stack([60 + 120 * xx / WIDTH, 80 + 60 * yy / HEIGHT, 140 - 80 * xx / WIDTH], -1).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(frames):
        frame = background.copy()
        cv2.circle(frame, (60 + 8 * i % 520, 140), 45, (40, 40, 230), -1)
        cv2.rectangle(frame, (400, 40 + 5 * i % 300), (500, 140 + 5 * i % 300), (40, 220, 40), -1)
        x = 100 + 6 * i % 400
        cv2.fillPoly(frame, [np.array([[x, 420], [x + 90, 420], [x + 45, 340]], np.int32)], (230, 200, 40))
        writer.write(frame)
    writer.release()
    return path


def export_ours(formats: list[str], folder: Path, resolution: int) -> tuple[dict[str, Path], dict[str, str]]:
    """Our nano (random weights, seed 0) exported to each format variant (``onnx``, ``openvino-int8``, ...: see
    :func:`bench_deploy.export_all`; INT8 calibrated on :data:`CALIBRATION_IMAGES` synthetic shapes images):
    ({variant: file}, {variant: why it failed})."""
    import torch

    from rfdetr.detr import RFDETRNano

    torch.manual_seed(0)
    model = RFDETRNano(pretrain_weights=False, resolution=resolution, device="cpu")
    calibration = None
    if any(name.endswith("-int8") for name in formats):
        calibration = synthetic_calibration(folder / "calibration", resolution, CALIBRATION_IMAGES)
    files, failed = {}, {}
    for name, e in zip(formats, export_all(model, formats, folder, calibration, CALIBRATION_IMAGES), strict=True):
        if e.path is None:
            failed[name] = e.error
        else:
            files[name] = e.path
    return files, failed


def upstream_status(python: str | None) -> str | None:
    """Why upstream cannot be timed, or ``None`` when it can."""
    import subprocess

    if python is None:
        return "no --upstream-python given"
    if not Path(python).exists():
        return f"{python} does not exist"
    code = "import importlib.metadata as m, rfdetr, supervision; print(m.version('rfdetr'))"
    probe = subprocess.run([python, "-c", code], cwd="/", capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    if probe.returncode:
        return f"{python} cannot import rfdetr and supervision: {probe.stderr.strip().splitlines()[-1][:200]}"
    return None


def report(workers: list[VideoWorker], upstream: VideoWorker | None) -> str:
    lines = [f"video loop at {WIDTH}x{HEIGHT} (read, predict nano @ 384, draw, write MP4), batch 1:",
             f"  {'model':<22} {'ms/frame':>9} {'fps':>6} {'fps spread':>11} {'vs upstream':>11} {'dets/frame':>10}"]
    for w in workers:
        med = statistics.median(w.times)
        spread = f"{1000 / max(w.rounds):.1f}-{1000 / min(w.rounds):.1f}"
        vs = (f"{statistics.median(b / a for a, b in zip(w.rounds, upstream.rounds, strict=True)):.2f}x"
              if upstream is not None else "-")
        dets = w.last.get("detections_per_frame", float("nan"))
        lines.append(f"  {w.name:<22} {med:9.1f} {1000 / med:6.1f} {spread:>11} {vs:>11} {dets:10.1f}")
        stages = w.last.get("stages")
        if stages:
            lines.append("      " + ", ".join(f"{ms:.1f}ms {name}" for name, ms in stages.items()))
    lines.append("  (vs upstream: median of the per-round speed ratios, >1 is faster; spread: min-max of the per-round "
                 "medians)")
    return "\n".join(lines)


def loop_workers(args: argparse.Namespace, base: dict, root: Path) -> list[VideoWorker]:
    """The whole predict loop with ``--engine`` (and ``--int8``), with and without overlap: the engine is built and
    chosen here first (auto: every installed runtime exported and timed once), so that the workers reuse the cache."""
    import logging

    import torch

    from rfdetr.detr import RFDETRNano

    calibration = None
    if args.int8:
        calibration = synthetic_calibration(root / "loop_calibration", 384, CALIBRATION_IMAGES)
    cache = root / "engine_cache"
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("rfdetr.deploy.runtime.optimize").setLevel(logging.INFO)
    torch.manual_seed(0)  # the workers build the same weights, so the same cache key
    model = RFDETRNano(pretrain_weights=False, resolution=384, device="cpu")
    model.optimize_for_inference(engine=args.engine, int8=args.int8, calibration=calibration,
                                 calibration_images=CALIBRATION_IMAGES, cache_dir=cache, threads=args.threads)
    chunk = args.chunk
    cfg = {**base, "impl": "loop", "engine": args.engine, "int8": args.int8, "cache": str(cache), "chunk": chunk,
           "calibration": str(calibration) if calibration else None, "calibration_images": CALIBRATION_IMAGES}
    label = f"ours loop {args.engine}{' int8' if args.int8 else ''}"
    return [VideoWorker(f"{label} {'overlap' if overlap else 'in turn'}", sys.executable,
                        {**cfg, "overlap": overlap, "out": str(root / f"loop_{overlap}")}, str(REPO), _WORKER,
                        iters_scale=1 / chunk, frames_per_step=chunk)
            for overlap in (True, False)]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", nargs="*", default=None,
                        help="exported formats to time besides PyTorch, with -fp16 / -int8 variants as in "
                             "bench_deploy.py (default: every installed one, float32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=60, help="length of the synthetic clip (it loops)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--iters", type=int, default=5, help="frames per worker and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--upstream-python", "--upstream_python", dest="upstream_python", default=None,
                        help="python of a venv with rfdetr==1.11.2 and supervision, timed in the same run")
    parser.add_argument("--engine", default="auto",
                        help="also time the whole predict loop (python -m rfdetr.predict --engine E) with and "
                             "without overlap; '' to skip")
    parser.add_argument("--chunk", type=int, default=20,
                        help="frames per timed step of the whole-loop workers (each step opens the clip and the MP4)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="the loop's engine in INT8 (calibrated on synthetic shapes)")
    return parser


def main(args: argparse.Namespace) -> int:
    import torch

    from rfdetr.deploy.export.formats import FORMATS

    formats = args.formats if args.formats is not None else [n for n, f in FORMATS.items() if not f.missing()]
    why_not_upstream = upstream_status(args.upstream_python)
    print(f"torch {torch.__version__}, {args.threads} threads, exported formats {formats}, {args.rounds} rounds x "
          f"{args.iters} frames per worker, one process per model")
    if why_not_upstream:
        print(f"upstream (rfdetr 1.11.2 + supervision) not timed: {why_not_upstream}")
    root = Path(tempfile.mkdtemp(prefix="bench_video_"))
    try:
        clip = write_clip(root / "clip.mp4", args.frames)
        files, failed = export_ours(formats, root / "exported", 384)
        base = {"resolution": 384, "threads": args.threads, "warmup": args.warmup, "threshold": args.threshold,
                "clip": str(clip), "width": WIDTH, "height": HEIGHT}
        torch_cfg = {**base, "impl": "torch", "out": str(root / "torch.mp4")}
        workers = [VideoWorker("ours torch", sys.executable, torch_cfg, str(REPO), _WORKER)]
        for name, path in files.items():
            workers.append(VideoWorker(f"ours {name}", sys.executable,
                                  {**base, "impl": "exported", "path": str(path), "out": str(root / f"{name}.mp4")},
                                  str(REPO), _WORKER))
        if args.engine:
            workers += loop_workers(args, base, root)
        upstream = None
        if not why_not_upstream:
            upstream = VideoWorker("upstream torch + sv", args.upstream_python,
                              {**base, "impl": "upstream", "out": str(root / "upstream.mp4")}, None, _WORKER)
            workers.append(upstream)
        not_started = measure(workers, args.rounds, args.iters, tolerant=True)
        if upstream is not None and upstream not in workers:
            upstream = None
        print(report(workers, upstream), flush=True)
        for name, err in {**failed, **not_started}.items():
            print(f"  {name}: not timed: {err}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
