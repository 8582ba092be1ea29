"""Predict on videos, cameras and streams: an annotated video, a JSON Lines file and a summary per source.

For each :class:`~rfdetr.deploy.media.sources.VideoSource`, :func:`predict_video` writes to the output folder:

* ``<name>.mp4``: every processed frame, drawn (:func:`~rfdetr.deploy.media.visualize.render_detections`: masks, boxes,
  ``#track name score`` labels) at the source's size and at its frame rate divided by the stride;
* ``<name>.jsonl``: one line per processed frame, ``{"frame", "time", "detections": [{"class_id", "class_name",
  "score", "box" (x1, y1, x2, y2 pixels), "mask" (COCO compressed RLE), "track_id"}]}`` (``track_id`` with
  ``track``: ``null`` until the tracker confirms the object's track, on its second frame);
* ``<name>.summary.json``: frames read and processed, detections, the frame rate, and the average milliseconds per
  frame of each stage (read, preprocess, forward, postprocess, track, draw, write);
* with ``save_frames``, ``<name>_frames/<frame index>.png``.

The video and the JSON Lines are written to temporary files and moved into place when the source ends, drops, or the
run is interrupted (Ctrl-C), so a file under its final name is always complete.

With ``overlap`` the stages around the model run beside it, in two threads: the next frame of a file is decoded
while the model runs on this one (live sources are already read in their own thread), and each processed frame is
drawn and written while the model runs on the next. The outputs are the same frames in the same order; the summary's
``speed_ms`` then times each stage in its own thread, so the stages add up to more than the time per frame. By default
(``overlap=None``) it is on where the forward leaves the CPU free, a model on a GPU, and off on a CPU: measured on 2
cores (Zen 4, ``bench/bench_video.py`` and the demo model) it gained nothing, because the forward already keeps both
cores busy and the drawing holds the GIL for part of its time (nano INT8 OpenVINO 70.7 ms per frame with overlap, 69.2
without; the demo model, 2.5 drawn masks per frame, 17.9 / 18.5 ms in PyTorch, 17.0 / 16.9 ms in OpenVINO).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from rfdetr.data.masks import encode_masks
from rfdetr.deploy.media.predict import Predictor
from rfdetr.deploy.media.sources import Frame, SourceError, VideoReader, VideoSource
from rfdetr.deploy.media.visualize import render_detections
from rfdetr.deploy.runtime.detections import Detections
from rfdetr.deploy.runtime.timing import StageTimer
from rfdetr.util.atomic import atomic_path
from rfdetr.util.run_dir import write_json_atomic

__all__ = ["Display", "VideoSummary", "frame_record", "predict_video", "predict_videos"]

logger = logging.getLogger(__name__)


@dataclass
class VideoSummary:
    """What one video source gave (also written as ``<name>.summary.json``).

    Attributes:
        source / kind: the source as given and ``file`` / ``camera`` / ``stream``.
        video / jsonl / frames_dir: the files written (``frames_dir`` only with ``save_frames``).
        width / height / fps: the frames' size and the output video's frame rate.
        live: read in a thread that keeps the newest frame (frames the model was too slow for are dropped).
        frames_read: frames read from the source (processed or skipped by the stride).
        frames_processed: frames predicted, drawn and written.
        detections: detections written over all frames.
        ended: why reading stopped: ``end`` (of the file), ``max_frames``, ``truncated`` (the file ended before the
            frame count its header announces), ``stopped`` (a camera or stream gave no more frames), ``quit`` (the
            window was closed with q / Esc), ``interrupted`` (Ctrl-C).
        seconds: wall time of the loop; ``fps_processed`` processed frames per second of it.
        speed_ms: average milliseconds per processed frame of each stage.
    """

    source: str
    kind: str
    video: str
    jsonl: str
    frames_dir: str | None
    width: int
    height: int
    fps: float
    live: bool = False
    frames_read: int = 0
    frames_processed: int = 0
    detections: int = 0
    ended: str = "end"
    seconds: float = 0.0
    fps_processed: float = 0.0
    speed_ms: dict[str, float] = field(default_factory=dict)
    speed_line: str = ""


def _no_display_reason() -> str | None:
    """Why no window can be shown here, or ``None`` when one may be."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return None


class Display:
    """The ``--show`` window: frames in an OpenCV window, q or Esc to stop.

    Where no window can be opened (no display, or an OpenCV built without a GUI such as opencv-python-headless) it
    says so once, in a warning, and shows nothing; the run goes on.

    Args:
        enabled: whether to show at all.
    """

    TITLE = "rfdetr.predict (q to quit)"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._opened = False
        reason = _no_display_reason() if enabled else None
        if reason:
            self._disable(reason)

    def _disable(self, reason: str) -> None:
        logger.warning("--show: %s; frames are not shown (the video and JSON Lines are still written)", reason)
        self.enabled = False

    def show(self, rgb: np.ndarray) -> bool:
        """Show a frame; ``False`` when the user asked to stop (q or Esc)."""
        if not self.enabled:
            return True
        try:
            cv2.imshow(self.TITLE, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self._opened = True
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as err:
            if "not implemented" in str(err):
                self._disable("this OpenCV has no GUI (opencv-python-headless; pip install opencv-python for windows)")
            else:
                self._disable(f"OpenCV cannot open a window ({str(err).strip()[:200]})")
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        """Close the window if one was opened."""
        if self._opened:
            cv2.destroyWindow(self.TITLE)
            self._opened = False


class _AtomicFile:
    """A file written under a temporary name beside ``path`` and moved onto it by :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._atomic = contextlib.ExitStack()
        # atomic_path keeps the real suffix last: OpenCV picks the container from it.
        self.tmp = self._atomic.enter_context(atomic_path(path))

    def _commit(self) -> None:
        self._atomic.close()


class _VideoFile(_AtomicFile):
    """An MP4 (``mp4v``) written with ``cv2.VideoWriter``; frames of another size are resized to the first's."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        super().__init__(path)
        self.size = (width, height)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, self.size)
        if not self.writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write an MP4 video to {self.tmp} (its FFmpeg backend is missing?)")

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()  # writes the MP4 index; without it the file is unreadable
        self._commit()


class _LinesFile(_AtomicFile):
    """A JSON Lines file, flushed after every line so that a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.file: IO[str] = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        self._commit()


def frame_record(index: int, timestamp: float, detections: Detections) -> dict[str, Any]:
    """The JSON Lines record of one frame (see the module docstring)."""
    entries = []
    rles = encode_masks(detections.mask) if detections.mask is not None and len(detections) else []
    for i in range(len(detections)):
        entry: dict[str, Any] = {
            "class_id": int(detections.class_id[i]),
            "class_name": detections.class_name[i] if detections.class_name else str(int(detections.class_id[i])),
            "score": round(float(detections.confidence[i]), 5),
            "box": [round(float(v), 2) for v in detections.xyxy[i]],
        }
        if detections.mask is not None:
            entry["mask"] = rles[i]
        if detections.tracker_id is not None:
            track_id = int(detections.tracker_id[i])
            entry["track_id"] = track_id if track_id >= 0 else None
        entries.append(entry)
    return {"frame": index, "time": round(timestamp, 4), "detections": entries}


def _unique_name(name: str, used: set[str]) -> str:
    out, n = name, 0
    while out in used:
        n += 1
        out = f"{name}_{n}"
    used.add(out)
    return out


def predict_video(
    model: Predictor,
    source: VideoSource,
    output: str | os.PathLike[str],
    threshold: float = 0.5,
    stride: int = 1,
    max_frames: int | None = None,
    track: bool = False,
    display: Display | None = None,
    save_frames: bool = False,
    progress: bool = True,
    name: str | None = None,
    buffer: bool = False,
    overlap: bool | None = None,
) -> VideoSummary:
    """Predict every ``stride``-th frame of one source and write its video, JSON Lines and summary.

    Args:
        model: anything with ``predict(image, threshold, timer=...)`` (:class:`rfdetr.detr.RFDETR`,
            :class:`rfdetr.deploy.runtime.runner.ExportedModel`).
        source: the video file, camera or stream.
        output: folder for the outputs (created).
        threshold: keep detections with score > threshold.
        stride: process every ``stride``-th frame.
        max_frames: stop after processing this many frames.
        track: give detections track ids (:class:`rfdetr.deploy.media.track.Tracker`).
        display: where to show frames (``None``: nowhere).
        save_frames: also write every processed frame as a PNG.
        progress: show a progress bar.
        name: stem of the output files (default: the source's name).
        buffer: for a live source (camera, rtsp ...), process every frame even when slower than the source; by
            default a live source is read in a thread and only its newest frame is processed.
        overlap: read the next frame and draw / write the previous one in threads beside the model (see the module
            docstring); ``False`` runs every stage in turn; ``None``: on for a model on a GPU, off on a CPU. Shown
            frames (``display``) are drawn in this thread.

    Returns:
        A :class:`VideoSummary`.

    Raises:
        SourceError: the source cannot be opened or gives no frame.
        ImportError: ``track`` without the tracking packages.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    name = name or source.name
    tracker = None
    if track:
        from rfdetr.deploy.media.track import Tracker, require_tracking

        require_tracking()  # before opening a camera or stream for nothing
    reader = VideoReader(source, stride=stride, max_frames=max_frames, live=False if buffer else None)
    fps = reader.fps / stride
    if track:
        tracker = Tracker(fps, threshold)
    frames_dir = out / f"{name}_frames" if save_frames else None
    summary = VideoSummary(
        source=source.uri, kind=source.kind, video=str(out / f"{name}.mp4"), jsonl=str(out / f"{name}.jsonl"),
        frames_dir=None if frames_dir is None else str(frames_dir), width=reader.width, height=reader.height, fps=fps,
        live=reader.live,
    )
    if frames_dir is not None:
        frames_dir.mkdir(exist_ok=True)
    total = None
    if reader.frame_count is not None:
        total = math.ceil(reader.frame_count / stride)
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)
    timer = StageTimer()
    video = _VideoFile(Path(summary.video), fps, reader.width, reader.height)
    lines = _LinesFile(Path(summary.jsonl))
    bar = tqdm(total=total, desc=name, unit="frame", disable=not progress)
    showing = display is not None and display.enabled

    def draw(frame: Frame, detections: Detections) -> np.ndarray:
        with timer.stage("draw"):
            return render_detections(frame.image, detections)

    failed = threading.Event()

    def write(frame: Frame, detections: Detections, picture: np.ndarray | None) -> None:
        if failed.is_set():
            return  # after a failed write no later frame is written: the files end at the last complete frame
        try:
            if picture is None:
                picture = draw(frame, detections)
            with timer.stage("write"):
                video.write(picture)
                lines.write(frame_record(frame.index, frame.timestamp, detections))
                if frames_dir is not None:
                    cv2.imwrite(str(frames_dir / f"{frame.index:06d}.png"),
                                cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        except BaseException:
            failed.set()
            raise

    if overlap is None:
        device = getattr(model, "device", None)
        overlap = device is not None and torch.device(device).type == "cuda"
    # One thread each: frames are read and written in order. A live reader has its own thread already.
    reading = ThreadPoolExecutor(1, "rfdetr-read") if overlap and not reader.live else None
    writing = ThreadPoolExecutor(1, "rfdetr-write") if overlap else None
    written: deque[Future[None]] = deque()
    start = time.perf_counter()
    try:
        frames = iter(reader)

        def read() -> Frame | None:
            with timer.stage("read"):
                return next(frames, None)

        ahead = reading.submit(read) if reading is not None else None
        while True:
            if ahead is not None and reading is not None:
                frame = ahead.result()
                ahead = reading.submit(read) if frame is not None else None
            else:
                frame = read()
            if frame is None:
                break
            detections = model.predict(frame.image, threshold=threshold, timer=timer)
            assert isinstance(detections, Detections)
            if tracker is not None:
                with timer.stage("track"):
                    detections = tracker.update(detections)
            picture = draw(frame, detections) if showing or writing is None else None
            if writing is not None:
                written.append(writing.submit(write, frame, detections, picture))
                # At most two frames wait to be written (memory stays flat when writing is the slow lane); a
                # failed write stops the loop here with its own error.
                while len(written) > 2 or written and written[0].done():
                    written.popleft().result()
            else:
                write(frame, detections, picture)
            summary.frames_processed += 1
            summary.detections += len(detections)
            bar.update()
            if showing and picture is not None and display is not None and not display.show(picture):
                summary.ended = "quit"
                break
    except KeyboardInterrupt:
        summary.ended = "interrupted"
    finally:
        bar.close()
        # Frames already handed to the writer are written before the files are closed.
        if writing is not None:
            writing.shutdown(wait=True)
        if reading is not None:
            reading.shutdown(wait=True, cancel_futures=True)
        reader.close()
        # Whatever ended the loop, the files written so far become complete files under their final names.
        video.close()
        lines.close()
    for future in written:
        future.result()  # a write that failed after the last check raises here
    summary.seconds = time.perf_counter() - start
    summary.frames_read = reader.frames_read
    if summary.ended == "end":
        if max_frames is not None and summary.frames_processed >= max_frames:
            summary.ended = "max_frames"
        elif reader.truncated:
            summary.ended = "truncated"
        elif source.kind != "file":
            summary.ended = "stopped"
    summary.fps_processed = summary.frames_processed / summary.seconds if summary.seconds > 0 else 0.0
    summary.speed_ms = {k: round(v, 3) for k, v in timer.mean_ms(per=max(1, summary.frames_processed)).items()}
    summary.speed_line = timer.speed_line(reader.width, reader.height, per=max(1, summary.frames_processed))
    _log_end(source, summary, reader.frame_count)
    write_json_atomic(out / f"{name}.summary.json", asdict(summary))
    return summary


def _log_end(source: VideoSource, summary: VideoSummary, frame_count: int | None) -> None:
    """Say, in one warning, when a source ended other than by its normal end or ``max_frames``."""
    what, n = source.describe(), summary.frames_read
    if summary.ended == "truncated":
        logger.warning("%s ended after %d of the %d frames its header announces (truncated or damaged file); "
                       "%d frames processed and written", what, n, frame_count, summary.frames_processed)
    elif summary.ended == "stopped":
        logger.warning("%s stopped delivering frames after %d frames (ended or dropped); the %d processed frames "
                       "are written", what, n, summary.frames_processed)
    elif summary.ended == "interrupted":
        logger.warning("interrupted after %d frames of %s; the %d processed frames are written", n, what,
                       summary.frames_processed)


def predict_videos(
    model: Predictor,
    sources: list[VideoSource],
    output: str | os.PathLike[str],
    used_names: set[str] | None = None,
    show: bool = False,
    **options: Any,
) -> list[VideoSummary]:
    """:func:`predict_video` on each source; one that cannot be opened is skipped (and logged) when there are others.

    Args:
        model / output / options: as :func:`predict_video` (``threshold``, ``stride``, ``max_frames``, ``track``,
            ``save_frames``, ``progress``).
        sources: the video sources.
        used_names: output stems already taken (names are made unique: ``clip``, ``clip_1`` ...).
        show: show the frames in a window (a missing display is reported once for the whole run).

    Returns:
        The summaries of the sources that could be read; the run stops after one that was interrupted.

    Raises:
        SourceError: no source could be read (the message names them).
    """
    used = set() if used_names is None else used_names
    display = Display(show)
    summaries: list[VideoSummary] = []
    failures: list[str] = []
    try:
        for source in sources:
            name = _unique_name(source.name, used)
            if source.kind == "file" and (Path(output) / f"{name}.mp4").resolve() == Path(source.uri).resolve():
                name = _unique_name(f"{name}_pred", used)  # never write over the source video
            try:
                summary = predict_video(model, source, output, display=display, name=name, **options)
            except SourceError as err:
                if len(sources) == 1:
                    raise
                logger.warning("skipping %s", err)
                failures.append(str(err))
                continue
            summaries.append(summary)
            if summary.ended in ("interrupted", "quit"):
                break
    finally:
        display.close()
    if not summaries:
        raise SourceError(f"none of the {len(sources)} video sources could be read: " + "; ".join(failures))
    return summaries
