"""What a training run reports each epoch: the ``log.jsonl`` line, TensorBoard / W&B scalars, validation pictures."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.util.loggers import JsonlLogger, RunLogger

__all__ = ["EpochReport"]

# Validation pictures logged per epoch, and the score from which a box is drawn on them.
_LOGGED_IMAGES, _DRAW_THRESHOLD = 4, 0.3


def _denormalize(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] ImageNet-normalised -> float in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (image * std + mean).clamp(0, 1)


class EpochReport:
    """The run's loggers and what each epoch writes to them (only the main process writes).

    Args:
        job: the :class:`~rfdetr.train.fit.TrainingJob` (validation set, post-processing, class names, forward).
        jsonl: the ``log.jsonl`` writer.
        run_logger: TensorBoard / W&B.
        draw: whether validation pictures are logged (TensorBoard or W&B is on).
        device: where the model runs.
        enabled: this is the main process.
    """

    def __init__(self, job: Any, jsonl: JsonlLogger, run_logger: RunLogger, draw: bool, device: torch.device,
                 enabled: bool) -> None:
        self.job, self.jsonl, self.run_logger = job, jsonl, run_logger
        self.draw, self.device, self.enabled = draw, device, enabled

    def record(self, epoch: int, step: int, best: dict[str, Any], train_stats: dict[str, float],
               metrics: dict[str, Any], ema_metrics: dict[str, Any] | None, evaluated: bool = True) -> dict[str, Any]:
        """The epoch's ``log.jsonl`` line (written here) and the dict :func:`fit` returns for the last epoch.

        ``evaluated`` is False for an epoch that ``--eval_interval`` skipped: its line has the training entries only.
        """
        record: dict[str, Any] = {"epoch": epoch, "step": step, "evaluated": evaluated}
        record.update({f"train_{k}": v for k, v in train_stats.items()})
        for prefix, m in (("val", metrics), ("ema_val", ema_metrics)):
            if not m:
                continue
            for iou_type in ("bbox", "segm"):
                if iou_type in m:
                    record[f"{prefix}_{iou_type}_mAP"] = m[iou_type]["mAP"]
                    record[f"{prefix}_{iou_type}_mAP50"] = m[iou_type]["mAP50"]
                    record[f"{prefix}_{iou_type}_per_class_AP"] = m[iou_type]["per_class_AP"]
            record.update({f"{prefix}_{k}": v for k, v in m.items() if isinstance(v, float)})
        record["best"] = dict(best)
        self.jsonl.log(record)
        return record

    def scalars(self, epoch: int, optimizer: torch.optim.Optimizer, train_stats: dict[str, float],
                metrics: dict[str, Any], ema_metrics: dict[str, Any] | None) -> None:
        """The epoch's losses, learning rates and mAPs for TensorBoard / W&B."""
        self.run_logger.scalars(train_stats, epoch, prefix="train/")
        self.run_logger.learning_rates(optimizer, epoch)
        for prefix, m in (("val", metrics), ("ema_val", ema_metrics)):
            if not m:
                continue
            scalars = {k: v for k, v in m.items() if isinstance(v, float)}
            for iou_type in ("bbox", "segm"):
                if iou_type in m:
                    scalars[f"{iou_type}_mAP50_95"] = m[iou_type]["mAP"]
                    scalars[f"{iou_type}_mAP50"] = m[iou_type]["mAP50"]
            self.run_logger.scalars(scalars, epoch, prefix=f"{prefix}/")
        self.run_logger.flush()

    def pictures(self, model: nn.Module, epoch: int) -> None:
        """A few validation images with the predicted boxes, for TensorBoard / W&B."""
        if not self.enabled or not self.draw:
            return
        model.eval()
        count = min(_LOGGED_IMAGES, len(self.job.val_set))
        for i in range(count):
            image, target = self.job.val_set[i]
            with torch.no_grad():
                images = image[None].to(self.device)
                forward = self.job.forward or (lambda m, x, t: m(x))
                # Only boxes are drawn: without "pred_masks" the post-processing skips the mask upsampling.
                outputs = {k: v for k, v in forward(model, images, [target]).items() if k != "pred_masks"}
                h, w = image.shape[-2:]
                det = self.job.postprocess(outputs, torch.tensor([[h, w]], device=self.device))[0]
            keep = det["scores"] > _DRAW_THRESHOLD
            if not keep.any():
                continue
            labels = [f"{self.job.class_names[int(c)] if int(c) < len(self.job.class_names) else int(c)} {s:.2f}"
                      for c, s in zip(det["labels"][keep], det["scores"][keep], strict=True)]
            self.run_logger.image_with_boxes(f"val/predictions_{i}", _denormalize(image), det["boxes"][keep],
                                             step=epoch, labels=labels)
