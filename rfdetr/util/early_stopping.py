"""Early stopping on validation AP50:95 (spec ``rfdetr_training.md`` 2.9), resumable through ``state_dict``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def select_metric(raw: float | None, ema: float | None, use_ema: bool = False) -> float:
    """The value early stopping watches: EMA's if ``use_ema``, else the better of raw and EMA, else whichever exists.

    Args:
        raw: AP50:95 of the trained weights (box AP for detection, mask AP for segmentation), or ``None``.
        ema: the same for the EMA weights, or ``None`` when EMA is off.
        use_ema: watch the EMA model only (when it exists).
    """
    if raw is None and ema is None:
        raise ValueError("early stopping needs at least one of the raw and EMA metrics")
    if raw is None:
        return float(ema)  # type: ignore[arg-type]
    if ema is None:
        return float(raw)
    return float(ema) if use_ema else max(float(raw), float(ema))


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement larger than ``min_delta``.

    As in RF-DETR, the best value starts at 0 (AP is never negative) and an evaluation improves iff
    ``value > best + min_delta``; the run should stop once the counter reaches ``patience``. The counter counts
    epochs, not evaluations: when the model is evaluated only every few epochs (``--eval_interval``), an evaluation
    without improvement adds the epochs since the previous evaluation, so ``patience`` keeps its meaning (with an
    interval of 5 and a patience of 10, the run stops at the second evaluation in a row without a gain).

    Args:
        patience: epochs without improvement tolerated.
        min_delta: smallest gain that counts as an improvement.
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.001) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience = patience
        self.min_delta = min_delta
        self.best = 0.0
        self.best_epoch: int | None = None
        self.counter = 0
        # Epoch of the previous update (-1: none yet, so the first evaluation covers epochs 0..epoch). None: unknown
        # (a state saved before this field existed, or updates without epochs): each update then counts one epoch.
        self.last_epoch: int | None = -1

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience

    def update(self, value: float, epoch: int | None = None) -> bool:
        """Record an evaluation's metric.

        Args:
            value: the watched metric (see :func:`select_metric`).
            epoch: the epoch it was measured after, kept as ``best_epoch`` on improvement; without it every update
                counts as one epoch.

        Returns:
            True when training should stop after this epoch.
        """
        elapsed = 1 if epoch is None or self.last_epoch is None else max(1, epoch - self.last_epoch)
        self.last_epoch = epoch
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.counter = float(value), epoch, 0
        else:
            self.counter += elapsed
            logger.info("no AP improvement over %.4f for %d/%d epoch(s)", self.best, self.counter, self.patience)
        return self.should_stop

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "counter": self.counter,
                "last_epoch": self.last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]
        self.counter = int(state["counter"])
        self.last_epoch = state.get("last_epoch")
