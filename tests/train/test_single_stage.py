"""Single stage end to end on the tiny configs: detection and masks learn together, the run folder, resume, the
detector + mask-head variant, and checkpoints in rfdetr's layout (both directions)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import train_seg_single_stage
from rfdetr.checkpoint import load_checkpoint_file, make_checkpoint
from rfdetr.config import TINY_SEG_CONFIG, get_preset
from rfdetr.data.coco import CocoDetection, collate_fn
from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset
from rfdetr.data.transforms import eval_transforms
from rfdetr.detr import RFDETR
from rfdetr.losses.mask_logits import SparseMaskLogits
from rfdetr.models import build_model
from rfdetr.models.mask_head import MaskHeadConfig, build_mask_head
from rfdetr.models.segmenter import Segmenter
from rfdetr.train.args import load_pretrained
from rfdetr.train.config import SEGMENTATION_LOSS, OptimConfig
from rfdetr.train.engine import StepSettings, train_one_epoch
from rfdetr.train.single_stage import pretrained_name, single_stage_sizes
from rfdetr.train.stage1 import build_criterion_for, detector_param_groups
from rfdetr.util.loggers import read_jsonl
from tests.run_checks import assert_resume_matches_straight_run

FAST = [
    "--pretrained",
    "none",
    "--workers",
    "0",
    "--batch",
    "2",
    "--accum",
    "1",
    "--multi_scale",
    "0",
    "--augment",
    "0",
    "--seed",
    "3",
    "--tensorboard",
    "0",
]
OVERFIT = ["--size", "seg-tiny", "--lr", "1e-3", "--lr_encoder", "1e-3", "--early_stopping", "0"]
RESOLUTION = TINY_SEG_CONFIG.resolution  # 96: at 64 px the tiny token grid is smaller than the query count
NAMES = ["circle", "square", "triangle"]


pytestmark = pytest.mark.usefixtures("one_thread")



def run_single(dataset: Path, output: Path, *extra: str) -> int:
    argv = [*FAST, "--dataset", str(dataset), "--output", str(output), *extra]
    return train_seg_single_stage.main(train_seg_single_stage.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def overfit(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """seg-tiny trained from scratch on the 4 images: (run folder, wall time in seconds)."""
    out = tmp_path_factory.mktemp("runs")
    start = time.perf_counter()
    assert run_single(four_images, out, *OVERFIT, "--epochs", "25") == 0
    seconds = time.perf_counter() - start
    (run_dir,) = out.iterdir()
    return run_dir, seconds


def test_overfits_boxes_and_masks(overfit: tuple[Path, float]) -> None:
    run_dir, seconds = overfit
    records = read_jsonl(run_dir / "log.jsonl")
    segm50 = [max(r["val_segm_mAP50"], r["ema_val_segm_mAP50"]) for r in records]
    assert max(segm50) >= 0.8, [round(v, 3) for v in segm50]
    assert max(max(r["val_bbox_mAP50"], r["ema_val_bbox_mAP50"]) for r in records) >= 0.8
    assert records[-1]["train_loss"] < records[0]["train_loss"] * 0.8
    assert records[-1]["train_loss_mask_dice"] < records[0]["train_loss_mask_dice"]
    # reported, not asserted: no timing asserts in tests
    print(f"single-stage overfit: best segm mAP50 {max(segm50):.3f}, {len(records)} epochs in {seconds:.1f}s")


def test_run_folder_and_checkpoints(overfit: tuple[Path, float]) -> None:
    run_dir, _ = overfit
    assert run_dir.name == f"seg_single_seg-tiny_{RESOLUTION}_1"
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "log.jsonl",
        "checkpoint.pth",
        "checkpoint_best_regular.pth",
        "checkpoint_best_total.pth",
        "results.json",
    } <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stage"] == "seg_single" and config["model"]["segmentation_head"] is True
    assert config["loss"]["cls_loss_coef"] == 5.0 and config["train"]["eval_num_select"] == 100
    record = read_jsonl(run_dir / "log.jsonl")[-1]
    assert {"val_segm_mAP", "val_bbox_mAP", "train_loss_ce", "train_loss_mask_ce", "train_loss_mask_dice"} <= set(
        record
    )
    last = load_checkpoint_file(run_dir / "checkpoint.pth")
    assert {"model", "args", "optimizer", "lr_scheduler", "ema_model", "epoch", "rng", "best"} <= set(last)
    best = load_checkpoint_file(run_dir / "checkpoint_best_total.pth")
    assert best["stage"] == "seg_single" and "optimizer" not in best and best["class_names"] == NAMES
    assert best["args"].segmentation_head is True and best["args"].num_classes == 3
    assert best["model_name"] == "RFDETRSegNano"
    # rfdetr's segmentation key layout: the model itself, nothing more, nothing less
    model = build_model(TINY_SEG_CONFIG.replace(num_classes=3))
    model.load_state_dict(best["model"], strict=True)
    assert any(k.startswith("segmentation_head.blocks.") for k in best["model"])
    assert run_dir.joinpath("results.json").is_file()


class RFDETRSegTiny(RFDETR):
    """The user API on the seg-tiny test config (no official weights exist for it)."""

    size = "seg-tiny"


def test_predicts_masks_through_the_user_api(overfit: tuple[Path, float], four_images: Path) -> None:
    model = RFDETRSegTiny(pretrain_weights=overfit[0] / "checkpoint_best_total.pth")
    assert model.masks and model.class_names == NAMES
    image = np.asarray(CocoDetection(four_images, "valid").load_sample(0)[0].permute(1, 2, 0))
    det = model.predict(image, threshold=0.0)
    best = int(det.confidence.argmax())
    assert det.mask.shape == (len(det), 64, 64) and det.mask[best].any()


def test_resume_equals_uninterrupted(four_images: Path, tmp_path: Path) -> None:
    # Augmentation and EMA on, so that the RNG and EMA state of the resume are exercised too.
    args = ["--size", "seg-tiny", "--augment", "1", "--lr", "5e-4"]
    assert run_single(four_images, tmp_path / "straight", "--epochs", "2", *args) == 0
    assert run_single(four_images, tmp_path / "split", "--epochs", "1", *args) == 0
    first = tmp_path / "split" / f"seg_single_seg-tiny_{RESOLUTION}_1"
    assert (
        run_single(four_images, tmp_path / "unused", "--epochs", "2", "--resume", str(first / "checkpoint.pth"), *args)
        == 0
    )
    straight = tmp_path / "straight" / f"seg_single_seg-tiny_{RESOLUTION}_1"
    assert_resume_matches_straight_run(straight, first, tmp_path / "unused")


def test_detector_size_trains_detector_and_mask_head(
    four_images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--size tiny: the detector and a MaskHeadNano train together; checkpoints are laid out as stage 2's."""
    assert (
        run_single(
            four_images, tmp_path, "--size", "tiny", "--resolution", str(RESOLUTION), "--epochs", "1", "--no_ema"
        )
        == 0
    )
    run_dir = tmp_path / f"seg_single_tiny_{RESOLUTION}_1"
    last = load_checkpoint_file(run_dir / "checkpoint.pth")
    head_cfg = MaskHeadConfig.from_dict(last["mask_head"])
    assert head_cfg.kind == "nano" and last["stage"] == "seg_single"
    torch.manual_seed(3)  # the script seeds with --seed before building the model
    cfg = get_preset("tiny").replace(num_classes=3, resolution=RESOLUTION, positional_encoding_size=RESOLUTION // 16)
    initial = Segmenter(build_model(cfg), build_mask_head(head_cfg), freeze_detector=False)
    model = Segmenter(build_model(cfg), build_mask_head(head_cfg), freeze_detector=False)
    model.load_checkpoint_state_dict(last["model"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(initial.named_parameters())[n])]
    assert any(n.startswith("detector.transformer.") for n in changed)
    assert any(n.startswith("detector.backbone.0.encoder.") for n in changed)
    assert any(n.startswith("mask_head.") for n in changed)
    optimized = sum(len(g["params"]) for g in last["optimizer"]["param_groups"])
    assert optimized == sum(1 for n, _ in model.named_parameters() if not n.endswith("mask_token"))  # all but it
    # A stage-2 style checkpoint also starts a single-stage run (detector and head weights both load).
    caplog.set_level(logging.INFO, logger="rfdetr.train.stage2")
    assert (
        run_single(
            four_images,
            tmp_path / "again",
            "--size",
            "tiny",
            "--resolution",
            str(RESOLUTION),
            "--epochs",
            "1",
            "--no_ema",
            "--pretrained",
            str(run_dir / "checkpoint_best_total.pth"),
        )
        == 0
    )
    assert "mask head initialised from" in caplog.text


def test_mask_head_flag_with_a_seg_preset_is_a_clear_error(
    four_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_single(four_images, tmp_path, "--size", "seg-tiny", "--mask_head", "full", "--epochs", "1") == 2
    assert "segmentation preset" in capsys.readouterr().err and not tmp_path.joinpath("runs").exists()


def test_sizes_and_default_weights() -> None:
    sizes = single_stage_sizes()
    assert sizes[0] == "seg-nano" and {"seg-small", "seg-2xlarge", "seg-preview", "nano", "large", "tiny"} <= set(sizes)
    args = argparse.Namespace(pretrained=None)
    assert pretrained_name(args, "seg-nano") == "rf-detr-seg-nano.pt"
    assert pretrained_name(args, "seg-2xlarge") == "rf-detr-seg-xxlarge.pt"
    assert pretrained_name(args, "nano") == "rf-detr-nano.pth"
    assert pretrained_name(argparse.Namespace(pretrained="none"), "seg-nano") is None
    parsed = train_seg_single_stage.get_args_parser().parse_args([])
    assert parsed.size == "seg-nano" and parsed.cls_loss_coef == 5.0 and parsed.pretrain_exclude_keys == ""


def test_rfdetr_seg_checkpoint_loads_with_no_missing_key(tmp_path: Path) -> None:
    """An rfdetr 1.11.2 seg-nano training checkpoint ({"model", "args"} with its ``_kp_active_mask`` buffer, 91
    classes) loads completely into our seg-nano; only the class heads are re-initialised for another class count."""
    cfg = get_preset("seg-nano")
    torch.manual_seed(0)
    theirs = build_model(cfg).state_dict()
    theirs["_kp_active_mask"] = torch.zeros(0, 0, dtype=torch.bool)
    args = argparse.Namespace(
        num_classes=90,
        segmentation_head=True,
        resolution=cfg.resolution,
        patch_size=12,
        num_windows=1,
        dec_layers=4,
        num_queries=100,
        encoder="dinov2_windowed_small",
    )
    path = tmp_path / "rfdetr_seg_nano.pth"
    torch.save({"model": theirs, "args": args, "epoch": 3}, path)
    same = build_model(cfg)
    report = load_pretrained(same, str(path))
    assert report.missing == [] and report.unexpected == [] and report.reinitialized == []
    for key, value in same.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    fewer = build_model(cfg.replace(num_classes=3))
    report = load_pretrained(fewer, str(path))
    assert report.reinitialized and set(report.reinitialized) <= {k for k in theirs if "class_embed" in k}
    assert set(report.missing) <= set(report.reinitialized) and report.unexpected == []
    # ...and ours written with make_checkpoint has exactly rfdetr's keys (minus the buffer rfdetr tolerates missing).
    ours = make_checkpoint(build_model(cfg).state_dict(), cfg, ["a"] * 90, stage="seg_single")
    assert set(ours["model"]) == set(theirs) - {"_kp_active_mask"}
    assert ours["args"].segmentation_head is True and ours["model_name"] == "RFDETRSegNano"


def test_sparse_training_masks_give_the_dense_losses(tmp_path: Path) -> None:
    """The factorised training masks give the same matching and losses as dense logits (same random points)."""
    cfg = TINY_SEG_CONFIG.replace(num_classes=3, group_detr=2)
    write_synthetic_dataset(tmp_path, SyntheticSpec(splits=(("train", 2),), width=64, height=64, max_objects=2, seed=5))
    data = CocoDetection(tmp_path, "train", masks=True, transforms=eval_transforms(RESOLUTION))
    images, targets = collate_fn([data[i] for i in range(len(data))])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    criterion = build_criterion_for(cfg, SEGMENTATION_LOSS, segmentation=True).train()
    sparse_out = model(images)
    dense_out = model(images, dense_masks=True)
    assert isinstance(sparse_out["pred_masks"], SparseMaskLogits)
    assert isinstance(sparse_out["enc_outputs"]["pred_masks"], SparseMaskLogits)
    torch.manual_seed(1)
    sparse = criterion(sparse_out, targets)
    torch.manual_seed(1)
    dense = criterion(dense_out, targets)
    assert set(sparse) == set(dense) and {"loss_mask_ce_enc", "loss_mask_dice_0", "loss_ce_enc"} <= set(sparse)
    # The sparse path samples the mask logits at the same points the dense path samples its logits at: equal in exact
    # arithmetic, float32 ~2e-6 relative per point logit (test_mask_head's identity); the losses are means over the
    # sampled points (max(Hm, Hm * Wm / 16) per mask) whose float32 sums add N x 2^-24 relative: ~1e-4 relative for
    # N ~ 1000 at worst, hence rtol 1e-4 (atol 1e-5 for losses near 0). Measured 1.2e-7 abs at most (Zen 4).
    for key, value in dense.items():
        torch.testing.assert_close(sparse[key], value, rtol=1e-4, atol=1e-5, msg=key)


def _ddp_worker(rank: int, init_file: str, root: str, out: str) -> None:
    """One seg-tiny single-stage epoch under DDP (gloo): rank r trains on its own images; saves its weights."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        cfg = TINY_SEG_CONFIG.replace(num_classes=3)
        torch.manual_seed(0)
        model = build_model(cfg)
        groups = detector_param_groups(cfg, OptimConfig(lr=1e-3, lr_encoder=1e-3))(model)
        optimizer = torch.optim.AdamW(groups)
        data = CocoDetection(root, "train", masks=True, transforms=eval_transforms(cfg.resolution))
        batches = [collate_fn([data[2 * step + rank]]) for step in range(2)]
        torch.manual_seed(1 + rank)  # different mask points per rank, as in a real run
        ddp = nn.parallel.DistributedDataParallel(model)
        criterion = build_criterion_for(cfg, SEGMENTATION_LOSS, segmentation=True)
        train_one_epoch(
            ddp, criterion, batches, optimizer, None, torch.device("cpu"), 0, StepSettings(), progress=False
        )
        torch.save(model.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_stay_identical(four_images: Path, tmp_path: Path) -> None:
    """Every parameter of the segmentation model gets a gradient each step (plain DDP, no unused-parameter search),
    so the two ranks' weights stay bit-identical while they train on different images."""
    out = tmp_path / "ddp"
    mp.start_processes(
        _ddp_worker, args=(str(tmp_path / "init"), str(four_images), str(out)), nprocs=2, start_method="spawn"
    )
    a, b = (torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    initial = build_model(TINY_SEG_CONFIG.replace(num_classes=3)).state_dict()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    assert not torch.equal(a["segmentation_head.bias"], initial["segmentation_head.bias"])
    assert not torch.equal(a["class_embed.weight"], initial["class_embed.weight"])
