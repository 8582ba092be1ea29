"""Metric sinks for a run folder: a JSON-lines epoch log, TensorBoard and (optionally) Weights & Biases.

Only rank 0 writes: both loggers take ``enabled`` (default: :func:`rfdetr.util.distributed.is_main_process`) and
turn every call into a no-op otherwise, so training code can call them unconditionally. TensorBoard, torchvision
and wandb are imported only when used.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import torch

from rfdetr.util.distributed import is_main_process
from rfdetr.util.run_dir import to_jsonable

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
WANDB_MISSING = (
    "wandb logging was requested (--wandb) but the 'wandb' package is not installed: "
    "run `pip install wandb` (set WANDB_MODE=offline to log without an account), or drop --wandb"
)


class JsonlLogger:
    """Appends one JSON object per call (one per epoch) to ``log.jsonl``; each line is flushed as it is written.

    Args:
        path: the log file, or a run folder (then ``<folder>/log.jsonl``).
        enabled: write at all (default: only on rank 0).
    """

    def __init__(self, path: str | os.PathLike[str], enabled: bool | None = None) -> None:
        path = Path(path)
        self.path = path / LOG_FILE if path.is_dir() else path
        self.enabled = is_main_process() if enabled is None else enabled

    def log(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (tensors, numpy values and paths are converted to plain JSON)."""
        if not self.enabled:
            return
        line = json.dumps(to_jsonable(dict(record)))
        # Opening per line keeps no handle across epochs, and a crash mid-run still leaves every finished line.
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (e.g. to rebuild plots or check a resumed run)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _import_wandb() -> ModuleType:
    try:
        import wandb
    except ImportError:
        raise ImportError(WANDB_MISSING) from None
    return wandb


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    return float(value)


class RunLogger:
    """TensorBoard writer rooted at the run folder, plus an optional W&B run, behind one small API.

    Args:
        run_dir: the run folder: TensorBoard event files go to its ``tb/`` folder, W&B's files to ``wandb/``.
        tensorboard: write TensorBoard event files.
        wandb: also log to Weights & Biases; raises ``ImportError`` with install advice when wandb is missing.
        wandb_project: W&B project.
        wandb_run: W&B run name (default: the run folder name).
        wandb_mode: ``"online"``, ``"offline"`` or ``"disabled"``; ``None`` lets wandb read ``WANDB_MODE``.
        config: the resolved config recorded with the W&B run.
        enabled: write at all (default: only on rank 0).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "rtdetr-seg",
        wandb_run: str | None = None,
        wandb_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = is_main_process() if enabled is None else enabled
        self._writer: Any = None
        self._wandb: ModuleType | None = None
        self._wandb_run: Any = None
        if not self.enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        if wandb:
            self._wandb = _import_wandb()
            self._wandb_run = self._wandb.init(
                project=wandb_project,
                name=wandb_run or self.run_dir.name,
                config=to_jsonable(dict(config or {})),
                dir=str(self.run_dir),
                mode=wandb_mode,
            )
            logger.info("W&B run %s (mode %s)", self._wandb_run.name, wandb_mode or os.environ.get("WANDB_MODE"))

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "", step_metric: str = "step") -> None:
        """Log scalar ``values`` (numbers or one-element tensors; ``None`` entries are skipped) at ``step``.

        Args:
            values: tag -> value, e.g. ``{"loss": 1.2, "AP50_95": 0.31}``.
            step: x-axis value (iteration or epoch).
            prefix: prepended to every tag, e.g. ``"train/"``.
            step_metric: name under which ``step`` is also logged to W&B, whose own step counter must only
                increase; use different names (``"iteration"``, ``"epoch"``) for different x-axes.
        """
        if not self.enabled:
            return
        numbers = {f"{prefix}{k}": _scalar(v) for k, v in values.items() if v is not None}
        if self._writer is not None:
            for tag, number in numbers.items():
                self._writer.add_scalar(tag, number, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log({**numbers, step_metric: step})

    def learning_rates(self, optimizer: torch.optim.Optimizer, step: int, step_metric: str = "step") -> None:
        """Log every parameter group's current LR as ``lr/<group name>`` (``lr/group<i>`` for unnamed groups)."""
        values = {group.get("name", f"group{i}"): group["lr"] for i, group in enumerate(optimizer.param_groups)}
        self.scalars(values, step, prefix="lr/", step_metric=step_metric)

    def image_with_boxes(
        self,
        tag: str,
        image: torch.Tensor,
        boxes: torch.Tensor,
        step: int,
        labels: Sequence[str] | None = None,
        colors: str | Sequence[str] | None = None,
        step_metric: str = "step",
    ) -> None:
        """Draw ``boxes`` on ``image`` and log the result as an image.

        Args:
            tag: image tag, e.g. ``"val/predictions"``.
            image: [3, H, W] uint8, or float in [0, 1] (undo the ImageNet normalisation first).
            boxes: [N, 4] absolute xyxy pixels.
            step: x-axis value.
            labels: optional text per box.
            colors: one colour for all boxes or one per box (default: torchvision's palette).
            step_metric: see :meth:`scalars`.
        """
        if not self.enabled:
            return
        from torchvision.utils import draw_bounding_boxes

        pixels = image.detach().cpu()
        if pixels.dtype != torch.uint8:
            pixels = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)
        drawn = draw_bounding_boxes(
            pixels, boxes.detach().cpu().float(), labels=list(labels) if labels is not None else None,
            colors=colors if isinstance(colors, str) or colors is None else list(colors), width=2,
        )
        if self._writer is not None:
            self._writer.add_image(tag, drawn, global_step=step, dataformats="CHW")
        if self._wandb_run is not None and self._wandb is not None:
            self._wandb_run.log({tag: self._wandb.Image(drawn.permute(1, 2, 0).numpy()), step_metric: step})

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer and finish the W&B run (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
