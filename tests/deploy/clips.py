"""Synthetic video clips of moving shapes, and a stub predictor that finds those shapes exactly.

The stub makes the model's output a known function of the frame (a red disc is a ``circle``, a green square a
``square``, their pixels the masks), so that the video tests can check tracking, masks and the JSON Lines against
ground truth without a trained network.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rfdetr.deploy.runtime.detections import Detections
from rfdetr.deploy.runtime.timing import StageTimer, timed

WIDTH, HEIGHT, FPS = 160, 120, 10.0
CLASS_NAMES = ["circle", "square"]
FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def clip_frame(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Frame ``i`` (RGB uint8): a red disc moving right and a green square moving down, on dark grey."""
    frame = np.full((height, width, 3), 30, np.uint8)
    cv2.circle(frame, (20 + 6 * i, 40), 12, (230, 20, 20), -1)  # RGB red
    y = 10 + 4 * i
    cv2.rectangle(frame, (110, y), (134, y + 24), (20, 230, 20), -1)  # RGB green
    return frame


def write_clip(path: Path, frames: int = 12, fps: float = FPS) -> Path:
    """Write ``frames`` frames of :func:`clip_frame` with OpenCV (codec by suffix: .mp4 mp4v, .avi / .mkv MJPG)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (WIDTH, HEIGHT))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for i in range(frames):
        writer.write(cv2.cvtColor(clip_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def shape_masks(image: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class id, mask) of the red and the green shape present in an RGB frame (tolerant to codec noise)."""
    r, g, b = (image[..., c].astype(np.int16) for c in range(3))
    out = []
    for class_id, mask in ((0, (r > 140) & (g < 90) & (b < 90)), (1, (g > 140) & (r < 90) & (b < 90))):
        if mask.sum() > 20:
            out.append((class_id, mask))
    return out


class ShapeStub:
    """A predictor whose detections are the frame's shapes: the red disc (``circle``) and green square (``square``).

    It times its stages into the timer like the real models, and counts its calls.
    """

    class_names = CLASS_NAMES

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, images: Any, threshold: float = 0.5, timer: StageTimer | None = None) -> Detections:
        self.calls += 1
        with timed(timer, "preprocess"):
            image = np.asarray(images)
        with timed(timer, "forward"):
            found = shape_masks(image)
        with timed(timer, "postprocess"):
            boxes, masks = [], []
            for _, mask in found:
                ys, xs = np.nonzero(mask)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                masks.append(mask)
            ids = [c for c, _ in found]
            return Detections(
                np.array(boxes, np.float32).reshape(-1, 4), np.full(len(found), 0.9), ids,
                [CLASS_NAMES[c] for c in ids], np.array(masks).reshape(-1, *image.shape[:2]),
            )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # the tests' output is for the tests
        pass


class _HalfHandler(_QuietHandler):
    """Announces the whole file but sends only its first half, then closes: a stream that drops mid-run."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        outputfile.write(data[: len(data) // 2])


@contextmanager
def serve(folder: Path, drop_halfway: bool = False) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 in a thread; yields the base URL (``http://127.0.0.1:PORT``)."""
    handler = functools.partial(_HalfHandler if drop_halfway else _QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
