"""One training epoch and one evaluation pass, as plain functions with explicit arguments.

Shared by the three training stages: what differs between them (which parameters train, which losses, which metric)
is decided by the caller; these functions only run the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from rfdetr.data.coco_eval import CocoEvaluator
from rfdetr.data.transforms import resize_batch
from rfdetr.models.postprocess import PostProcess
from rfdetr.train.ema import ModelEMA
from rfdetr.util.distributed import is_distributed, is_main_process, reduce_dict

logger = logging.getLogger(__name__)

Targets = list[dict[str, torch.Tensor]]
# Loss terms shown in the progress bar and logged per epoch, besides the weighted total.
_LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask_ce", "loss_mask_dice", "class_error")


class NonFiniteLossError(RuntimeError):
    """Raised after too many optimizer steps in a row had a NaN or infinite loss."""


@dataclass
class StepSettings:
    """How one optimizer step is taken.

    Attributes:
        grad_accum_steps: micro-batches whose gradients are summed per optimizer step.
        clip_max_norm: global L2 gradient-norm clip (0: off).
        autocast_dtype: CUDA autocast dtype, or None for float32.
        scales: multi-scale square sizes to draw from per optimizer step (empty: no batch resize).
        max_consecutive_nonfinite: stop after this many skipped steps in a row.
    """

    grad_accum_steps: int = 1
    clip_max_norm: float = 0.1
    autocast_dtype: torch.dtype | None = None
    scales: Sequence[int] = ()
    max_consecutive_nonfinite: int = 5



def _progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, every 30 s when stderr goes to a log file (each
    refresh there is another carriage-return-joined fragment of one endless line)."""
    return 0.1 if sys.stderr.isatty() else 30.0

def to_device(images: torch.Tensor, targets: Targets, device: torch.device) -> tuple[torch.Tensor, Targets]:
    """Move a collated batch to ``device`` (non-tensor target entries stay as they are)."""
    images = images.to(device, non_blocking=True)
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _Averages:
    """Running means of scalar logs over an epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += v
            self.counts[k] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def _all_ranks_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank: a step must be skipped everywhere or nowhere (else DDP hangs)."""
    finite = torch.isfinite(loss.detach()).float()
    if is_distributed():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable[tuple[torch.Tensor, Targets]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    epoch: int,
    settings: StepSettings,
    global_step: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEMA | None = None,
    forward: Callable[[nn.Module, torch.Tensor, Targets], dict[str, Any]] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    desc: str | None = None,
    on_batch: Callable[[torch.Tensor, Targets], None] | None = None,
) -> tuple[dict[str, float], int]:
    """Train for one pass over ``loader``.

    Args:
        model: the (possibly DDP-wrapped) model in train mode; ``forward(model, images, targets)`` (default
            ``model(images)``) must return the criterion's outputs dict.
        criterion: returns a loss dict; ``criterion.total_loss(losses)`` gives the weighted sum.
        loader: yields micro-batches ``(images [B, 3, H, W], targets)``; every ``grad_accum_steps`` of them make one
            optimizer step (a trailing incomplete group is dropped, as the schedule counts whole steps).
        optimizer, scheduler: stepped once per optimizer step (the scheduler per step, not per epoch).
        device: where the batch goes.
        epoch: for the progress bar only.
        settings: accumulation, clipping, precision, multi-scale, non-finite handling.
        global_step: optimizer steps taken before this epoch; seeds the multi-scale draw so every rank, and a resumed
            run, picks the same sizes.
        scaler: fp16 GradScaler (None for float32 / bfloat16).
        ema: updated after every optimizer step.
        on_step: called with (global_step, logged values) after each optimizer step (rank 0 logging).
        progress: show a tqdm bar on the main process.
        desc: the bar's label (default ``epoch {epoch}``; :func:`rfdetr.train.fit.fit` gives ``epoch 3/50``).
        on_batch: called with each micro-batch exactly as the model receives it (after augmentation and the
            multi-scale resize), e.g. to draw the first ones (:class:`rfdetr.train.plots.RunPlots`).

    Returns:
        (epoch means of the loss terms, ``lr`` and ``skipped_steps``; the new global step).

    Raises:
        NonFiniteLossError: ``settings.max_consecutive_nonfinite`` steps in a row had a non-finite loss.
    """
    model.train()
    criterion.train()
    forward = forward or (lambda m, images, targets: m(images))
    averages = _Averages()
    accum = settings.grad_accum_steps
    steps_in_epoch = len(loader) // accum if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(total=steps_in_epoch, desc=desc or f"epoch {epoch}", disable=not (progress and is_main_process()),
               dynamic_ncols=True, leave=False, mininterval=_progress_interval())
    skipped = consecutive_bad = 0
    micro: list[tuple[torch.Tensor, Targets]] = []
    start = time.perf_counter()
    for images, targets in loader:
        micro.append((images, targets))
        if len(micro) < accum:
            continue
        batch, micro = micro, []
        size = random.Random(global_step).choice(settings.scales) if settings.scales else None
        step_logs: dict[str, float] = defaultdict(float)
        finite = True
        for i, (images, targets) in enumerate(batch):
            images, targets = to_device(images, targets, device)
            if size is not None and images.shape[-1] != size:
                images, targets = resize_batch(images, targets, size)
            if on_batch is not None:
                on_batch(images, targets)
            # Only the last micro-batch synchronises gradients across DDP ranks.
            sync = contextlib.nullcontext() if i == accum - 1 or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with _autocast(device, settings.autocast_dtype):
                    outputs = forward(model, images, targets)
                    losses = criterion(outputs, targets)
                    loss = criterion.total_loss(losses)
                if not _all_ranks_finite(loss):
                    finite = False
                    break
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            step_logs["loss"] += loss.item() / accum
            for k in _LOGGED_TERMS:
                if k in losses:
                    step_logs[k] += float(losses[k].detach()) / accum
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            consecutive_bad += 1
            logger.warning("step %d: non-finite loss, step skipped (%d in a row)", global_step, consecutive_bad)
            if consecutive_bad >= settings.max_consecutive_nonfinite:
                bar.close()
                raise NonFiniteLossError(
                    f"{consecutive_bad} optimizer steps in a row had a non-finite loss (last at step {global_step}); "
                    "lower the learning rate (--lr), check the data with validate_setup.py, or try --no_amp")
            continue
        consecutive_bad = 0
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if settings.clip_max_norm > 0:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, settings.clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        global_step += 1
        step_logs["lr"] = max(g["lr"] for g in optimizer.param_groups)
        averages.update(step_logs)
        if on_step is not None:
            on_step(global_step, dict(step_logs))
        bar.set_postfix(loss=f"{step_logs['loss']:.4f}", lr=f"{step_logs['lr']:.2e}")
        bar.update(1)
    bar.close()
    if micro:
        logger.debug("dropped %d trailing micro-batches (incomplete accumulation group)", len(micro))
    stats = averages.means()
    stats = {k: float(v) for k, v in reduce_dict({k: torch.tensor(v, device=device) for k, v in stats.items()}).items()}
    stats["skipped_steps"] = float(skipped)
    stats["epoch_time"] = time.perf_counter() - start
    return stats, global_step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module | None,
    postprocess: Callable[[dict[str, Any], torch.Tensor], list[dict[str, torch.Tensor]]],
    loader: Iterable[tuple[torch.Tensor, Targets]],
    evaluator: CocoEvaluator,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    forward: Callable[[nn.Module, torch.Tensor, Targets], dict[str, Any]] | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Run the model over ``loader`` and score it with COCOeval.

    Args:
        model: evaluated in eval mode (query group 0 only).
        criterion: optional; its eval-mode losses are averaged and returned as ``loss`` / ``loss_*``.
        postprocess: ``postprocess(outputs, orig_sizes [B, 2] (h, w))`` -> per-image dicts of ``scores``,
            ``labels``, ``boxes`` (xyxy pixels) and optionally ``masks``.
        evaluator: reset here, then fed every image and synchronised across ranks.

    Returns:
        ``{"bbox": stats, "segm": stats (if evaluated), "loss": ..., ...}`` where stats come from
        :meth:`CocoEvaluator.evaluate` (``mAP``, ``mAP50``, ``per_class_AP`` ...).
    """
    model.eval()
    if criterion is not None:
        criterion.eval()
    forward = forward or (lambda m, images, targets: m(images))
    evaluator.reset()
    averages = _Averages()
    for images, targets in tqdm(loader, desc=desc, disable=not (progress and is_main_process()), leave=False,
                                dynamic_ncols=True, mininterval=_progress_interval()):
        images, targets = to_device(images, targets, device)
        with _autocast(device, autocast_dtype):
            outputs = forward(model, images, targets)
            if criterion is not None:
                losses = criterion(outputs, targets)
                logs = {"loss": float(criterion.total_loss(losses))}
                logs.update({k: float(losses[k]) for k in _LOGGED_TERMS if k in losses})
                averages.update(logs)
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
        orig_sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        if isinstance(postprocess, PostProcess):
            # Only detections that can change a COCO number get a mask: the full-size paste and its RLE encoding
            # are most of an evaluation's time, and the others (the spare "background" logit, categories without
            # ground truth, beyond maxDets) score nothing.
            results = postprocess(outputs, orig_sizes, keep=evaluator.scorable, column_major_masks=True)
        else:
            results = postprocess(outputs, orig_sizes)
            # The head's spare last logit ("background") is not a class: its detections are not scored.
            num_labels = len(evaluator.label_to_category_id)
            results = [{k: v[r["labels"] < num_labels] for k, v in r.items()} for r in results]
        results = [{k: v.cpu() for k, v in r.items()} for r in results]  # no copy on the CPU
        evaluator.update({int(t["image_id"]): r for t, r in zip(targets, results, strict=True)})
    evaluator.synchronize()
    metrics: dict[str, Any] = dict(evaluator.evaluate()) if is_main_process() else {}
    losses_mean = averages.means()
    if losses_mean:
        reduced = reduce_dict({k: torch.tensor(v, device=device) for k, v in losses_mean.items()})
        metrics.update({k: float(v) for k, v in reduced.items()})
    return metrics


def primary_metric(metrics: dict[str, Any], iou_type: str) -> float:
    """AP50:95 of ``iou_type`` (``bbox`` or ``segm``), 0 when missing or NaN (e.g. an empty validation set)."""
    value = metrics.get(iou_type, {}).get("mAP", 0.0)
    return 0.0 if value is None or math.isnan(value) else float(value)
