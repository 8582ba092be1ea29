"""The run folder's pictures and tables, written during and at the end of training by :func:`rfdetr.train.fit.fit`.

Files (all off with ``--plots 0``)::

    results.csv, results.png      every logged loss and metric per epoch (rewritten from log.jsonl each epoch)
    labels.png                    the training split: instances per class, box centres and sizes
    train_batch0..2.jpg           the first training batches as the model receives them (augmented, resized)
    pr_curve_box.png / _mask.png  precision against recall at IoU 0.5, per class and all classes (+ .csv: the points)
    f1_curve_box.png / _mask.png  F1 at IoU 0.5 against the score threshold; its best threshold goes to results.json
    confusion_matrix.png / .csv   predicted against true class (boxes, IoU 0.5, at the box F1 threshold), background
    per_class.csv                 boxes and masks: images, instances, precision / recall / F1 at the F1 threshold,
                                  AP50, AP50:95
    val_predictions_0..3.jpg      a fixed handful of validation images: ground truth beside the predictions

The curves, matrix, table and validation pictures describe the best model so far (the weights of
``checkpoint_best_total.pth`` at the end) and are refreshed when it changes. Plotting must not slow training: apart
from the first epoch (no results.png yet: one point per panel) and the end, a refresh is postponed while the time
spent plotting exceeds :data:`TIME_BUDGET` of the run's wall time (results.csv is always current).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.train.plots import analysis, charts, pictures
from rfdetr.util.atomic import write_bytes_atomic
from rfdetr.util.loggers import read_jsonl

logger = logging.getLogger(__name__)

__all__ = ["RunPlots", "TIME_BUDGET", "results_table"]

# Largest share of the run's wall time spent on plotting before intermediate refreshes wait (the end always writes).
TIME_BUDGET = 0.03
TRAIN_BATCHES = 3
VAL_IMAGES = 4
# Predictions drawn per validation picture at most (the highest scores), so that a weak early model stays readable.
_MAX_DRAWN = 30
# Drawing threshold while no threshold gives any true positive yet (the F1 curve is flat zero).
_FALLBACK_THRESHOLD = 0.3
_KIND = {"bbox": "box", "segm": "mask"}
_NOT_PLOTTED = ("epoch_time", "skipped_steps")
_PER_CLASS_COLUMNS = ("type", "class", "images", "instances", "threshold", "precision", "recall", "f1", "AP50",
                      "AP50:95")


@dataclass
class _Snapshot:
    """One model's evaluation: references to the evaluator's last COCOeval objects and results (never copied)."""

    model: str
    epoch: int
    coco_evals: dict[str, Any]
    results: dict[int, dict[str, list[dict[str, Any]]]]
    coco_gt: Any
    label_to_category_id: list[int]


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        # repr keeps every float exact (read back, it is the same float64)
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return buffer.getvalue().encode()


def results_table(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """``log.jsonl`` records -> columns: ``epoch``, ``step``, then every scalar ``train_*``, ``val_*`` and ``ema_val_*``
    entry in the order first seen (None where an epoch did not log it). Dicts (per-class APs, best) are left out."""
    names: dict[str, None] = {"epoch": None, "step": None}
    for record in records:
        for key, value in record.items():
            if key.startswith(("train_", "val_", "ema_val_")) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                names.setdefault(key, None)
    return {name: [r.get(name) for r in records] for name in names}


class RunPlots:
    """Writes the run folder's pictures and tables (see the module docstring); every method is a no-op when disabled.

    Args:
        run_dir: the run folder.
        job: the :class:`~rfdetr.train.fit.TrainingJob` (class names, train and validation sets).
        enabled: this process writes (``--plots`` on, main process).
        primary: the iou type that decides "best" (its F1 threshold is results.json's ``threshold``).
    """

    def __init__(self, run_dir: Path, job: Any, enabled: bool, primary: str = "bbox") -> None:
        self.run_dir, self.job, self.enabled, self.primary = Path(run_dir), job, enabled, primary
        self.class_names: list[str] = list(job.class_names)
        self.start = time.perf_counter()
        self.spent = 0.0
        self.snapshots: dict[str, _Snapshot] = {}
        self.pending: _Snapshot | None = None
        self.results_pending = False
        self.thresholds: dict[str, dict[str, Any]] = {}
        self.batches_drawn = sum(1 for _ in self.run_dir.glob("train_batch*.jpg")) if enabled else TRAIN_BATCHES
        self._val_ids: list[int] | None = None
        # matplotlib draws the PNG charts; without it the CSVs and JPEG pictures are still written.
        self.charts = enabled and importlib.util.find_spec("matplotlib") is not None
        if enabled and not self.charts:
            logger.warning("run folder: matplotlib is not installed, so results.png, labels.png, the curves and the "
                           "confusion matrix picture are skipped (pip install matplotlib; or --plots 0 to skip all)")

    # ------------------------------------------------------------------------------------------ helpers

    def _write(self, name: str, data: bytes) -> None:
        write_bytes_atomic(self.run_dir / name, data)

    def _timed(self, what: str, fn: Callable[[], None]) -> None:
        """Run one plotting job, adding its time to :attr:`spent`; a failure is logged and training goes on."""
        start = time.perf_counter()
        try:
            fn()
        except (OSError, ValueError, RuntimeError, KeyError, IndexError) as e:
            logger.warning("run folder: %s failed (%s: %s); training goes on without it", what, type(e).__name__, e)
        finally:
            self.spent += time.perf_counter() - start

    def _affordable(self) -> bool:
        return self.spent <= TIME_BUDGET * (time.perf_counter() - self.start)

    # ------------------------------------------------------------------------------------------ before training

    def labels(self) -> None:
        """``labels.png`` from the training split's annotations (no image is read); once per run folder."""
        if not self.charts or (self.run_dir / "labels.png").exists():
            return
        self._timed("labels.png", self._labels)

    def _labels(self) -> None:
        records = getattr(self.job.train_set, "records", None)
        if records is None:
            logger.info("run folder: labels.png skipped (the training set has no annotation records)")
            return
        labels, centres, sizes = [], [], []
        for rec in records:
            keep = np.asarray(rec.iscrowd).reshape(-1) == 0
            boxes = np.asarray(rec.boxes, dtype=np.float64).reshape(-1, 4)[keep]
            scale = np.array([rec.width, rec.height], dtype=np.float64)
            labels.append(np.asarray(rec.labels, dtype=np.int64).reshape(-1)[keep])
            centres.append((boxes[:, :2] + boxes[:, 2:]) / 2 / scale)
            sizes.append((boxes[:, 2:] - boxes[:, :2]) / scale)
        count = len(records)
        self._write("labels.png", charts.labels_png(
            np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
            np.concatenate(centres) if centres else np.zeros((0, 2)),
            np.concatenate(sizes) if sizes else np.zeros((0, 2)), self.class_names,
            f"training split: {count} images, {sum(len(x) for x in labels)} instances"))

    # ------------------------------------------------------------------------------------------ during an epoch

    def batch_hook(self) -> Callable[[torch.Tensor, list[dict[str, torch.Tensor]]], None] | None:
        """``on_batch`` for :func:`rfdetr.train.engine.train_one_epoch` while training batches remain to be drawn."""
        return self._train_batch if self.enabled and self.batches_drawn < TRAIN_BATCHES else None

    def _train_batch(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        if self.batches_drawn >= TRAIN_BATCHES:
            return
        index = self.batches_drawn
        self.batches_drawn += 1
        if images.ndim != 4 or images.shape[1] != 3 or not bool(images.any()):
            # e.g. stage 2's feature cache serves placeholders instead of images
            logger.info("run folder: train_batch%d.jpg skipped (the batch holds no image pixels)", index)
            return
        self._timed(f"train_batch{index}.jpg", lambda: self._write(
            f"train_batch{index}.jpg", pictures.jpeg(pictures.batch_mosaic(images, targets, self.class_names))))

    def capture(self, model: str, evaluator: Any, epoch: int) -> None:
        """Keep ``evaluator``'s last evaluation of ``model`` (``regular`` or ``ema``) for :meth:`epoch_end`."""
        if not self.enabled or not getattr(evaluator, "coco_evals", None):
            return
        self.snapshots[model] = _Snapshot(model, epoch, dict(evaluator.coco_evals), evaluator.results,
                                          evaluator.coco_gt, list(evaluator.label_to_category_id))
        if self._val_ids is None:
            self._val_ids = self._pick_val_images(evaluator.coco_gt)

    def epoch_end(self, epoch: int, new_best: str | None) -> None:
        """After the epoch's log.jsonl line: results.csv now, and the pictures when affordable (always after the first
        epoch; :meth:`finish` writes the rest). ``new_best``: the model (``regular`` / ``ema``) that became the best
        this epoch."""
        if not self.enabled:
            return
        if new_best is not None and new_best in self.snapshots:
            self.pending = self.snapshots[new_best]
        self.snapshots = {}
        self._timed("results.csv", self._results_csv)
        self.results_pending = True
        if epoch == 0 or self._affordable():
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write whatever is pending: results.png, and the best model's curves, tables and validation pictures."""
        if not self.enabled:
            return
        if self.results_pending:
            self.results_pending = False
            if self.charts:
                self._timed("results.png", lambda: self._results_png(final))
        if self.pending is not None:
            snapshot, self.pending = self.pending, None
            self._timed("curves and tables", lambda: self._best(snapshot))

    def finish(self) -> dict[str, Any]:
        """Flush everything; returns results.json's entries: ``threshold`` (the F1-maximising score threshold of the
        iou type that decides "best", a good ``--threshold``) and ``f1`` (per iou type: threshold, F1, precision,
        recall, model, epoch). Resumed without a new best, they are read back from per_class.csv."""
        if not self.enabled:
            return {}
        self.flush(final=True)
        elapsed = time.perf_counter() - self.start
        logger.info("run folder pictures and tables: %.1fs of the run's %.1fs (%.1f%%)", self.spent, elapsed,
                    100 * self.spent / max(elapsed, 1e-9))
        thresholds = self.thresholds or self._thresholds_from_csv()
        if not thresholds:
            return {}
        primary = thresholds.get(self.primary) or next(iter(thresholds.values()))
        if primary["threshold"] is None:
            logger.info("F1-maximising score threshold: none (no true positive at any threshold)")
        else:
            logger.info("F1-maximising score threshold (%s): %.3f (F1 %.3f); pass it as --threshold when predicting",
                        self.primary, primary["threshold"], primary["f1"])
        return {"threshold": primary["threshold"], "f1": thresholds}

    # ------------------------------------------------------------------------------------------ the files

    def _results_csv(self) -> None:
        table = results_table(read_jsonl(self.run_dir / "log.jsonl"))
        self._write("results.csv", _csv_text(list(table), list(zip(*table.values(), strict=True))))

    def _results_png(self, final: bool = False) -> None:
        table = results_table(read_jsonl(self.run_dir / "log.jsonl"))
        if len(table["epoch"]) < 2 and not final:
            self.results_pending = True  # one point per panel says nothing yet: wait for the second epoch
            return
        table = {k: v for k, v in table.items() if not k.endswith(_NOT_PLOTTED)}
        self._write("results.png", charts.results_png(table, self.run_dir.name))

    def _best(self, snap: _Snapshot) -> None:
        start = time.perf_counter()
        gt = snap.coco_gt
        image_ids = sorted(snap.results) or sorted(gt.getImgIds())
        images, instances = analysis.instance_counts(gt, image_ids, snap.label_to_category_id)
        label = f"{snap.model} weights, epoch {snap.epoch}"
        rows: list[dict[str, Any]] = []
        thresholds: dict[str, dict[str, Any]] = {}
        for iou_type, coco_eval in snap.coco_evals.items():
            kind = _KIND[iou_type]
            pr = analysis.pr_curves(coco_eval)
            curves = analysis.score_curves(coco_eval)
            if self.charts:
                self._write(f"pr_curve_{kind}.png", charts.pr_png(pr, self.class_names, f"{kind} precision-recall, "
                                                                                         f"IoU 0.5 ({label})"))
                self._write(f"f1_curve_{kind}.png", charts.f1_png(curves, self.class_names, f"{kind} F1, IoU 0.5 "
                                                                                             f"({label})"))
            header = ["recall", "all", *self.class_names]
            points = [[float(r), float(m), *(float(p) for p in pr.precision[:, i])]
                      for i, (r, m) in enumerate(zip(pr.recall, pr.mean, strict=True))]
            self._write(f"pr_curve_{kind}.csv", _csv_text(header, points))
            table = analysis.per_class_rows(kind, self.class_names, images, instances, pr, curves,
                                            images_with_instances=sum(1 for i in image_ids
                                                                      if analysis.has_instances(gt, i)))
            rows.extend(table)
            everything = table[-1]
            found = bool(curves.f1_mean[curves.best] > 0)  # else every threshold is as bad: none to recommend
            thresholds[iou_type] = {"threshold": curves.threshold if found else None,
                                    "f1": float(curves.f1_mean[curves.best]),
                                    "precision": everything["precision"], "recall": everything["recall"],
                                    "model": snap.model, "epoch": snap.epoch}
        self._write("per_class.csv", _csv_text(_PER_CLASS_COLUMNS, [[r[c] for c in _PER_CLASS_COLUMNS]
                                                                    for r in rows]))
        if "bbox" in thresholds:
            threshold = thresholds["bbox"]["threshold"]
            threshold = _FALLBACK_THRESHOLD if threshold is None else threshold
            matrix = analysis.confusion_from_results(gt, snap.results, snap.label_to_category_id, threshold)
            names = [*self.class_names, "background"]
            self._write("confusion_matrix.csv", _csv_text(["predicted \\ true", *names],
                                                          [[n, *map(int, row)] for n, row in zip(names, matrix,
                                                                                                 strict=True)]))
            if self.charts:
                self._write("confusion_matrix.png", charts.confusion_png(
                    matrix, self.class_names, f"confusion matrix, normalised per true class\nboxes at IoU 0.5, "
                                              f"score >= {threshold:.3f} ({label})"))
        self.thresholds = thresholds
        self._val_pictures(snap, thresholds.get(self.primary, thresholds.get("bbox")))
        logger.debug("run folder: curves, tables and pictures of the %s in %.2fs", label, time.perf_counter() - start)

    def _thresholds_from_csv(self) -> dict[str, dict[str, Any]]:
        path = self.run_dir / "per_class.csv"
        if not path.is_file():
            return {}
        with path.open(encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["class"] == "all"]
        out = {}
        for row in rows:
            iou_type = "bbox" if row["type"] == "box" else "segm"
            out[iou_type] = {k: float(row[k]) if row[k] else None for k in ("threshold", "f1", "precision", "recall")}
            if not out[iou_type]["f1"]:
                out[iou_type]["threshold"] = None
        return out

    # ------------------------------------------------------------------------------------------ validation pictures

    def _pick_val_images(self, coco_gt: Any) -> list[int]:
        """A fixed handful: evenly spread over the validation images that hold an object (sorted by id)."""
        ids = sorted(i for i in coco_gt.getImgIds() if analysis.has_instances(coco_gt, i)) or sorted(
            coco_gt.getImgIds())
        if len(ids) <= VAL_IMAGES:
            return ids
        return [ids[round(i * (len(ids) - 1) / (VAL_IMAGES - 1))] for i in range(VAL_IMAGES)]

    def _image_path(self, coco_gt: Any, image_id: int) -> Path:
        records = getattr(self.job.val_set, "records", None)
        if records is not None:
            for rec in records:
                if rec.image_id == image_id:
                    return Path(rec.path)
        annotation_file = Path(getattr(self.job.val_set, "annotation_file", "."))
        return annotation_file.parent / coco_gt.imgs[image_id]["file_name"]

    def _val_pictures(self, snap: _Snapshot, threshold: dict[str, Any] | None) -> None:
        from pycocotools import mask as mask_utils

        gt = snap.coco_gt
        segm = "segm" in snap.coco_evals
        draw_at = threshold["threshold"] if threshold and threshold["threshold"] is not None else _FALLBACK_THRESHOLD
        category_to_label = {int(c): i for i, c in enumerate(snap.label_to_category_id)}
        for n, image_id in enumerate(self._val_ids or []):
            image = pictures.read_image(self._image_path(gt, image_id))
            anns = [a for a in gt.imgToAnns.get(image_id, [])
                    if not a.get("iscrowd", 0) and int(a["category_id"]) in category_to_label]
            boxes, labels = analysis.ground_truth(gt, image_id, category_to_label)
            truth: dict[str, Any] = {"boxes": boxes, "labels": labels}
            if segm:
                truth["masks"] = np.stack([gt.annToMask(a).astype(bool) for a in anns]) if anns else \
                    np.zeros((0, *image.shape[:2]), dtype=bool)
            found = snap.results.get(image_id, {})
            dets = found.get("bbox", [])
            order = [i for i in np.argsort([-d["score"] for d in dets], kind="stable")
                     if dets[i]["score"] >= draw_at and int(dets[i]["category_id"]) in category_to_label][:_MAX_DRAWN]
            xyxy = np.array([dets[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
            xyxy[:, 2:] += xyxy[:, :2]
            predicted: dict[str, Any] = {
                "boxes": xyxy, "labels": np.array([category_to_label[int(dets[i]["category_id"])] for i in order]),
                "scores": np.array([dets[i]["score"] for i in order], dtype=np.float64)}
            if segm:
                rles = found.get("segm", [])
                predicted["masks"] = np.stack([mask_utils.decode(rles[i]["segmentation"]).astype(bool)
                                               for i in order]) if order else \
                    np.zeros((0, *image.shape[:2]), dtype=bool)
            caption = f"predictions, score >= {draw_at:.2f} ({snap.model} weights, epoch {snap.epoch})"
            self._write(f"val_predictions_{n}.jpg", pictures.jpeg(pictures.side_by_side(
                image, truth, predicted, self.class_names, caption)))
