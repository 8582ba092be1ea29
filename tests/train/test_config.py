"""Training defaults live once in dataclasses; argparse flags are derived from them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from rfdetr.train.config import (
    SEGMENTATION_LOSS,
    LossConfig,
    OptimConfig,
    TrainConfig,
    add_dataclass_arguments,
    dataclass_from_args,
)


def _parser(**kwargs: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig, **kwargs)  # type: ignore[arg-type]
    add_dataclass_arguments(parser, OptimConfig, group="optimizer")
    return parser


def test_spec_defaults() -> None:
    """The numbers of rfdetr_training.md 2.1/2.2 and our stated choices."""
    optim, loss, train = OptimConfig(), LossConfig(), TrainConfig()
    assert (optim.lr, optim.lr_encoder, optim.weight_decay) == (1e-4, 1.5e-4, 1e-4)
    assert (optim.lr_vit_layer_decay, optim.lr_component_decay, optim.clip_max_norm) == (0.8, 0.7, 0.1)
    assert (optim.lr_scheduler, optim.lr_drop, optim.warmup_epochs, optim.lr_min_factor) == ("step", 100, 0.0, 0.0)
    assert (loss.cls_loss_coef, SEGMENTATION_LOSS.cls_loss_coef) == (1.0, 5.0)
    assert (loss.bbox_loss_coef, loss.giou_loss_coef, loss.mask_ce_loss_coef, loss.mask_dice_loss_coef) == (5, 2, 5, 5)
    assert (loss.set_cost_class, loss.set_cost_bbox, loss.set_cost_giou) == (2, 5, 2)
    assert (loss.focal_alpha, loss.mask_point_sample_ratio) == (0.25, 16)
    assert (train.ema_decay, train.ema_tau, train.early_stopping_patience) == (0.993, 100, 10)
    assert (train.batch_size, train.grad_accum_steps, train.epochs, train.seed, train.amp) == (4, 4, 100, 42, True)
    assert dataclasses.replace(SEGMENTATION_LOSS, cls_loss_coef=1.0) == LossConfig()


def test_parser_defaults_round_trip() -> None:
    args = _parser().parse_args([])
    assert dataclass_from_args(TrainConfig, args) == TrainConfig()
    assert dataclass_from_args(OptimConfig, args) == OptimConfig()


def test_flag_spellings_aliases_and_types() -> None:
    parser = _parser()
    args = parser.parse_args(["--lr-encoder", "2e-4", "--lr_drop", "40", "--batch", "2", "--accum", "8",
                              "--no_amp", "--multi_scale", "0", "--expanded-scales", "--patience", "3",
                              "--lr_scheduler", "cosine", "--device", "cpu"])
    optim, train = dataclass_from_args(OptimConfig, args), dataclass_from_args(TrainConfig, args)
    assert (optim.lr_encoder, optim.lr_drop, optim.lr_scheduler) == (2e-4, 40, "cosine")
    assert (train.batch_size, train.grad_accum_steps, train.early_stopping_patience) == (2, 8, 3)
    assert (train.amp, train.multi_scale, train.expanded_scales, train.device) == (False, False, True, "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr_scheduler", "linear"])  # Literal -> choices
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "maybe"])


def test_overrides_skip_and_changes() -> None:
    parser = _parser(overrides={"epochs": 50, "amp": False}, skip=["resume"])
    args = parser.parse_args([])
    assert (args.epochs, args.amp) == (50, False)
    assert not hasattr(args, "resume")
    assert "(default: 50)" in parser.format_help()
    cfg = dataclass_from_args(TrainConfig, args, resume="ckpt.pth")
    assert (cfg.epochs, cfg.resume) == (50, "ckpt.pth")

    seg = argparse.ArgumentParser()
    add_dataclass_arguments(seg, LossConfig, overrides=SEGMENTATION_LOSS)
    assert dataclass_from_args(LossConfig, seg.parse_args([])) == SEGMENTATION_LOSS

    with pytest.raises(ValueError, match="no field"):
        _parser(overrides={"epoch": 3})
    with pytest.raises(ValueError, match="no field"):
        dataclass_from_args(TrainConfig, args, epoch=3)


def test_validation() -> None:
    with pytest.raises(ValueError, match="lr_scheduler"):
        OptimConfig(lr_scheduler="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3  # type: ignore[misc]


def test_eval_interval_defaults() -> None:
    """Evaluation every epoch in stage 1 and single stage, every 5 in stage 2 (a cached epoch trains in seconds)."""
    import train_detector_stage1
    import train_seg_single_stage
    import train_seg_stage2

    assert TrainConfig().eval_interval == 1
    assert train_detector_stage1.get_args_parser().parse_args([]).eval_interval == 1
    assert train_seg_single_stage.get_args_parser().parse_args([]).eval_interval == 1
    assert train_seg_stage2.get_args_parser().parse_args([]).eval_interval == 5
    assert train_seg_stage2.get_args_parser().parse_args(["--eval-interval", "2"]).eval_interval == 2
    with pytest.raises(ValueError, match="eval_interval"):
        TrainConfig(eval_interval=0)
