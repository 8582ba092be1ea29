"""Single stage: train detection and instance masks together (rfdetr's own segmentation recipe).

``train_seg_single_stage.py`` is a thin wrapper around :func:`run`. Two kinds of model:

* **Segmentation presets** (``seg-nano`` ... ``seg-2xlarge``, ``seg-preview``): rfdetr's segmentation model (an
  :class:`~rfdetr.models.detector.RFDETRModel` with its ``segmentation_head``), by default started from the official
  ``rf-detr-seg-*`` weights. Checkpoints have exactly rfdetr's keys, so rfdetr 1.11.2 loads them
  (``RFDETRSegNano(pretrain_weights=path)``), and rfdetr's segmentation checkpoints load here completely.
* **Detection presets** (``nano`` ... ``large``): the detector plus a stage-2 mask head (``--mask_head``: MaskHead,
  MaskHeadNano or ``auto``) in a :class:`~rfdetr.models.segmenter.Segmenter` with nothing frozen, started from a
  detection checkpoint (by default the size's official COCO weights); checkpoints are laid out as stage 2's (detector
  keys verbatim, the head's under its prefix, and its ``mask_head`` config).

Loss (spec ``rfdetr_training.md`` section 4, ``SegmentationTrainConfig``): the Hungarian matcher adds point-sampled mask
BCE and Dice costs to the class and box costs; every output set (final decoder layer, each earlier layer, the two-stage
encoder proposals; all 13 query groups) gets IA-BCE (weight 5), L1 and GIoU, and point-sampled mask BCE + Dice. In
training the model hands its masks to the matcher and the loss in factorised form
(:class:`~rfdetr.losses.mask_logits.SparseMaskLogits`), so no dense ``B x G*Q x H/4 x W/4`` logits are ever built.

Everything else is stage 1's and stage 2's: the flags (:func:`rfdetr.train.args.add_training_arguments`), data,
engine and :func:`rfdetr.train.fit.fit` (run folder ``{output}/seg_single_{size}_{resolution}_{n}``, config.json,
log.jsonl, tb/, atomic checkpoints, exact resume, EMA, DDP). COCO ``bbox`` and ``segm`` are evaluated every epoch (every
``--eval_interval`` epochs and after the last, if set); "best" and early stopping follow segm AP50:95.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfdetr.checkpoint import extract_state_dict, load_checkpoint_file
from rfdetr.checkpoint.weights import resolve_weights
from rfdetr.config import SEGMENTATION_PRESETS, TINY_SEG_CONFIG, ModelConfig
from rfdetr.data.coco import CocoDetection
from rfdetr.data.transforms import multi_scale_sizes
from rfdetr.models import PostProcess, RFDETRModel, build_model
from rfdetr.models.mask_head import MaskHeadConfig
from rfdetr.models.segmenter import Segmenter
from rfdetr.train.args import (
    configs_from_args,
    default_pretrained,
    detection_sizes,
    ensure_dataset,
    load_pretrained,
    load_pretrained_state,
    model_config_for,
    parse_exclude,
    pick_device,
)
from rfdetr.train.config import LossConfig, OptimConfig, TrainConfig
from rfdetr.train.fit import FitResult, TrainingJob, fit
from rfdetr.train.stage1 import build_criterion_for, build_datasets, detector_param_groups, parameter_counts
from rfdetr.train.stage2 import build_segmenter, eval_only, mask_head_config, split_mask_head
from rfdetr.util.distributed import DistInfo, cleanup, init_distributed
from rfdetr.util.run_dir import to_jsonable
from rfdetr.util.seeding import seed_everything

logger = logging.getLogger(__name__)

STAGE = "seg_single"
# Single-stage defaults where they differ from TrainConfig: 100 detections per image in training-time evaluation (as
# stage 2: each one carries a full-size mask to RLE-encode; rfdetr's seg presets also predict 100 / 200 / 300).
SINGLE_STAGE_TRAIN_DEFAULTS: dict[str, Any] = {"eval_num_select": 100}
# rfdetr excludes nothing from the pretrained weights; the official seg weights load completely (stage 1 keeps the
# seed fork's projector exclusion instead).
SINGLE_STAGE_PRETRAIN_EXCLUDE = ""


class SingleStageError(ValueError):
    """A single-stage setup problem; the message names the flag, file or value and says what to do."""


def single_stage_sizes() -> tuple[str, ...]:
    """``seg-nano`` (the default) and the other segmentation presets, the detection presets, then test configs."""
    seg = ("seg-nano", *(s for s in SEGMENTATION_PRESETS if s != "seg-nano"))
    return (*seg, *detection_sizes(), TINY_SEG_CONFIG.name)


def pretrained_name(args: argparse.Namespace, size: str) -> str | None:
    """``--pretrained`` resolved: None for ``none`` / empty, else a path or official name (default: the size's)."""
    name = args.pretrained if args.pretrained is not None else default_pretrained(size)
    return None if not name or name.lower() == "none" else name


# ---------------------------------------------------------------------------------------------------------------------
# The two kinds of model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SingleStageModel:
    """The model to train and how its checkpoints are laid out.

    Attributes:
        model: an :class:`RFDETRModel` with ``segmentation_head`` (seg presets) or a trainable :class:`Segmenter`.
        head_cfg: the Segmenter's mask-head config (None for seg presets, whose head is part of the preset).
        source: the checkpoint the weights came from (None: random initialisation or resume).
    """

    model: RFDETRModel | Segmenter
    head_cfg: MaskHeadConfig | None
    source: Path | None

    def job_fields(self) -> dict[str, Any]:
        """The :class:`TrainingJob` fields that differ between the two kinds (checkpoint layout)."""
        if self.head_cfg is None:
            return {}
        return {
            "state_dict": lambda m: m.checkpoint_state_dict(),
            "load_state_dict": lambda m, s: m.load_checkpoint_state_dict(s),
            "checkpoint_extra": {"mask_head": self.head_cfg.to_dict()},
        }


def build_seg_preset_model(cfg: ModelConfig, pretrained: str | None, exclude: list[str]) -> SingleStageModel:
    """rfdetr's segmentation model for ``cfg``, loaded from ``pretrained`` (official seg weights, an rfdetr or our
    checkpoint) when given. Class heads of another class count are re-initialised.

    Raises:
        CheckpointError: the weights do not fit (another architecture, unexpected keys), listing the keys.
    """
    model = build_model(cfg)
    source = None
    if pretrained is not None:
        source = resolve_weights(pretrained)
        load_pretrained(model, str(source), exclude)
    else:
        logger.info("no pretrained weights: training %s from random initialisation", cfg.name)
    return SingleStageModel(model, None, source)


def build_detector_segmenter(
    cfg: ModelConfig, size: str, mask_head: str, pretrained: str | None, exclude: list[str], resume: str | None
) -> SingleStageModel:
    """A detection preset plus a mask head, both trainable.

    The detector loads ``pretrained`` (a detection checkpoint; a stage-2 or single-stage checkpoint's mask head of the
    chosen kind initialises the head too). On resume the head's kind is the one the checkpoint records.

    Raises:
        CheckpointError: the detector weights do not fit.
    """
    detector = build_model(cfg)
    ckpt: dict[str, Any] = {}
    source = None
    head_state: dict[str, Any] = {}
    if resume:
        ckpt = load_checkpoint_file(resume)
    elif pretrained is not None:
        source = resolve_weights(pretrained)
        ckpt = load_checkpoint_file(source)
        detector_state, head_state = split_mask_head(extract_state_dict(ckpt))
        load_pretrained_state(detector, detector_state, source, exclude)
    else:
        logger.info("no pretrained weights: training the %s detector from random initialisation", size)
    head_cfg = mask_head_config(mask_head, size, cfg, ckpt, resume=bool(resume))
    model = build_segmenter(detector, head_cfg, head_state, source or Path(resume or "-"), freeze_detector=False)
    return SingleStageModel(model, head_cfg, source)


# ---------------------------------------------------------------------------------------------------------------------
# Job and run
# ---------------------------------------------------------------------------------------------------------------------


def build_job(
    args: argparse.Namespace, train_cfg: TrainConfig, optim_cfg: OptimConfig, loss_cfg: LossConfig, dist_info: DistInfo
) -> tuple[TrainingJob, SingleStageModel]:
    """Everything :func:`rfdetr.train.fit.fit` needs, from the parsed flags of ``train_seg_single_stage.py``.

    Raises:
        SingleStageError: ``--mask_head`` with a segmentation preset, or a training split without any mask.
        CheckpointError / WeightsDownloadError: ``--pretrained`` cannot be read or does not fit.
    """
    root = ensure_dataset(args.dataset)
    probe = CocoDetection(root, "valid")  # class names without decoding any image
    cfg = model_config_for(args.size, args.resolution, len(probe.class_names), probe.class_names)
    pretrained = None if train_cfg.resume else pretrained_name(args, args.size)
    exclude = parse_exclude(args.pretrain_exclude_keys) + ["_kp_active_mask"]
    if cfg.segmentation_head:
        if args.mask_head != "auto":
            raise SingleStageError(
                f"--mask_head {args.mask_head}: --size {args.size} is a segmentation preset and "
                "trains its own rfdetr segmentation head; drop --mask_head (it is for detection "
                "sizes such as --size nano)"
            )
        built = build_seg_preset_model(cfg, pretrained, exclude)
    else:
        built = build_detector_segmenter(cfg, args.size, args.mask_head, pretrained, exclude, train_cfg.resume)
    counts = parameter_counts(built.model)
    logger.info(
        "%s: %s trainable parameters (%s)",
        args.size,
        f"{counts['trainable']:,}",
        "rfdetr segmentation head" if built.head_cfg is None else f"{built.head_cfg.kind} mask head",
    )

    train, valid, test = build_datasets(root, cfg, train_cfg, masks=True)
    if len(train) == 0:
        raise SingleStageError(
            f"{train.annotation_file}: no image has an instance mask (polygon or RLE): "
            "segmentation training needs them; check with validate_setup.py --stage 2"
        )
    scales = (
        multi_scale_sizes(cfg.resolution, cfg.input_divisor, train_cfg.expanded_scales)
        if train_cfg.multi_scale and not train_cfg.do_random_resize_via_padding
        else []
    )
    head = built.head_cfg.to_dict() if built.head_cfg is not None else None
    job = TrainingJob(
        stage=STAGE,
        model=built.model,
        model_cfg=cfg,
        class_names=list(cfg.class_names),
        category_ids=list(probe.label_to_category_id),
        criterion=build_criterion_for(cfg, loss_cfg, segmentation=True),
        postprocess=PostProcess(train_cfg.eval_num_select),
        train_set=train,
        val_set=valid,
        test_set=test,
        param_groups=detector_param_groups(cfg, optim_cfg, train_cfg.freeze_encoder),
        iou_type="segm",
        run_prefix=f"{STAGE}_{args.size}_{cfg.resolution}",
        config=to_jsonable(
            {
                "args": vars(args),
                "pretrained": str(built.source) if built.source else None,
                "model": cfg.to_dict(),
                "mask_head": head,
                "parameters": counts,
                "train": train_cfg,
                "optim": optim_cfg,
                "loss": loss_cfg,
                "train_scales": scales,
                "world_size": dist_info.world_size,
            }
        ),
        **built.job_fields(),
    )
    return job, built


def load_job_weights(job: TrainingJob, path: str) -> None:
    """Load the ``model`` weights of checkpoint ``path`` into ``job.model`` strictly (``--eval_only --resume``)."""
    state = extract_state_dict(load_checkpoint_file(path))
    if job.load_state_dict is not None:
        job.load_state_dict(job.model, state)
    else:
        job.model.load_state_dict(state, strict=True)


def run(args: argparse.Namespace) -> FitResult | dict[str, Any]:
    """Build the single-stage job from the flags of ``train_seg_single_stage.py`` and train it (or evaluate it,
    ``--eval_only``, with the weights of ``--resume`` or ``--pretrained``)."""
    train_cfg, optim_cfg, loss_cfg = configs_from_args(args)
    dist_info = init_distributed(pick_device(train_cfg.device))
    try:
        seed_everything(train_cfg.seed, dist_info.rank)
        job, _ = build_job(args, train_cfg, optim_cfg, loss_cfg, dist_info)
        if args.eval_only:
            if train_cfg.resume:
                load_job_weights(job, train_cfg.resume)
            return eval_only(job, train_cfg, dist_info)
        return fit(job, train_cfg, optim_cfg, dist_info)
    finally:
        cleanup()
