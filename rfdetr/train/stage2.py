"""Stage 2: train a light mask head on a frozen stage-1 detector (instance segmentation).

``train_seg_stage2.py`` is a thin wrapper around :func:`run`. The model is a :class:`rfdetr.models.segmenter.Segmenter`:
the stage-1 :class:`~rfdetr.models.detector.RFDETRModel`, loaded completely and frozen (``requires_grad=False``, eval
mode, ``no_grad``), plus a :class:`~rfdetr.models.mask_head.MaskHead` or
:class:`~rfdetr.models.mask_head.MaskHeadNano` that reads the detector's projector map and decoder queries. Only the
head's parameters reach the optimizer.

Loss: the detector's queries are matched to the ground truth by the Hungarian matcher on class and box costs only
(crowd annotations dropped first); the matched queries get rfdetr's point-sampled mask BCE + Dice, on the last
decoder layer and on every earlier one (auxiliary). Class and box losses are not computed: they could not change a
frozen detector. Evaluation is COCO ``segm`` and ``bbox`` every ``--eval_interval`` epochs (default 5) and after the
last epoch; "best" and early stopping follow segm AP50:95 at those epochs (``--patience`` still counts epochs). Only
the masks COCOeval can count are pasted to full size and RLE-encoded
(:meth:`rfdetr.data.coco_eval.CocoEvaluator.scorable`), which leaves every number unchanged.

Run folder: ``{output}/segmentation_{size}_{resolution}_{n}``, with stage 1's files (see :mod:`rfdetr.train.fit`).
Checkpoints hold every detector key verbatim plus the head's keys (``segmentation_head.*`` for MaskHead, as in rfdetr
segmentation checkpoints; ``mask_head.*`` for MaskHeadNano), and ``mask_head``: the head's config, so that
``RFDETRNano(pretrain_weights=..., masks=True)`` rebuilds it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rfdetr.checkpoint import (
    CLASS_BIAS_KEY,
    CheckpointError,
    checkpoint_args,
    checkpoint_class_names,
    extract_state_dict,
    infer_model_config,
    load_checkpoint_file,
    load_into,
)
from rfdetr.checkpoint.files import state_sha256
from rfdetr.checkpoint.weights import resolve_weights
from rfdetr.config import ModelConfig
from rfdetr.data.coco import CocoDetection
from rfdetr.data.coco_classes import COCO_CLASSES
from rfdetr.data.coco_eval import CocoEvaluator
from rfdetr.data.loaders import build_dataloader
from rfdetr.data.transforms import multi_scale_sizes
from rfdetr.losses.criterion import SetCriterion
from rfdetr.losses.matcher import build_matcher
from rfdetr.models import PostProcess, RFDETRModel, build_model
from rfdetr.models.mask_head import MaskHead, MaskHeadConfig, MaskHeadNano, build_mask_head, resolve_mask_head_kind
from rfdetr.models.segmenter import Segmenter
from rfdetr.train.args import configs_from_args, ensure_dataset, model_config_for, pick_device
from rfdetr.train.config import LossConfig, OptimConfig, TrainConfig
from rfdetr.train.engine import evaluate
from rfdetr.train.feature_cache import CachedForward, FeatureStore, KeyedDataset
from rfdetr.train.fit import FitResult, TrainingJob, fit
from rfdetr.train.optim import autocast_dtype
from rfdetr.train.stage1 import build_datasets
from rfdetr.util.distributed import DistInfo, cleanup, init_distributed
from rfdetr.util.run_dir import to_jsonable
from rfdetr.util.seeding import seed_everything

logger = logging.getLogger(__name__)

# Stage 2's defaults where they differ from TrainConfig / OptimConfig (the scripts' flags show them):
# - no EMA: it would copy and average the frozen detector too, and evaluate every epoch twice;
# - 100 detections per image in evaluation: each one carries a full-size mask to RLE-encode;
# - evaluation every 5 epochs (and after the last): a cached epoch trains in a few seconds, and evaluating it took
#   about as long again (issue #27); patience still counts epochs;
# - a cosine schedule after one warm-up epoch, for a head that starts from random weights.
STAGE2_TRAIN_DEFAULTS: dict[str, Any] = {"use_ema": False, "eval_num_select": 100, "eval_interval": 5}
STAGE2_OPTIM_DEFAULTS: dict[str, Any] = {"lr": 5e-4, "lr_scheduler": "cosine", "warmup_epochs": 1.0}
# Flags stage 2 accepts (shared command lines keep working) but hides from --help: they set up the detector's own
# training (its losses, encoder learning rates, EMA of the whole model, encoder freezing), which a frozen detector
# ignores; the mask head trains at --lr with the mask losses, matched by class and box costs.
STAGE2_HIDDEN: tuple[str, ...] = (
    "freeze_encoder", "use_ema", "no_ema", "ema_decay", "ema_tau", "early_stopping_use_ema",
    "lr_encoder", "lr_vit_layer_decay", "lr_component_decay",
    "cls_loss_coef", "bbox_loss_coef", "giou_loss_coef", "set_cost_mask_ce", "set_cost_mask_dice", "focal_alpha",
    "ia_bce_loss", "sum_group_losses",
)
# The hidden flags that change nothing in stage 2 (EMA does work, on the whole model, so it is only hidden).
STAGE2_IGNORED: tuple[str, ...] = tuple(k for k in STAGE2_HIDDEN if k not in ("use_ema", "no_ema", "ema_decay",
                                                                               "ema_tau", "early_stopping_use_ema"))
# Looked for, in this order, in --stage1_run when --checkpoint is not given.
STAGE1_CHECKPOINTS: tuple[str, ...] = (
    "checkpoint_best_total.pth", "checkpoint_best_regular.pth", "checkpoint_best_ema.pth", "checkpoint.pth",
)
MASK_HEAD_PREFIXES: tuple[str, ...] = (MaskHead.key_prefix, MaskHeadNano.key_prefix)


class Stage2Error(ValueError):
    """A stage-2 setup problem; the message names the file or key and says what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# The detector checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def find_checkpoint(stage1_run: str | None, checkpoint: str | None) -> Path:
    """``--checkpoint`` (a path or an official weight name), else the best checkpoint of ``--stage1_run``.

    Raises:
        Stage2Error: neither is given, the run folder does not exist, or it holds no checkpoint.
    """
    if stage1_run is not None and not Path(stage1_run).is_dir():
        raise Stage2Error(f"--stage1_run {stage1_run} is not a folder: pass the stage-1 run folder, e.g. "
                          "runs/detector_nano_384_1")
    if checkpoint is not None:
        return resolve_weights(checkpoint)
    if stage1_run is None:
        raise Stage2Error("no detector: pass --checkpoint FILE (e.g. the output of shrink_head.py) or --stage1_run "
                          "DIR (its best checkpoint is used)")
    for name in STAGE1_CHECKPOINTS:
        path = Path(stage1_run) / name
        if path.is_file():
            logger.info("detector checkpoint: %s", path)
            return path
    raise Stage2Error(f"--stage1_run {stage1_run} holds none of {', '.join(STAGE1_CHECKPOINTS)}: did stage 1 finish? "
                      "Pass --checkpoint FILE to choose one")


def split_mask_head(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(detector keys, mask-head keys): the latter are those under ``segmentation_head.`` or ``mask_head.``."""
    head = {k: v for k, v in state.items() if k.startswith(MASK_HEAD_PREFIXES)}
    return {k: v for k, v in state.items() if k not in head}, head


def shrink_command(path: Path, dataset: Path, num_classes: int) -> str:
    """The shrink_head.py command that fits ``path``'s class heads to ``dataset``."""
    out = path.with_name(f"checkpoint_{num_classes}class.pth")
    return shlex.join(["python", "shrink_head.py", "--in_ckpt", str(path), "--out_ckpt", str(out), "--dataset",
                       str(dataset)])


def check_classes(path: Path, ckpt: dict[str, Any], state: dict[str, torch.Tensor], dataset: Path,
                  names: list[str]) -> None:
    """The detector must predict exactly the dataset's classes, in its order (masks are trained per detection).

    Raises:
        Stage2Error: another class count or order, with the shrink_head.py command that fixes it (or, when the
            detector lacks some of the dataset's classes, the advice to train stage 1 on this dataset).
    """
    if CLASS_BIAS_KEY not in state:
        raise Stage2Error(f"{path} has no class head ('{CLASS_BIAS_KEY}'): it was stripped; train stage 1 first")
    rows = int(state[CLASS_BIAS_KEY].shape[0])
    ckpt_names = checkpoint_class_names(ckpt)
    same_count = rows == len(names) + 1
    if same_count and (ckpt_names is None or list(ckpt_names) == names):
        if ckpt_names is None:
            logger.warning("%s records no class names: assuming its %d classes are the dataset's %s, in order",
                           path, rows - 1, names)
        return
    described = f"{rows - 1} classes" + (f" {list(ckpt_names)}" if ckpt_names else "")
    lines = [f"{path}: the detector has {described}, the dataset {dataset} has {len(names)} {names}."]
    # Names the head can be cut to: its own, or COCO's for an official 91-row checkpoint without names.
    known = list(ckpt_names or ()) or ([n for n in COCO_CLASSES if n != "N/A"] if rows == len(COCO_CLASSES) else [])
    unknown = sorted(set(names) - set(known)) if known else []
    if unknown:
        lines.append(f"The detector was never trained on {unknown}: train stage 1 on this dataset "
                     f"(train_detector_stage1.py --dataset {dataset} ...), then run stage 2 on its checkpoint.")
    else:
        lines += ["Stage 2 trains masks for the detector's own classes, so first cut its head to the dataset's:",
                  f"    {shrink_command(path, dataset, len(names))}",
                  f"then pass --checkpoint {shlex.quote(str(path.with_name(f'checkpoint_{len(names)}class.pth')))}"]
    raise Stage2Error("\n".join(lines))


def detector_config(size: str, resolution: int | None, ckpt: dict[str, Any], names: list[str]) -> ModelConfig:
    """The detector's architecture: the preset at the checkpoint's (or ``--resolution``'s) input size.

    The resolution defaults to what the checkpoint records (ours: ``model_config``; rfdetr: ``args``), so stage 2 sees
    the images at the size stage 1 trained on. Query counts recorded in our ``model_config`` are kept.
    """
    recorded = ckpt.get("model_config") if isinstance(ckpt.get("model_config"), dict) else {}
    if resolution is None:
        value = recorded.get("resolution", checkpoint_args(ckpt).get("resolution"))
        resolution = value if isinstance(value, int) and not isinstance(value, bool) else None
    cfg = model_config_for(size, resolution, len(names), names)
    if recorded.get("name") == size:
        cfg = cfg.replace(**{k: recorded[k] for k in ("num_queries", "num_select") if isinstance(recorded.get(k), int)})
    return cfg


def load_detector(model: RFDETRModel, state: dict[str, torch.Tensor], path: Path, size: str) -> None:
    """Load every detector weight of ``state`` into ``model``, or fail listing every key that did not load.

    Allowed adaptations are those that keep the function (position embeddings resampled to another resolution,
    query tables cut per group); any missing, unexpected, re-initialised or mismatched key is an error.

    Raises:
        Stage2Error: with the complete lists, and a ``--size`` hint when the tensors look like another preset.
    """
    report = load_into(model, state, strict_detector=False)
    problems = [(f"missing from the checkpoint ({len(report.missing)})", report.missing),
                (f"unexpected ({len(report.unexpected)})", report.unexpected),
                (f"of another shape ({len(report.mismatched)})",
                 [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in report.mismatched]),
                (f"re-initialised class heads ({len(report.reinitialized)})", report.reinitialized)]
    problems = [(what, keys) for what, keys in problems if keys]
    if not problems:
        logger.info("loaded all %d detector tensors from %s%s", len(model.state_dict()), path,
                    "".join(f"; {what} {keys}" for what, keys in (("interpolated", report.interpolated),
                                                                  ("sliced", report.sliced)) if keys))
        return
    lines = [f"{path} does not load completely into the {size} detector (every detector weight must load):"]
    for what, keys in problems:
        lines.append(f"  keys {what}:")
        lines += [f"    {k}" for k in keys]
    try:
        found = infer_model_config(state).name
        if found != size:
            lines.append(f"its tensors look like a {found} detector: pass --size {found}")
    except CheckpointError:
        pass
    raise Stage2Error("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------------
# Model, loss, optimizer groups
# ---------------------------------------------------------------------------------------------------------------------


def build_stage2_criterion(loss: LossConfig, num_layers: int) -> SetCriterion:
    """Mask losses only, on queries matched by class and box costs (one query group: the detector is in eval mode).

    Keys: ``loss_mask_ce``, ``loss_mask_dice`` and, with ``loss.aux_loss``, ``_{i}`` for decoder layers
    ``0 .. num_layers - 2``.
    """
    matcher = build_matcher(cost_class=loss.set_cost_class, cost_bbox=loss.set_cost_bbox,
                            cost_giou=loss.set_cost_giou, use_masks=False)
    suffixes = [""] + ([f"_{i}" for i in range(num_layers - 1)] if loss.aux_loss else [])
    weights = {f"loss_mask_ce{s}": loss.mask_ce_loss_coef for s in suffixes}
    weights.update({f"loss_mask_dice{s}": loss.mask_dice_loss_coef for s in suffixes})
    return SetCriterion(matcher, weights, losses=("masks",), group_detr=1, focal_alpha=loss.focal_alpha,
                        ia_bce=loss.ia_bce_loss, mask_point_sample_ratio=loss.mask_point_sample_ratio)


def mask_head_param_groups(optim: OptimConfig):  # noqa: ANN201
    """The optimizer-group builder: the mask head's parameters only, at ``--seg_lr``."""

    def build(model: Segmenter) -> list[dict[str, Any]]:
        trainable_detector = [n for n, p in model.detector.named_parameters() if p.requires_grad]
        if trainable_detector:
            raise RuntimeError(f"stage 2 must not train the detector, but {trainable_detector[:5]} require grad")
        params = [p for p in model.mask_head.parameters() if p.requires_grad]
        return [{"params": params, "lr": optim.lr, "weight_decay": optim.weight_decay, "name": "mask_head"}]

    return build


def parameter_counts(model: Segmenter) -> dict[str, int]:
    """Trainable and frozen parameter counts, in scalars (elements), not tensors."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen, "mask_head": sum(p.numel() for p in model.mask_head.parameters())}


def build_segmenter(detector: RFDETRModel, head_cfg: MaskHeadConfig, head_state: dict[str, torch.Tensor],
                    path: Path, freeze_detector: bool = True) -> Segmenter:
    """Freeze ``detector`` (stage 2; single stage trains it) and attach a new head, initialised from ``head_state``
    when the checkpoint has this head.

    Raises:
        Stage2Error: the checkpoint's head tensors have this head's prefix but do not fit it.
    """
    head = build_mask_head(head_cfg)
    prefix = head_cfg.key_prefix
    own = {k[len(prefix):]: v for k, v in head_state.items() if k.startswith(prefix)}
    if own:
        try:
            head.load_state_dict(own, strict=True)
        except RuntimeError as err:
            raise Stage2Error(f"{path}: its {prefix}* tensors do not fit a {head_cfg.kind} mask head of "
                              f"{head_cfg}: {str(err).splitlines()[0]}") from None
        logger.info("mask head initialised from %s (%d tensors)", path, len(own))
    elif head_state:
        logger.warning("%s holds another mask head (%d tensors): training a new %s head", path, len(head_state),
                       head_cfg.kind)
    return Segmenter(detector, head, freeze_detector=freeze_detector)


def load_mask_head_weights(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``--mask_head_weights``: (checkpoint, its mask-head tensors) of a stage-2 checkpoint.

    Raises:
        Stage2Error: the file is missing, or it holds no mask head.
    """
    if not path.is_file():
        raise Stage2Error(f"--mask_head_weights {path}: no such file (give a stage-2 checkpoint, e.g. a run's "
                          "checkpoint_best_total.pth)")
    ckpt = load_checkpoint_file(path)
    _, head_state = split_mask_head(extract_state_dict(ckpt))
    if not head_state or not isinstance(ckpt.get("mask_head"), dict):
        raise Stage2Error(f"--mask_head_weights {path}: not a stage-2 checkpoint (no 'mask_head' config or no "
                          f"{' / '.join(p + '*' for p in MASK_HEAD_PREFIXES)} tensors)")
    return ckpt, head_state


def mask_head_config(requested: str, size: str, cfg: ModelConfig, ckpt: dict[str, Any], resume: bool
                     ) -> MaskHeadConfig:
    """``--mask_head`` resolved; a stage-2 checkpoint's recorded head wins on resume or with ``auto``."""
    stored = ckpt.get("mask_head")
    if isinstance(stored, dict) and (resume or requested == "auto"):
        return MaskHeadConfig.from_dict(stored)
    return MaskHeadConfig(resolve_mask_head_kind(requested, size), cfg.hidden_dim, cfg.dec_layers,
                          downsample_ratio=cfg.mask_downsample_ratio)


def check_cache_settings(cache: str | None, train_cfg: TrainConfig) -> None:
    """``--cache_features`` needs every epoch to feed the same pixels.

    Raises:
        Stage2Error: augmentation or multi-scale is on.
    """
    if cache is None:
        return
    on = [name for name in ("augment", "multi_scale", "do_random_resize_via_padding") if getattr(train_cfg, name)]
    if on:
        raise Stage2Error(f"--cache_features computes each image's detector outputs once, so every epoch must see the "
                          f"same pixels, but {', '.join(on)} is on: add "
                          f"{' '.join(f'--{n} 0' for n in on)} (or drop --cache_features)")


def resume_detector_source(resume: Path, ckpt: dict[str, Any]) -> tuple[Path, dict[str, Any], str] | None:
    """Where a stage-2 ``checkpoint.pth`` (mask head only) says its frozen detector came from, checked by hash.

    Returns:
        (the detector checkpoint, its content, the detector hash), or None for a full checkpoint (detector included:
        older runs).

    Raises:
        Stage2Error: the source file is gone, or its detector is not the one this run trained with.
    """
    ref = ckpt.get("detector_source")
    if not isinstance(ref, dict):
        return None
    path = Path(str(ref.get("path")))
    if not path.is_file():
        raise Stage2Error(f"--resume {resume}: its frozen detector came from {path}, which no longer exists: restore "
                          "that file (the run keeps only its mask head in checkpoint.pth), or start a new stage-2 run")
    source_ckpt = load_checkpoint_file(path)
    detector_state, _ = split_mask_head(extract_state_dict(source_ckpt))
    digest = state_sha256(detector_state)
    if digest != ref.get("sha256"):
        raise Stage2Error(f"--resume {resume}: the detector in {path} has changed since this run started (sha256 "
                          f"{digest[:12]}, the run recorded {str(ref.get('sha256'))[:12]}): restore the original file "
                          "or start a new stage-2 run")
    return path, source_ckpt, digest


def _load_mask_head_only(model: Segmenter, state: dict[str, torch.Tensor]) -> None:
    """Resume: the mask head from ``checkpoint.pth``'s ``model`` (its other keys, if any, are the detector, which
    :func:`build_job` already loaded from its source)."""
    prefix = model.mask_head.key_prefix
    model.mask_head.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                    strict=True)


def _cache_fingerprint(path: Path, cfg: ModelConfig, root: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"checkpoint": str(path.resolve()), "checkpoint_bytes": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "resolution": cfg.resolution, "dataset": str(root.resolve())}


# ---------------------------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Stage2Setup:
    """What :func:`build_job` made: the job for :func:`rfdetr.train.fit.fit` and what it was made from.

    Attributes:
        job: the training job (its ``model`` is the :class:`Segmenter`).
        store: the feature cache (``--cache_features``), else None.
        source: the checkpoint the detector (and maybe the head) came from.
        head_loaded: whether the mask head's weights came from that checkpoint.
    """

    job: TrainingJob
    store: FeatureStore | None
    source: Path
    head_loaded: bool


def build_job(args: argparse.Namespace, train_cfg: TrainConfig, optim_cfg: OptimConfig, loss_cfg: LossConfig,
              dist_info: DistInfo) -> Stage2Setup:
    """Everything :func:`rfdetr.train.fit.fit` needs, from the parsed flags of ``train_seg_stage2.py``."""
    check_cache_settings(args.cache_features, train_cfg)
    root = ensure_dataset(args.dataset)
    source = Path(train_cfg.resume) if train_cfg.resume else find_checkpoint(args.stage1_run, args.checkpoint)
    ckpt = load_checkpoint_file(source)
    detector_state, head_state = split_mask_head(extract_state_dict(ckpt))
    if not train_cfg.resume and isinstance(ckpt.get("detector_source"), dict):
        raise Stage2Error(f"{source} is a stage-2 run's resume state (its mask head only): pass --resume {source} to "
                          f"continue that run, or --checkpoint {source.with_name('checkpoint_best_total.pth')}")
    resumed = ckpt if train_cfg.resume else None
    referenced = resume_detector_source(source, ckpt) if resumed is not None else None
    if referenced is not None:  # a slim checkpoint.pth: the detector comes from its recorded source, verified
        source, ckpt, digest = referenced
        detector_state, _ = split_mask_head(extract_state_dict(ckpt))
    else:
        digest = state_sha256(detector_state)
    probe = CocoDetection(root, "valid")  # class names and ids without decoding any image
    names = probe.class_names
    check_classes(source, ckpt, detector_state, root, names)
    cfg = detector_config(args.size, args.resolution, ckpt, names)
    detector = build_model(cfg)
    load_detector(detector, detector_state, source, args.size)
    head_source, head_ckpt = source, ckpt
    if referenced is not None and resumed is not None:
        head_source, head_ckpt = Path(str(train_cfg.resume)), resumed
    weights = getattr(args, "mask_head_weights", None)
    if weights and not train_cfg.resume:  # a resumed run restores its own head
        head_source = Path(weights)
        head_ckpt, head_state = load_mask_head_weights(head_source)
    head_cfg = mask_head_config(args.mask_head, args.size, cfg, head_ckpt, bool(train_cfg.resume))
    model = build_segmenter(detector, head_cfg, head_state, head_source)
    head_loaded = any(k.startswith(head_cfg.key_prefix) for k in head_state)
    counts = parameter_counts(model)
    logger.info("parameters: %s trainable (%s mask head), %s frozen (detector)", f"{counts['trainable']:,}",
                type(model.mask_head).__name__, f"{counts['frozen']:,}")

    train, valid, test = build_datasets(root, cfg, train_cfg, masks=True)
    if len(train) == 0:
        raise Stage2Error(f"{train.annotation_file}: no image has an instance mask (polygon or RLE): stage 2 needs "
                          "them; check with validate_setup.py --stage 2")
    store: FeatureStore | None = None
    forward = None
    if args.cache_features is not None:
        directory = None if args.cache_features == "memory" else args.cache_features
        store = FeatureStore(directory, _cache_fingerprint(source, cfg, root))
        # A head that reads the image (MaskHeadDynamic) gets its pixels from the cache too, never re-decoded.
        forward = CachedForward(store, keep_pixels="pixels" in getattr(model.mask_head, "reads", ()))
        # Only the training split skips its images once cached: validation images are also drawn in TensorBoard.
        train, valid = KeyedDataset(train, "train", store), KeyedDataset(valid, "valid")
        test = KeyedDataset(test, "test") if test is not None else None
    scales = (multi_scale_sizes(cfg.resolution, cfg.input_divisor, train_cfg.expanded_scales)
              if train_cfg.multi_scale and not train_cfg.do_random_resize_via_padding else [])
    job = TrainingJob(
        stage="seg_stage2", model=model, model_cfg=cfg, class_names=names,
        category_ids=list(probe.label_to_category_id),
        criterion=build_stage2_criterion(loss_cfg, cfg.dec_layers), postprocess=PostProcess(train_cfg.eval_num_select),
        train_set=train, val_set=valid, test_set=test, param_groups=mask_head_param_groups(optim_cfg),
        iou_type="segm", run_prefix=f"segmentation_{args.size}_{cfg.resolution}", forward=forward,
        state_dict=lambda m: m.checkpoint_state_dict(), load_state_dict=lambda m, s: m.load_checkpoint_state_dict(s),
        checkpoint_extra={"mask_head": head_cfg.to_dict(), "detector_checkpoint": str(source)},
        # checkpoint.pth keeps the trained head only: the frozen detector would be its 99.9%, and it is known from
        # its source file, checked by this hash on resume (best / numbered checkpoints stay complete models).
        resume_state_dict=lambda m: m.mask_head_state_dict(), load_resume_state_dict=_load_mask_head_only,
        resume_extra={"detector_source": {"path": str(source.resolve()), "sha256": digest}},
        config=to_jsonable({"args": vars(args), "detector_checkpoint": str(source), "model": cfg.to_dict(),
                            "mask_head": head_cfg.to_dict(), "parameters": counts, "train": train_cfg,
                            "optim": optim_cfg, "loss": loss_cfg, "train_scales": scales,
                            "world_size": dist_info.world_size}),
    )
    return Stage2Setup(job, store, source, head_loaded)


def eval_only(job: TrainingJob, train_cfg: TrainConfig, dist_info: DistInfo) -> dict[str, Any]:
    """Evaluate a stage-2 checkpoint's detector + mask head on valid and print the COCO summaries."""
    model = job.model.to(dist_info.device)
    evaluator = CocoEvaluator.from_dataset(job.val_set, iou_types=("bbox", "segm"), max_dets=train_cfg.eval_max_dets)
    loader = build_dataloader(job.val_set, train_cfg.batch_size, train=False, workers=train_cfg.num_workers)
    metrics = evaluate(model, job.criterion, job.postprocess, loader, evaluator, dist_info.device,
                       autocast_dtype(dist_info.device, train_cfg.amp, train_cfg.amp_dtype), forward=job.forward)
    if dist_info.is_main:
        print(evaluator.summary)
    return metrics


def run(args: argparse.Namespace) -> FitResult | dict[str, Any]:
    """Build the stage-2 job from the flags of ``train_seg_stage2.py`` and train it (or evaluate, ``--eval_only``)."""
    train_cfg, optim_cfg, loss_cfg = configs_from_args(args)
    check_cache_settings(args.cache_features, train_cfg)  # before the (slow) model and data setup
    ignored = [f"--{k}" for k in getattr(args, "_explicit", ()) if k in STAGE2_IGNORED]
    if ignored:
        logger.warning("%s: no effect in stage 2 (the detector is frozen; only the mask head trains, at --lr with the "
                       "mask losses)", ", ".join(ignored))
    dist_info = init_distributed(pick_device(train_cfg.device))
    try:
        seed_everything(train_cfg.seed, dist_info.rank)
        setup = build_job(args, train_cfg, optim_cfg, loss_cfg, dist_info)
        if args.eval_only:
            if not setup.head_loaded:
                raise Stage2Error(f"--eval_only: {setup.source} has no trained mask head of this kind; pass a stage-2 "
                                  "checkpoint with --checkpoint")
            return eval_only(setup.job, train_cfg, dist_info)
        result = fit(setup.job, train_cfg, optim_cfg, dist_info)
        store = setup.store
        if store is not None:
            logger.info("feature cache: %d images, %.1f MB, %d hits / %d misses", len(store), store.nbytes / 2**20,
                        store.hits, store.misses)
        return result
    finally:
        cleanup()

