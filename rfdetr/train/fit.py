"""``fit()``: the epoch loop shared by stage 1, stage 2 and single-stage training.

It owns everything around :func:`rfdetr.train.engine.train_one_epoch`: the run folder, optimizer and schedule, EMA,
resume, evaluation of the regular and EMA weights, best-checkpoint tracking, early stopping, logs and DDP. What differs
between the stages (which parameters train, which losses, which metric decides "best", what a checkpoint holds) comes
in through a :class:`TrainingJob`.

Files in the run folder::

    config.json                 written first: everything needed to reproduce the run
    log.jsonl                   one JSON line per epoch (val_* entries on evaluated epochs only, see --eval_interval)
    tb/                         TensorBoard events (losses, learning rates, mAP, validation pictures)
    checkpoint.pth              last state, for --resume: weights, optimizer, schedule, EMA, RNG, best metrics
                                (stage 2: the mask head only, and the frozen detector's source file and hash)
    checkpoint_best_regular.pth best regular weights (weights, args, class names only)
    checkpoint_best_ema.pth     best EMA weights
    checkpoint_best_total.pth   the better of the two, written at the end (a hard link to it: no second copy)
    results.json                final metrics (valid, and test when the split exists)
    results.csv/.png, pr_curve_*, f1_curve_*, confusion_matrix.*, per_class.csv, labels.png, train_batch*.jpg,
    val_predictions_*.jpg       pictures and tables (--plots 0: none), see rfdetr.train.plots.run_plots;
                                results.json also gets the F1-maximising score threshold
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from rfdetr.checkpoint import load_checkpoint_file, make_checkpoint, save_checkpoint
from rfdetr.config import ModelConfig
from rfdetr.data.coco_eval import CocoEvaluator
from rfdetr.data.loaders import build_dataloader, set_epoch
from rfdetr.train.config import OptimConfig, TrainConfig
from rfdetr.train.ema import ModelEMA
from rfdetr.train.engine import StepSettings, evaluate, primary_metric, train_one_epoch
from rfdetr.train.optim import autocast_dtype as pick_autocast_dtype
from rfdetr.train.optim import build_grad_scaler, build_scheduler, make_adamw
from rfdetr.train.plots import RunPlots
from rfdetr.train.report import EpochReport
from rfdetr.util.distributed import DistInfo, barrier, broadcast_object
from rfdetr.util.early_stopping import EarlyStopping, select_metric
from rfdetr.util.loggers import JsonlLogger, RunLogger
from rfdetr.util.run_dir import create_run_dir, link_or_copy, write_config, write_json_atomic
from rfdetr.util.seeding import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

Forward = Callable[[nn.Module, torch.Tensor, list], dict[str, Any]]
# A best AP50:95 below this at the end of a run means the model has learned next to nothing: the run says why that
# usually happens (1 AP point; a model that learned anything useful scores far above it).
NEAR_ZERO_AP = 0.01


def format_duration(seconds: float) -> str:
    """``3725.0`` -> ``1h02m``, ``95.0`` -> ``1m35s``, ``7.2`` -> ``7s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def near_zero_hint(best_ap: float, iou_type: str, config: dict[str, Any], epochs_run: int) -> str | None:
    """One line naming the likely causes when a finished run's best AP50:95 is near zero, else None.

    Args:
        best_ap: the better of the regular and EMA best AP50:95 (-1 when never evaluated).
        iou_type: ``bbox`` or ``segm``.
        config: the run's config (``args`` holds its flags: ``pretrained``, ``epochs``).
        epochs_run: epochs trained in all (resumes included).
    """
    if best_ap < 0 or best_ap >= NEAR_ZERO_AP:
        return None
    args = config.get("args", {})
    causes = []
    pretrained = args.get("pretrained")
    if isinstance(pretrained, str) and pretrained.lower() == "none":
        causes.append("no pretrained start (--pretrained none: a detector from random weights needs hundreds of "
                      "epochs; drop the flag to start from the official COCO weights)")
    causes.append(f"too few epochs ({epochs_run}; a few dozen from pretrained weights is typical)")
    if config.get("stage") == "seg_stage2" or "detector_checkpoint" in config:
        causes.append("a stage-1 detector that finds nothing (check its own AP in its results.json)")
    causes.append("a learning rate too high or too low (--lr)")
    return (f"the best {iou_type} AP50:95 is {best_ap:.4f}, near zero: the model has learned next to nothing and "
            f"will predict few or no objects. Likely causes: {'; '.join(causes)}")


@dataclass
class TrainingJob:
    """What one stage trains; :func:`fit` does the rest.

    Attributes:
        stage: ``"detector"``, ``"seg_stage2"`` or ``"seg_single"`` (recorded in checkpoints).
        model: the unwrapped model; parameters with ``requires_grad`` are trained.
        model_cfg: its architecture (recorded in checkpoints so they load back by preset).
        class_names: label names, index = class id.
        criterion: loss module with ``total_loss``.
        postprocess: ``(outputs, orig_sizes) -> per-image detections`` for evaluation.
        train_set / val_set / test_set: datasets yielding ``(image, target)``.
        param_groups: builds the optimizer's parameter groups from the (unwrapped) model.
        iou_type: ``"bbox"`` or ``"segm"``: the AP50:95 that decides "best" and early stopping.
        run_prefix: run folder name before ``_N``, e.g. ``detector_nano_384``.
        config: the resolved settings written to ``config.json``.
        forward: ``forward(model, images, targets)`` returning the criterion's outputs (default ``model(images)``).
        state_dict: what goes under ``model`` in checkpoints (default: the full state dict).
        load_state_dict: the inverse, for resume (default: strict ``load_state_dict``).
        checkpoint_extra: more top-level entries for every checkpoint (e.g. the mask-head config).
        category_ids: the dataset's category id of each class (recorded as ``category_ids``, so that predictions can
            use the dataset's ids; :func:`rfdetr.checkpoint.checkpoint_category_ids`).
        resume_state_dict: what goes under ``model`` in ``checkpoint.pth`` only (default: ``state_dict``); stage 2
            stores the mask head alone there, since its frozen detector is known from its source checkpoint.
        load_resume_state_dict: the inverse, for resume (default: ``load_state_dict``).
        resume_extra: more top-level entries for ``checkpoint.pth`` only (stage 2: where its detector came from).
        use_ema: keep an EMA of the trainable weights (overrides ``TrainConfig.use_ema`` when not None).
    """

    stage: str
    model: nn.Module
    model_cfg: ModelConfig
    class_names: list[str]
    criterion: nn.Module
    postprocess: Callable[[dict[str, Any], torch.Tensor], list[dict[str, torch.Tensor]]]
    train_set: Dataset
    val_set: Dataset
    param_groups: Callable[[nn.Module], list[dict[str, Any]]]
    iou_type: str = "bbox"
    run_prefix: str = "run"
    config: dict[str, Any] = field(default_factory=dict)
    test_set: Dataset | None = None
    forward: Forward | None = None
    state_dict: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    load_state_dict: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)
    category_ids: list[int] | None = None
    resume_state_dict: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    load_resume_state_dict: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
    resume_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    best: dict[str, Any]
    epochs_run: int
    stopped_early: bool = False
    interrupted: bool = False
    last_metrics: dict[str, Any] = field(default_factory=dict)


def _weights(job: TrainingJob, model: nn.Module) -> dict[str, torch.Tensor]:
    return job.state_dict(model) if job.state_dict is not None else model.state_dict()


def _load_weights(job: TrainingJob, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if job.load_state_dict is not None:
        job.load_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=True)


class _Fit:
    """The state of one run: built once, then :meth:`run` loops over the epochs."""

    def __init__(self, job: TrainingJob, train_cfg: TrainConfig, optim_cfg: OptimConfig, dist_info: DistInfo) -> None:
        self.job, self.cfg, self.optim_cfg, self.dist = job, train_cfg, optim_cfg, dist_info
        self.device = dist_info.device
        self.resume_ckpt = load_checkpoint_file(train_cfg.resume) if train_cfg.resume else None
        self._check_unfinished()
        self.run_dir = self._make_run_dir()
        self.model = job.model.to(self.device)
        self.autocast_dtype = pick_autocast_dtype(self.device, train_cfg.amp, train_cfg.amp_dtype)
        self.scaler = build_grad_scaler(self.device, self.autocast_dtype)
        self.train_loader = build_dataloader(job.train_set, train_cfg.batch_size, train=True,
                                             workers=train_cfg.num_workers, seed=train_cfg.seed,
                                             grad_accum_steps=train_cfg.grad_accum_steps)
        self.val_loader = build_dataloader(job.val_set, train_cfg.batch_size, train=False,
                                           workers=train_cfg.num_workers, seed=train_cfg.seed)
        self.optimizer = make_adamw(job.param_groups(self.model), lr=optim_cfg.lr,
                                    weight_decay=optim_cfg.weight_decay)
        self.steps_per_epoch = max(1, len(self.train_loader) // train_cfg.grad_accum_steps)
        self.scheduler = build_scheduler(self.optimizer, steps_per_epoch=self.steps_per_epoch,
                                         epochs=train_cfg.epochs, warmup_epochs=optim_cfg.warmup_epochs,
                                         schedule=optim_cfg.lr_scheduler, lr_drop=optim_cfg.lr_drop,
                                         lr_min_factor=optim_cfg.lr_min_factor)
        self.ema = ModelEMA(self.model, train_cfg.ema_decay, train_cfg.ema_tau) if train_cfg.use_ema else None
        self.early = EarlyStopping(train_cfg.early_stopping_patience, train_cfg.early_stopping_min_delta)
        self.best: dict[str, Any] = {"regular": -1.0, "ema": -1.0, "regular_epoch": -1, "ema_epoch": -1}
        self.start_epoch, self.global_step = 0, 0
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self.train_model: nn.Module = self.model
        if dist_info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.evaluator = CocoEvaluator.from_dataset(job.val_set, iou_types=("bbox", "segm") if job.iou_type == "segm"
                                                    else ("bbox",), max_dets=train_cfg.eval_max_dets)
        self.run_logger = RunLogger(self.run_dir, tensorboard=train_cfg.tensorboard, wandb=train_cfg.wandb,
                                    wandb_project=train_cfg.wandb_project, wandb_run=train_cfg.wandb_run,
                                    config=job.config, enabled=dist_info.is_main)
        self.report = EpochReport(job, JsonlLogger(self.run_dir / "log.jsonl", enabled=dist_info.is_main),
                                  self.run_logger, train_cfg.tensorboard or train_cfg.wandb, self.device,
                                  dist_info.is_main)
        self.plots = RunPlots(self.run_dir, job, enabled=train_cfg.plots and dist_info.is_main, primary=job.iou_type)
        self.plots.labels()

    # ------------------------------------------------------------------------------------------ setup and resume

    def _check_unfinished(self) -> None:
        """Resuming a run that already trained its epochs says so (it used to warn, then rewrite its best files)."""
        if self.resume_ckpt is None or "epoch" not in self.resume_ckpt:
            return
        done = int(self.resume_ckpt["epoch"]) + 1
        if done >= self.cfg.epochs:
            best = Path(self.cfg.resume).parent / "checkpoint_best_total.pth"
            raise ValueError(f"--resume {self.cfg.resume}: this run already finished ({done} of {self.cfg.epochs} "
                             f"epochs). To train it further pass a larger --epochs (e.g. --epochs {2 * done}) with "
                             f"--resume; its weights are in {best}")

    def _make_run_dir(self) -> Path:
        if self.resume_ckpt is not None:
            # A resumed run continues in the folder of its checkpoint, so its logs and best files stay together.
            run_dir = Path(self.cfg.resume).resolve().parent
        elif self.dist.is_main:
            root = Path(self.cfg.output_root)
            run_dir = create_run_dir(root, self.cfg.run_name or self.job.run_prefix)
        else:
            run_dir = None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
        if self.dist.is_main:
            config = {"stage": self.job.stage, "run_dir": str(run_dir), **self.job.config}
            name = "config.json" if not (run_dir / "config.json").exists() else "config_resume.json"
            write_config(run_dir, config) if name == "config.json" else write_json_atomic(run_dir / name, config)
            logger.info("run folder: %s", run_dir)
        return run_dir

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if self.job.load_resume_state_dict is not None:
            self.job.load_resume_state_dict(self.model, ckpt["model"])
        else:
            _load_weights(self.job, self.model, ckpt["model"])
        for key, target in (("optimizer", self.optimizer), ("lr_scheduler", self.scheduler)):
            if key not in ckpt:
                raise ValueError(f"{self.cfg.resume} has no '{key}': it is a weights-only file. Resume from the run's "
                                 "checkpoint.pth, or start a new run from these weights with --pretrained")
            target.load_state_dict(ckpt[key])
        if self.ema is not None and "ema_model" in ckpt:
            # ema_model is in the job's checkpoint layout (stage 2: the detector's keys without "detector."), as
            # _save_last wrote it: read it back the way the model's weights are read.
            _load_weights(self.job, self.ema.module, ckpt["ema_model"])
            module = self.ema.module.state_dict()
            self.ema.load_state_dict({"module": module, "updates": ckpt["ema_updates"]} if "ema_updates" in ckpt
                                     else module)
        if "scaler" in ckpt and self.scaler is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.best.update(ckpt.get("best", {}))
        if "early_stopping" in ckpt:
            self.early.load_state_dict(ckpt["early_stopping"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.global_step = int(ckpt.get("global_step", self.start_epoch * self.steps_per_epoch))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        logger.info("resumed from %s at epoch %d (step %d)", self.cfg.resume, self.start_epoch, self.global_step)

    # ------------------------------------------------------------------------------------------ checkpoints

    def _weights_file(self, weights: dict[str, torch.Tensor], epoch: int, **extra: Any) -> dict[str, Any]:
        ids = {"category_ids": list(self.job.category_ids)} if self.job.category_ids is not None else {}
        return make_checkpoint(weights, self.job.model_cfg, self.job.class_names, stage=self.job.stage, epoch=epoch,
                               **ids, **self.job.checkpoint_extra, **extra)

    def _save_last(self, epoch: int) -> None:
        if not self.dist.is_main:
            return
        extra: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.scheduler.state_dict(),
            "global_step": self.global_step, "best": dict(self.best), "early_stopping": self.early.state_dict(),
            "rng": rng_state(), "train_config": asdict(self.cfg), "optim_config": asdict(self.optim_cfg),
        }
        if self.ema is not None:
            # Upstream's key for the EMA weights, so rfdetr can read them too.
            extra["ema_model"] = _weights(self.job, self.ema.module)
            extra["ema_updates"] = self.ema.updates
        if self.scaler is not None and self.scaler.is_enabled():
            extra["scaler"] = self.scaler.state_dict()
        weights = (self.job.resume_state_dict(self.model) if self.job.resume_state_dict is not None
                   else _weights(self.job, self.model))
        save_checkpoint(self._weights_file(weights, epoch, **extra, **self.job.resume_extra),
                        self.run_dir / "checkpoint.pth")
        if (epoch + 1) % self.cfg.checkpoint_interval == 0:
            save_checkpoint(self._weights_file(_weights(self.job, self.model), epoch),
                            self.run_dir / f"checkpoint{epoch:04d}.pth")

    # ------------------------------------------------------------------------------------------ one epoch

    def _evaluate(self, model: nn.Module, desc: str) -> dict[str, Any]:
        return evaluate(model, self.job.criterion, self.job.postprocess, self.val_loader, self.evaluator, self.device,
                        self.autocast_dtype, forward=self.job.forward, desc=desc)

    def _update_best(self, epoch: int, regular: float, ema: float | None) -> None:
        """Upstream's rule: a file is written when its model beats the best of BOTH so far."""
        if not self.dist.is_main:
            return
        overall = max(self.best["regular"], self.best["ema"])
        if regular > overall:
            save_checkpoint(self._weights_file(_weights(self.job, self.model), epoch, metric=regular),
                            self.run_dir / "checkpoint_best_regular.pth")
        if ema is not None and ema > max(overall, regular):
            save_checkpoint(self._weights_file(_weights(self.job, self.ema.module), epoch, metric=ema),
                            self.run_dir / "checkpoint_best_ema.pth")
        if regular > self.best["regular"]:
            self.best.update(regular=regular, regular_epoch=epoch)
        if ema is not None and ema > self.best["ema"]:
            self.best.update(ema=ema, ema_epoch=epoch)

    def _epoch(self, epoch: int) -> dict[str, Any]:
        # Every epoch's randomness is a function of (seed, rank, epoch) alone, so a resumed run draws exactly what an
        # uninterrupted one would have (augmentation, shuffling, multi-scale sizes, mask points).
        seed_everything(self.cfg.seed + 1000 * epoch, self.dist.rank)
        self.train_loader.generator.manual_seed(self.cfg.seed + 1000 * epoch + self.dist.rank)
        set_epoch(self.train_loader, epoch)
        settings = StepSettings(grad_accum_steps=self.cfg.grad_accum_steps, clip_max_norm=self.optim_cfg.clip_max_norm,
                                autocast_dtype=self.autocast_dtype, scales=self.job.config.get("train_scales", ()))

        def on_step(step: int, logs: dict[str, float]) -> None:
            if step % max(1, self.cfg.print_freq) == 0:
                self.run_logger.scalars(logs, step, prefix="train_step/")

        train_stats, self.global_step = train_one_epoch(
            self.train_model, self.job.criterion, self.train_loader, self.optimizer, self.scheduler, self.device,
            epoch, settings, global_step=self.global_step, scaler=self.scaler, ema=self.ema, forward=self.job.forward,
            on_step=on_step, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", on_batch=self.plots.batch_hook())
        metrics: dict[str, Any] = {}
        ema_metrics: dict[str, Any] | None = None
        stop = False
        new_best: str | None = None
        evaluated = self.evaluates_after(epoch)
        if evaluated:
            metrics = self._evaluate(self.model, f"eval {epoch}")
            self.plots.capture("regular", self.evaluator, epoch)
            ema_metrics = None
            if self.ema is not None:
                ema_metrics = self._evaluate(self.ema.module, f"eval ema {epoch}")
                self.plots.capture("ema", self.evaluator, epoch)
            regular = primary_metric(metrics, self.job.iou_type)
            ema = primary_metric(ema_metrics, self.job.iou_type) if ema_metrics is not None else None
            before = max(self.best["regular"], self.best["ema"])
            self._update_best(epoch, regular, ema)
            if max(self.best["regular"], self.best["ema"]) > before:  # ties go to the regular weights, as in _finish
                new_best = "ema" if self.best["ema"] > self.best["regular"] else "regular"
            stop = self.early.update(select_metric(regular, ema, self.cfg.early_stopping_use_ema), epoch)
        # An epoch without evaluation still gets its log.jsonl line and training scalars (no val_* entries).
        record = self.report.record(epoch, self.global_step, self.best, train_stats, metrics, ema_metrics, evaluated)
        self.plots.epoch_end(epoch, new_best)
        self.report.scalars(epoch, self.optimizer, train_stats, metrics, ema_metrics)
        if evaluated:
            self.report.pictures(self.ema.module if self.ema is not None else self.model, epoch)
        self._save_last(epoch)
        record["stop"] = bool(broadcast_object(stop and self.cfg.early_stopping))
        return record

    def evaluates_after(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) ends with an evaluation: every ``eval_interval``-th epoch and the last one.

        A function of the epoch alone, so every DDP rank and a resumed run agree on it.
        """
        return (epoch + 1) % self.cfg.eval_interval == 0 or epoch == self.cfg.epochs - 1

    # ------------------------------------------------------------------------------------------ the loop

    def _finish(self) -> dict[str, Any]:
        """checkpoint_best_total.pth (the better of regular and EMA) and results.json."""
        results: dict[str, Any] = {"best": dict(self.best)}
        if not self.dist.is_main:
            return results
        use_ema = self.best["ema"] > self.best["regular"]  # strict: ties go to the regular weights, as upstream
        source = self.run_dir / ("checkpoint_best_ema.pth" if use_ema else "checkpoint_best_regular.pth")
        if source.exists():
            # The best file holds exactly what checkpoint_best_total.pth must (weights and metadata): the same
            # bytes under the name users and rfdetr load, stored once (a hard link; a copy where there are none).
            link_or_copy(source, self.run_dir / "checkpoint_best_total.pth")
            results["best_total_source"] = source.name
            if self.job.test_set is not None and self.cfg.run_test:
                results["test"] = self._test(load_checkpoint_file(source)["model"])
        results.update(self.plots.finish())
        write_json_atomic(self.run_dir / "results.json", results)
        return results

    def _test(self, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Evaluate the best weights on the test split."""
        model = self.ema.module if self.ema is not None else self.model
        saved = {k: v.clone() for k, v in _weights(self.job, model).items()}
        _load_weights(self.job, model, weights)
        loader = build_dataloader(self.job.test_set, self.cfg.batch_size, train=False, workers=self.cfg.num_workers,
                                  distributed=False)
        evaluator = CocoEvaluator.from_dataset(self.job.test_set, iou_types=self.evaluator.iou_types,
                                               max_dets=self.cfg.eval_max_dets)
        metrics = evaluate(model, None, self.job.postprocess, loader, evaluator, self.device, self.autocast_dtype,
                           forward=self.job.forward, desc="test")
        _load_weights(self.job, model, saved)
        logger.info("test split:\n%s", evaluator.summary)
        return {k: v for k, v in metrics.items() if k in ("bbox", "segm")}

    def run(self) -> FitResult:
        epoch = self.start_epoch - 1
        elapsed = 0.0
        record: dict[str, Any] = {}
        stopped = interrupted = False
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                start = time.perf_counter()
                record = self._epoch(epoch)
                seconds = time.perf_counter() - start
                elapsed += seconds
                # Time left: the mean epoch so far (evaluations included) times the epochs left; early stopping can
                # only make it shorter.
                left = elapsed / (epoch + 1 - self.start_epoch) * (self.cfg.epochs - epoch - 1)
                timing = f"{seconds:.1f}s, about {format_duration(left)} left" if epoch + 1 < self.cfg.epochs \
                    else f"{seconds:.1f}s"
                if record["evaluated"]:
                    ema_map = record.get(f"ema_val_{self.job.iou_type}_mAP")
                    logger.info("epoch %d/%d: loss %.4f, %s mAP50:95 %.4f (ema %s), best %.4f, %s", epoch + 1,
                                self.cfg.epochs, record.get("train_loss", math.nan), self.job.iou_type,
                                record.get(f"val_{self.job.iou_type}_mAP", math.nan),
                                "-" if ema_map is None else f"{ema_map:.4f}",
                                max(self.best["regular"], self.best["ema"]), timing)
                else:
                    logger.info("epoch %d/%d: loss %.4f, not evaluated (--eval_interval %d), %s", epoch + 1,
                                self.cfg.epochs, record.get("train_loss", math.nan), self.cfg.eval_interval, timing)
                if record["stop"]:
                    stopped = True
                    logger.info("early stopping: no AP50:95 gain for %d epochs (patience %d)", self.early.counter,
                                self.cfg.early_stopping_patience)
                    break
        except KeyboardInterrupt:
            # Keep what the interrupted epoch learned; resuming restarts that epoch from these weights.
            interrupted = True
            logger.warning("interrupted: saving %s/checkpoint.pth before stopping", self.run_dir)
            self._save_last(epoch)
        results = {} if interrupted else self._finish()
        if not interrupted and self.dist.is_main:
            hint = near_zero_hint(max(self.best["regular"], self.best["ema"]), self.job.iou_type,
                                  {"stage": self.job.stage, **self.job.config}, epoch + 1)
            if hint:
                logger.warning(hint)
        barrier()
        self.run_logger.close()
        return FitResult(self.run_dir, results.get("best", dict(self.best)), epoch - self.start_epoch + 1, stopped,
                         interrupted, record)


def fit(job: TrainingJob, train_cfg: TrainConfig, optim_cfg: OptimConfig, dist_info: DistInfo) -> FitResult:
    """Train ``job`` and write its run folder (see the module docstring); returns where and how it ended."""
    return _Fit(job, train_cfg, optim_cfg, dist_info).run()
