"""What ``--source`` names, and frames read from videos, cameras and streams with OpenCV.

A source is an image file, a video file (:data:`VIDEO_SUFFIXES`), a folder (its images and videos, not recursive),
a glob, a camera index (``0``) or a stream URL (``rtsp://``, ``rtmp://``, ``http://``, ``https://``).
:func:`collect_sources` sorts them into images (predicted by :mod:`rfdetr.deploy.media.predict`) and videos
(:class:`VideoSource`, read frame by frame by :class:`VideoReader`).

A live source (a camera, or an rtsp / rtmp / udp stream) is read in a thread that keeps only the newest frame, so that
a model slower than the source always sees the present instead of a backlog that grows without end (Ultralytics does
the same); ``live=False`` reads every frame instead.

Reading never raises mid-run: a file that ends before the frame count its header promises is reported as truncated
(:attr:`VideoReader.truncated`), and a stream or camera that stops ends the iteration like the end of a file.
Only a source that cannot be opened, or that yields no frame at all, is an error (:class:`SourceError`).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rfdetr.deploy.media.predict import IMAGE_SUFFIXES

__all__ = ["STREAM_SCHEMES", "VIDEO_SUFFIXES", "Frame", "SourceError", "VideoReader", "VideoSource", "collect_sources"]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
STREAM_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
# Schemes that only ever carry live video (http(s) often serves a file, which is read frame by frame instead).
LIVE_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "rtmp", "udp", "tcp")
# Cameras and many streams report no frame rate (0) or nonsense (1000); the writer then needs one anyway.
DEFAULT_FPS = 30.0
# How long FFmpeg may wait for a stream to connect or deliver a frame before the read counts as a drop.
STREAM_TIMEOUT_MS = 10_000


class SourceError(ValueError):
    """A source that cannot be opened or yields no frame (a user error: the command exits with code 2)."""


@dataclass(frozen=True)
class VideoSource:
    """A video file, camera or stream.

    Attributes:
        uri: what OpenCV opens: a file path, a URL, or a camera index as a string.
        kind: ``"file"``, ``"camera"`` or ``"stream"``.
    """

    uri: str
    kind: str

    @property
    def name(self) -> str:
        """A file-name stem for its outputs: the file's stem, ``camera0``, or the stream's last path part."""
        if self.kind == "file":
            return Path(self.uri).stem
        if self.kind == "camera":
            return f"camera{self.uri}"
        tail = re.sub(r"[?#].*$", "", self.uri).rstrip("/").rsplit("/", 1)[-1]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(tail).stem).strip("._") or "stream"
        return stem

    @property
    def is_live(self) -> bool:
        """A camera or a live-only stream (rtsp, rtmp, udp, tcp): frames arrive in real time whether read or not."""
        return self.kind == "camera" or (self.kind == "stream" and self.uri.split("://", 1)[0].lower() in LIVE_SCHEMES)

    def describe(self) -> str:
        """``video file 'a.mp4'``, ``camera 0`` or ``stream 'rtsp://...'``, for messages."""
        if self.kind == "camera":
            return f"camera {self.uri}"
        return f"{'video file' if self.kind == 'file' else 'stream'} {self.uri!r}"


@dataclass(frozen=True)
class Frame:
    """One frame read from a video source.

    Attributes:
        index: 0-based position in the source (counting skipped frames).
        timestamp: seconds from the start (the container's time when it has one, else ``index / fps``).
        image: RGB uint8 [H, W, 3].
    """

    index: int
    timestamp: float
    image: np.ndarray


def _is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def collect_sources(source: str | os.PathLike[str]) -> tuple[list[Path], list[VideoSource]]:
    """The images and videos a ``--source`` names.

    Args:
        source: an image or video file, a folder (images and videos in it, sorted, not recursive), a glob (matching
            files, ``**`` recurses; video suffixes are videos, everything else is tried as an image), a camera index
            (``"0"``) or a stream URL.

    Returns:
        (image files, video sources), each sorted.

    Raises:
        FileNotFoundError: nothing exists at ``source``, it is no camera index or URL, and it matches no file.
    """
    text = os.fspath(source).strip()
    if text.isdigit():
        return [], [VideoSource(text, "camera")]
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in STREAM_SCHEMES:
        return [], [VideoSource(text, "stream")]
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        return images, [VideoSource(str(p), "file") for p in files if _is_video_file(p)]
    if path.is_file():
        return ([], [VideoSource(str(path), "file")]) if _is_video_file(path) else ([path], [])
    if glob.has_magic(text):
        files = [p for p in sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)) if p.is_file()]
        if files:
            return [p for p in files if not _is_video_file(p)], [VideoSource(str(p), "file") for p in files
                                                                  if _is_video_file(p)]
    raise FileNotFoundError(
        f"--source {text!r}: no such image, video or folder, no camera index or stream URL (rtsp://, http://, ...), "
        "and no file matches it as a glob"
    )


class VideoReader:
    """Frames of a :class:`VideoSource`, read with ``cv2.VideoCapture`` (use as a context manager).

    Args:
        source: what to read.
        stride: yield every ``stride``-th frame (the others are grabbed, not decoded into RGB).
        max_frames: stop after yielding this many frames (``None``: all).
        timeout_ms: for streams, the connect and read timeout.
        live: keep only the newest frame, read in a thread (frames the caller was too slow for are dropped); default:
            for live sources (:attr:`VideoSource.is_live`).

    Attributes:
        width / height / fps: the frames' size and the source's frame rate (:data:`DEFAULT_FPS` when it has none).
        frame_count: frames the container announces (``None`` for cameras, streams and files that do not say).
        frames_read: frames read from the source so far (yielded, skipped by the stride, or dropped when live).
        truncated: the file ended before ``frame_count`` frames (set once the iteration is over).

    Raises:
        SourceError: the source cannot be opened, or its first frame cannot be read.
    """

    def __init__(self, source: VideoSource, stride: int = 1, max_frames: int | None = None,
                 timeout_ms: int = STREAM_TIMEOUT_MS, live: bool | None = None) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.source, self.stride, self.max_frames = source, stride, max_frames
        self.live = source.is_live if live is None else live
        self.timeout_ms = timeout_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_read = 0
        self.truncated = False
        self.capture = self._open(timeout_ms)
        self._first = self._read_first()
        self.height, self.width = self._first.shape[:2]
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and 0 < fps <= 240 else DEFAULT_FPS
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if source.kind == "file" else 0
        self.frame_count: int | None = count if count > 0 else None

    def _open(self, timeout_ms: int) -> cv2.VideoCapture:
        what = self.source.describe()
        if self.source.kind == "file" and not Path(self.source.uri).is_file():
            raise SourceError(f"{what}: no such file")
        # OpenCV prints its own warnings for every failed open; the message below says it once, in our words.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            if self.source.kind == "camera":
                capture = cv2.VideoCapture(int(self.source.uri))
            elif self.source.kind == "stream":
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
                capture = cv2.VideoCapture(self.source.uri, cv2.CAP_FFMPEG, params)
            else:
                capture = cv2.VideoCapture(self.source.uri)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not capture.isOpened():
            capture.release()
            hint = {
                "camera": "no such camera, or it is in use",
                "stream": "it cannot be reached, or it is not a video stream",
                "file": "not a video OpenCV can decode, or a damaged file",
            }[self.source.kind]
            raise SourceError(f"cannot open {what}: {hint}")
        return capture

    def _read_first(self) -> np.ndarray:
        ok, bgr = self.capture.read()
        if not ok or bgr is None:
            self.capture.release()
            raise SourceError(f"{self.source.describe()}: opened, but no frame could be read from it")
        self.frames_read = 1
        return bgr

    def __iter__(self) -> Iterator[Frame]:
        """Yield frames 0, stride, 2 * stride, ... until the source ends or ``max_frames`` are yielded (live: the
        newest frame at least ``stride`` frames after the previous one)."""
        if self.live:
            yield from self._iter_live()
            return
        yielded, index, bgr = 0, 0, self._first
        while self.max_frames is None or yielded < self.max_frames:
            if bgr is None:
                if index % self.stride:
                    ok = self.capture.grab()  # skipped by the stride: no colour conversion, no copy
                else:
                    ok, bgr = self.capture.read()
                    ok = ok and bgr is not None
                if not ok:
                    break
                self.frames_read += 1
            if index % self.stride == 0:
                timestamp = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.source.kind == "file" else 0.0
                if self.source.kind != "file" or timestamp <= 0.0 and index > 0:
                    timestamp = index / self.fps
                yield Frame(index, timestamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                yielded += 1
            bgr, index = None, index + 1
        else:
            return
        # The loop broke on a failed read: the source ended (or dropped).
        if self.frame_count is not None and self.frames_read < self.frame_count:
            self.truncated = True

    def _iter_live(self) -> Iterator[Frame]:
        cond = threading.Condition()
        latest: dict[str, Any] = {"index": 0, "bgr": self._first, "ended": False}

        def pump() -> None:
            # The only reader of the capture while it runs; close() waits for it before releasing the capture.
            index = 0
            while not self._stop.is_set():
                ok, bgr = self.capture.read()
                if not ok or bgr is None:
                    break
                index += 1
                with cond:
                    latest["index"], latest["bgr"] = index, bgr
                    self.frames_read = index + 1
                    cond.notify_all()
            with cond:
                latest["ended"] = True
                cond.notify_all()

        self._thread = threading.Thread(target=pump, name=f"read {self.source.describe()}", daemon=True)
        self._thread.start()
        yielded, last = 0, -self.stride
        while self.max_frames is None or yielded < self.max_frames:
            wanted = last + self.stride
            with cond:
                cond.wait_for(lambda: latest["index"] >= wanted or latest["ended"])  # noqa: B023 - called right here
                if latest["index"] < wanted:
                    return  # the source ended (or dropped) with no newer frame
                index, bgr = latest["index"], latest["bgr"]
            yield Frame(index, index / self.fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            yielded, last = yielded + 1, index

    def close(self) -> None:
        """Stop the reading thread (live sources) and release the capture."""
        self._stop.set()
        if self._thread is not None:
            # A read blocks at most for the stream's read timeout; releasing the capture under it could crash.
            self._thread.join(timeout=self.timeout_ms / 1000 + 1)
        self.capture.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
