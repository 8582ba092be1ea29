"""Stage 1: train the RF-DETR detector (boxes and classes) on a COCO dataset.

``train_detector_stage1.py`` is a thin wrapper around :func:`run`. The run folder is
``{output}/detector_{size}_{resolution}_{n}``; see :mod:`rfdetr.train.fit` for its files.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from torch import nn

from rfdetr.checkpoint import extract_state_dict, load_checkpoint_file
from rfdetr.config import ModelConfig
from rfdetr.data.annotations import split_exists
from rfdetr.data.coco import CocoDetection, require_readable_images
from rfdetr.data.coco_eval import CocoEvaluator
from rfdetr.data.transforms import eval_transforms, multi_scale_sizes, train_transforms
from rfdetr.losses import build_criterion
from rfdetr.models import PostProcess, RFDETRModel, build_model
from rfdetr.train.args import (
    configs_from_args,
    default_pretrained,
    ensure_dataset,
    load_pretrained,
    model_config_for,
    parse_exclude,
    pick_device,
)
from rfdetr.train.config import LossConfig, OptimConfig, TrainConfig
from rfdetr.train.engine import evaluate
from rfdetr.train.fit import FitResult, TrainingJob, fit
from rfdetr.train.optim import autocast_dtype, param_groups
from rfdetr.util.distributed import DistInfo, cleanup, init_distributed
from rfdetr.util.run_dir import to_jsonable
from rfdetr.util.seeding import seed_everything

logger = logging.getLogger(__name__)


def build_datasets(root: Path, cfg: ModelConfig, train_cfg: TrainConfig, masks: bool = False
                   ) -> tuple[CocoDetection, CocoDetection, CocoDetection | None]:
    """Train (augmented), valid and optional test splits for ``cfg``'s resolution.

    Every image is checked first (:func:`rfdetr.data.coco.require_readable_images`), so an unreadable one stops the
    script with one line before any run folder exists, not a DataLoader worker mid-epoch.
    """
    transforms = train_transforms(cfg.resolution, multi_scale=train_cfg.multi_scale,
                                  expanded_scales=train_cfg.expanded_scales, divisor=cfg.input_divisor)
    if not train_cfg.augment:
        transforms = eval_transforms(cfg.resolution)
    train = CocoDetection(root, "train", masks=masks, skip_images_without_masks=masks, transforms=transforms,
                          substitute_unreadable=True)
    valid = CocoDetection(root, "valid", masks=masks, transforms=eval_transforms(cfg.resolution))
    test = None
    if split_exists(root, "test"):
        test = CocoDetection(root, "test", masks=masks, transforms=eval_transforms(cfg.resolution))
    if train.class_names != valid.class_names:
        raise ValueError(f"{root}: train classes {train.class_names} differ from valid classes {valid.class_names}")
    require_readable_images(train, valid, test)
    return train, valid, test


def build_criterion_for(cfg: ModelConfig, loss: LossConfig, segmentation: bool = False) -> Any:
    """The set criterion of ``cfg`` with the loss / matcher weights of ``loss``."""
    return build_criterion(
        dec_layers=cfg.dec_layers if loss.aux_loss else 1, group_detr=cfg.group_detr,
        cls_loss_coef=loss.cls_loss_coef, bbox_loss_coef=loss.bbox_loss_coef, giou_loss_coef=loss.giou_loss_coef,
        focal_alpha=loss.focal_alpha, ia_bce_loss=loss.ia_bce_loss, set_cost_class=loss.set_cost_class,
        set_cost_bbox=loss.set_cost_bbox, set_cost_giou=loss.set_cost_giou, set_cost_mask_ce=loss.set_cost_mask_ce,
        set_cost_mask_dice=loss.set_cost_mask_dice, segmentation=segmentation,
        mask_ce_loss_coef=loss.mask_ce_loss_coef, mask_dice_loss_coef=loss.mask_dice_loss_coef,
        mask_point_sample_ratio=loss.mask_point_sample_ratio)


def detector_param_groups(cfg: ModelConfig, optim: OptimConfig, freeze_encoder: bool = False):  # noqa: ANN201
    """The optimizer-group builder of the whole detector (ViT layer-wise decay, spec section 3).

    The model may also be a detector wrapped with a mask head (single stage): parameters are told apart by name
    substrings, so the detector's keep their groups and the head's get ``lr`` ("everything else")."""

    def build(model: nn.Module) -> list[dict[str, Any]]:
        detector = detector_of(model)
        freeze_unused(detector)
        if freeze_encoder:
            detector.backbone[0].encoder.requires_grad_(False)
        return param_groups(model, optim.lr, optim.lr_encoder, optim.weight_decay, optim.lr_vit_layer_decay,
                            optim.lr_component_decay, cfg.out_feature_indexes)

    return build


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable (``requires_grad``) and frozen parameter counts, in scalars (elements), as config.json records them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable}


def detector_of(model: nn.Module) -> RFDETRModel:
    """The :class:`RFDETRModel` inside ``model`` (itself, or a Segmenter's ``detector``)."""
    detector = getattr(model, "detector", model)
    if not isinstance(detector, RFDETRModel):
        raise TypeError(f"expected an RFDETRModel or a Segmenter, got {type(model).__name__}")
    return detector


def freeze_unused(model: RFDETRModel) -> None:
    """Freeze DINOv2's ``mask_token``: no forward uses it, and DDP would wait forever for its gradient."""
    model.backbone[0].encoder.encoder.embeddings.mask_token.requires_grad_(False)


def init_weights(model: RFDETRModel, args: argparse.Namespace, size: str) -> None:
    """``--pretrained`` (path, official name or ``none``; default the size's official weights)."""
    pretrained = args.pretrained if args.pretrained is not None else default_pretrained(size)
    if pretrained and pretrained.lower() != "none":
        load_pretrained(model, pretrained, parse_exclude(args.pretrain_exclude_keys) + ["_kp_active_mask"])
    else:
        logger.info("no pretrained weights: training from random initialisation")


def eval_only(model: RFDETRModel, cfg: ModelConfig, valid: CocoDetection, train_cfg: TrainConfig, loss: LossConfig,
              dist_info: DistInfo, resume: str | None) -> dict[str, Any]:
    """Evaluate the model (weights from ``resume`` if given) on ``valid`` and print the COCO summary."""
    if resume:
        model.load_state_dict(extract_state_dict(load_checkpoint_file(resume)), strict=True)
    from rfdetr.data.loaders import build_dataloader

    model.to(dist_info.device)
    evaluator = CocoEvaluator.from_dataset(valid, max_dets=train_cfg.eval_max_dets)
    loader = build_dataloader(valid, train_cfg.batch_size, train=False, workers=train_cfg.num_workers)
    precision = autocast_dtype(dist_info.device, train_cfg.amp, train_cfg.amp_dtype)
    metrics = evaluate(model, build_criterion_for(cfg, loss), PostProcess(train_cfg.eval_num_select), loader,
                       evaluator, dist_info.device, precision)
    if dist_info.is_main:
        print(evaluator.summary)
    return metrics


def run(args: argparse.Namespace) -> FitResult | dict[str, Any]:
    """Build everything from the parsed flags of ``train_detector_stage1.py`` and train (or evaluate)."""
    train_cfg, optim_cfg, loss_cfg = configs_from_args(args)
    dist_info = init_distributed(pick_device(train_cfg.device))
    try:
        seed_everything(train_cfg.seed, dist_info.rank)
        root = ensure_dataset(args.dataset)
        probe = CocoDetection(root, "valid")  # class names without decoding any image
        cfg = model_config_for(args.size, args.resolution, len(probe.class_names), probe.class_names)
        train, valid, test = build_datasets(root, cfg, train_cfg)
        model = build_model(cfg)
        if not train_cfg.resume:
            init_weights(model, args, args.size)
        if args.eval_only:
            return eval_only(model, cfg, valid, train_cfg, loss_cfg, dist_info, train_cfg.resume)
        scales = (multi_scale_sizes(cfg.resolution, cfg.input_divisor, train_cfg.expanded_scales)
                  if train_cfg.multi_scale and not train_cfg.do_random_resize_via_padding else [])
        job = TrainingJob(
            stage="detector", model=model, model_cfg=cfg, class_names=list(cfg.class_names),
            category_ids=list(probe.label_to_category_id),
            criterion=build_criterion_for(cfg, loss_cfg), postprocess=PostProcess(train_cfg.eval_num_select),
            train_set=train, val_set=valid, test_set=test,
            param_groups=detector_param_groups(cfg, optim_cfg, train_cfg.freeze_encoder), iou_type="bbox",
            run_prefix=f"detector_{args.size}_{cfg.resolution}",
            config=to_jsonable({"args": vars(args), "model": cfg.to_dict(), "parameters": parameter_counts(model),
                                "train": train_cfg, "optim": optim_cfg, "loss": loss_cfg, "train_scales": scales,
                                "world_size": dist_info.world_size}),
        )
        return fit(job, train_cfg, optim_cfg, dist_info)
    finally:
        cleanup()
