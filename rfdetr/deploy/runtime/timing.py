"""Per-stage wall-clock timing of a prediction loop (read, preprocess, forward, postprocess, track, draw, write).

``predict(..., timer=timer)`` of :class:`rfdetr.detr.RFDETR` and :class:`rfdetr.deploy.runtime.runner.ExportedModel`
times its own preprocess, forward and postprocess stages into a :class:`StageTimer`; the video loop adds the stages
around them. Without a timer the pipeline pays nothing but a ``nullcontext``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

__all__ = ["PIPELINE_STAGES", "StageTimer", "timed"]

# The order the speed line prints them in; stages never timed are left out of it.
PIPELINE_STAGES: tuple[str, ...] = ("read", "preprocess", "forward", "postprocess", "track", "draw", "write")


class StageTimer:
    """Total milliseconds and call count per named stage.

    CUDA work is asynchronous, so a stage on a CUDA device synchronises before its clock stops; otherwise the time
    of the forward would be billed to whichever later stage first waits for the GPU.
    """

    def __init__(self) -> None:
        self.total_ms: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()  # the video loop times its stages from several threads

    @contextmanager
    def stage(self, name: str, device: torch.device | str | None = None) -> Iterator[None]:
        """Time the ``with`` block as one call of stage ``name`` (on ``device``: synchronised when CUDA)."""
        cuda = device is not None and torch.device(device).type == "cuda"
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(device)
            self.add(name, (time.perf_counter() - start) * 1000.0)

    def add(self, name: str, ms: float) -> None:
        """Record one call of ``name`` that took ``ms`` milliseconds."""
        with self._lock:
            self.total_ms[name] = self.total_ms.get(name, 0.0) + ms
            self.calls[name] = self.calls.get(name, 0) + 1

    def mean_ms(self, per: int | None = None) -> dict[str, float]:
        """Average milliseconds per stage, known stages first in :data:`PIPELINE_STAGES` order.

        Args:
            per: divide every total by this count (e.g. processed frames); default: by each stage's own calls.
        """
        names = [n for n in PIPELINE_STAGES if n in self.total_ms] + sorted(set(self.total_ms) - set(PIPELINE_STAGES))
        return {n: self.total_ms[n] / max(1, per if per is not None else self.calls[n]) for n in names}

    def speed_line(self, width: int, height: int, per: int | None = None) -> str:
        """``Speed: 1.2ms read, 3.4ms preprocess, ... per frame at 640x480`` (as Ultralytics prints it)."""
        parts = ", ".join(f"{ms:.1f}ms {name}" for name, ms in self.mean_ms(per).items())
        return f"Speed: {parts} per frame at {width}x{height}"


def timed(timer: StageTimer | None, name: str, device: torch.device | str | None = None) -> AbstractContextManager:
    """``timer.stage(name, device)``, or a no-op context when there is no timer."""
    return nullcontext() if timer is None else timer.stage(name, device)
