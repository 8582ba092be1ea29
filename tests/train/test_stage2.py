"""Stage 2 end to end on the tiny config: a detector trained on 4 images, then a mask head on it (frozen).

One module-scoped stage-1 detector (trained directly, ~80 steps) feeds every test; the main stage-2 run overfits the
same 4 images and is checked for masks, frozen weights, the optimizer's contents and the run folder.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import shrink_head
import train_seg_stage2
from rfdetr.checkpoint import extract_state_dict, load_checkpoint_file, make_checkpoint, save_checkpoint
from rfdetr.checkpoint.surgery import shrink_checkpoint
from rfdetr.config import get_preset
from rfdetr.data.coco import CocoDetection, collate_fn
from rfdetr.data.coco_classes import COCO_CLASSES
from rfdetr.data.synthetic import ANNOTATION_FILE
from rfdetr.data.transforms import eval_transforms
from rfdetr.detr import RFDETR, RFDETRNano, RFDETRTiny
from rfdetr.losses import build_criterion
from rfdetr.models import build_model
from rfdetr.models.mask_head import MaskHeadConfig, build_mask_head
from rfdetr.models.segmenter import Segmenter
from rfdetr.train.args import configs_from_args, model_config_for
from rfdetr.train.fit import fit
from rfdetr.train.optim import param_groups
from rfdetr.train.stage2 import (
    Stage2Error,
    build_job,
    check_classes,
    detector_config,
    load_detector,
    mask_head_param_groups,
    split_mask_head,
)
from rfdetr.util.distributed import DistInfo
from rfdetr.util.loggers import read_jsonl
from tests.helpers import REFS, SHARED, shared_path

# 96 px, not the tiny preset's 64: at 64 px the 4x4 token grid is smaller than the 20 queries, and then the detector's
# train-mode (13 groups) and eval-mode outputs differ; from 6x6 tokens on they agree exactly.
RESOLUTION = 96
FAST = ["--size", "tiny", "--workers", "0", "--batch", "2", "--accum", "1", "--multi_scale", "0", "--augment", "0",
        "--seed", "3", "--tensorboard", "0"]


OFFICIAL = REFS / "rf-detr-nano-perturbed-random.legacy.pth"
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("one_thread")



def train_tiny_detector(root: Path, run_dir: Path, steps: int = 80) -> Path:
    """Stage 1 in miniature: full-batch AdamW on the 4 images; writes run_dir/checkpoint_best_total.pth."""
    dataset = CocoDetection(root, "train", transforms=eval_transforms(RESOLUTION))
    images, targets = collate_fn([dataset[i] for i in range(len(dataset))])
    cfg = model_config_for("tiny", RESOLUTION, dataset.num_classes, dataset.class_names)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.backbone[0].encoder.encoder.embeddings.mask_token.requires_grad_(False)
    criterion = build_criterion(cfg.dec_layers, group_detr=cfg.group_detr)
    optimizer = torch.optim.AdamW(param_groups(model, 2e-3, 2e-3, 1e-4, 0.8, 0.7, cfg.out_feature_indexes))
    for _ in range(steps):
        loss = criterion.total_loss(criterion(model(images), targets))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    run_dir.mkdir(parents=True)
    path = run_dir / "checkpoint_best_total.pth"
    save_checkpoint(make_checkpoint(model.state_dict(), cfg, dataset.class_names, stage="detector"), path)
    return path


@pytest.fixture(scope="module")
def stage1_run(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("stage1") / f"detector_tiny_{RESOLUTION}_1"
    train_tiny_detector(four_images, run_dir)
    return run_dir


def run_stage2(dataset: Path, output: Path, *extra: str) -> int:
    argv = [*FAST, "--dataset", str(dataset), "--output", str(output), *extra]
    return train_seg_stage2.main(train_seg_stage2.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def overfit(four_images: Path, stage1_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The stage-2 run on the 4 images: (run folder, wall time in seconds)."""
    out = tmp_path_factory.mktemp("runs")
    start = time.perf_counter()
    assert run_stage2(four_images, out, "--stage1_run", str(stage1_run), "--epochs", "25", "--seg_lr", "2e-3",
                      "--early_stopping", "0") == 0
    seconds = time.perf_counter() - start
    (run_dir,) = out.iterdir()
    return run_dir, seconds


def test_overfits_masks_in_under_a_minute(overfit: tuple[Path, float]) -> None:
    run_dir, seconds = overfit
    records = read_jsonl(run_dir / "log.jsonl")
    evaluated = [r for r in records if r["evaluated"]]  # stage 2 evaluates every 5 epochs and after the last
    assert [r["epoch"] for r in evaluated] == [4, 9, 14, 19, 24]
    assert max(r["val_segm_mAP50"] for r in evaluated) >= 0.8, [round(r["val_segm_mAP50"], 3) for r in evaluated]
    assert min(r["val_bbox_mAP50"] for r in evaluated) >= 0.9  # the frozen detector does not drift
    assert records[-1]["train_loss"] < records[0]["train_loss"] * 0.5
    print(f"stage 2 overfit took {seconds:.1f}s")  # reported, not asserted: no timing asserts in tests


def test_detector_bit_identical_and_optimizer_holds_only_the_mask_head(overfit: tuple[Path, float],
                                                                       stage1_run: Path) -> None:
    run_dir, _ = overfit
    before = extract_state_dict(load_checkpoint_file(stage1_run / "checkpoint_best_total.pth"))
    last = load_checkpoint_file(run_dir / "checkpoint.pth")
    # checkpoint.pth (resume state) holds the mask head only; its detector is the source's, checked by hash on resume.
    assert all(k.startswith("mask_head.") for k in last["model"]) and last["detector_source"]["sha256"]
    for name in ("checkpoint_best_regular.pth", "checkpoint_best_total.pth"):
        after = load_checkpoint_file(run_dir / name)["model"]
        assert set(before) <= set(after)
        for key, tensor in before.items():
            assert torch.equal(after[key], tensor), f"{name}: detector tensor {key} changed"
        assert {k for k in after if k not in before} == {k for k in after if k.startswith("mask_head.")}
    head = build_mask_head(MaskHeadConfig.from_dict(last["mask_head"]))
    head_params = list(head.parameters())
    (group,) = last["optimizer"]["param_groups"]
    assert len(group["params"]) == len(head_params)
    shapes = sorted(tuple(s["exp_avg"].shape) for s in last["optimizer"]["state"].values())
    assert shapes == sorted(tuple(p.shape) for p in head_params)


def test_job_freezes_the_detector(four_images: Path, stage1_run: Path, tmp_path: Path) -> None:
    args = train_seg_stage2.get_args_parser().parse_args(
        [*FAST, "--dataset", str(four_images), "--output", str(tmp_path), "--stage1_run", str(stage1_run)])
    train_cfg, optim_cfg, loss_cfg = configs_from_args(args)
    job = build_job(args, train_cfg, optim_cfg, loss_cfg, CPU).job
    model = job.model.train()
    assert isinstance(model, Segmenter) and not model.detector.training
    assert all(not m.training for m in model.detector.modules())
    assert not any(p.requires_grad for p in model.detector.parameters())
    groups = job.param_groups(model)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.mask_head.parameters()}
    out = model(torch.randn(2, 3, RESOLUTION, RESOLUTION))
    assert out["pred_logits"].grad_fn is None and out["pred_masks"].query_features.requires_grad
    config = job.config["parameters"]
    assert config["trainable"] == sum(p.numel() for p in model.mask_head.parameters())
    assert config["frozen"] == sum(p.numel() for p in model.detector.parameters()) > config["trainable"]
    with pytest.raises(RuntimeError, match="must not train the detector"):
        model.detector.class_embed.weight.requires_grad_(True)
        mask_head_param_groups(optim_cfg)(model)


def test_run_folder(overfit: tuple[Path, float]) -> None:
    run_dir, _ = overfit
    assert run_dir.name == f"segmentation_tiny_{RESOLUTION}_1"
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "log.jsonl", "checkpoint.pth", "checkpoint_best_regular.pth", "checkpoint_best_total.pth",
            "results.json"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stage"] == "seg_stage2" and config["mask_head"]["kind"] == "nano"
    assert isinstance(config["parameters"]["trainable"], int) and config["parameters"]["frozen"] > 0
    best = load_checkpoint_file(run_dir / "checkpoint_best_total.pth")
    assert best["stage"] == "seg_stage2" and best["mask_head"]["key_prefix"] == "mask_head."
    assert best["class_names"] == ["circle", "square", "triangle"] and "optimizer" not in best
    record = read_jsonl(run_dir / "log.jsonl")[-1]
    assert {"val_segm_mAP", "val_segm_mAP50", "val_bbox_mAP", "train_loss_mask_ce", "train_loss_mask_dice"} <= set(
        record)


def test_resume_and_eval_only(overfit: tuple[Path, float], four_images: Path, stage1_run: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    run_dir = Path(shutil.copytree(overfit[0], tmp_path / overfit[0].name))
    assert run_stage2(four_images, tmp_path / "unused", "--resume", str(run_dir / "checkpoint.pth"), "--epochs", "26",
                      "--seg_lr", "2e-3", "--early_stopping", "0") == 0
    records = read_jsonl(run_dir / "log.jsonl")
    assert [r["epoch"] for r in records[-2:]] == [24, 25] and not (tmp_path / "unused").exists()
    before = extract_state_dict(load_checkpoint_file(stage1_run / "checkpoint_best_total.pth"))
    after = load_checkpoint_file(run_dir / "checkpoint_best_total.pth")["model"]
    assert all(torch.equal(after[k], v) for k, v in before.items())
    capsys.readouterr()
    assert run_stage2(four_images, tmp_path / "unused", "--checkpoint", str(run_dir / "checkpoint_best_total.pth"),
                      "--eval_only") == 0
    assert "IoU metric: segm" in capsys.readouterr().out
    assert run_stage2(four_images, tmp_path / "unused", "--stage1_run", str(stage1_run), "--eval_only") == 2


def test_eval_interval_best_checkpoint_early_stopping_and_resume(overfit: tuple[Path, float], four_images: Path,
                                                                  stage1_run: Path, tmp_path: Path) -> None:
    """--eval_interval 3 with a trained head and lr 0 (every evaluation scores the same): skipped epochs log
    training only, "best" comes from an evaluated epoch, and patience counts epochs across a resume."""
    head = overfit[0] / "checkpoint_best_total.pth"
    common = ["--stage1_run", str(stage1_run), "--eval_interval", "3", "--seg_lr", "0", "--patience", "5",
              "--early_stopping_min_delta", "0", "--lr_scheduler", "step", "--warmup_epochs", "0"]
    assert run_stage2(four_images, tmp_path, *common, "--mask_head_weights", str(head), "--epochs", "5") == 0
    (run_dir,) = tmp_path.iterdir()
    records = read_jsonl(run_dir / "log.jsonl")
    assert [r["evaluated"] for r in records] == [False, False, True, False, True]  # every 3rd epoch and the last
    assert all(("val_segm_mAP" in r) == r["evaluated"] for r in records)
    assert records[2]["val_segm_mAP"] == records[4]["val_segm_mAP"] > 0
    last = load_checkpoint_file(run_dir / "checkpoint.pth")
    assert last["best"]["regular_epoch"] == 2 and last["early_stopping"]["counter"] == 2  # epochs 3 and 4
    assert load_checkpoint_file(run_dir / "checkpoint_best_regular.pth")["epoch"] == 2
    # Resumed to 12 epochs: evaluations at 5 (counter 3) and 8 (6 >= patience 5): stops after epoch 8. Counting
    # evaluations instead of epochs would run to the end.
    assert run_stage2(four_images, tmp_path / "unused", *common, "--resume", str(run_dir / "checkpoint.pth"),
                      "--epochs", "12") == 0
    records = read_jsonl(run_dir / "log.jsonl")
    assert [r["epoch"] for r in records if r["evaluated"]] == [2, 4, 5, 8] and records[-1]["epoch"] == 8
    assert json.loads((run_dir / "results.json").read_text())["best"]["regular_epoch"] == 2


def test_predict_returns_masks_at_the_original_size(overfit: tuple[Path, float], four_images: Path) -> None:
    run_dir, _ = overfit
    model = RFDETRTiny(pretrain_weights=run_dir / "checkpoint_best_total.pth", resolution=RESOLUTION)
    assert model.masks and isinstance(model.model, Segmenter)
    image = np.asarray(CocoDetection(four_images, "valid").load_sample(0)[0].permute(1, 2, 0))
    det = model.predict(image, threshold=0.5)
    assert len(det) >= 1 and det.mask.shape == (len(det), 64, 64) and det.mask.any(axis=(1, 2)).all()
    wide = np.ascontiguousarray(np.concatenate([image, image[:, :16]], axis=1))  # 64 x 80: masks follow the input
    assert model.predict(wide, threshold=0.0).mask.shape[1:] == (64, 80)
    plain = RFDETRTiny(pretrain_weights=run_dir / "checkpoint_best_total.pth", resolution=RESOLUTION, masks=False)
    assert plain.predict(image).mask is None and not isinstance(plain.model, Segmenter)


def test_rfdetr_nano_masks_true_with_a_stage2_checkpoint(tmp_path: Path) -> None:
    cfg = get_preset("nano").replace(num_classes=2, class_names=("a", "b"))
    torch.manual_seed(0)
    head_cfg = MaskHeadConfig("nano", cfg.hidden_dim, cfg.dec_layers)
    segmenter = Segmenter(build_model(cfg), build_mask_head(head_cfg))
    path = tmp_path / "stage2.pth"
    save_checkpoint(make_checkpoint(segmenter.checkpoint_state_dict(), cfg, ["a", "b"], stage="seg_stage2",
                                    mask_head=head_cfg.to_dict()), path)
    model = RFDETRNano(pretrain_weights=path, masks=True)
    det = model.predict(np.zeros((100, 150, 3), dtype=np.uint8), threshold=0.0)
    assert det.mask.shape == (cfg.num_select, 100, 150)
    assert type(RFDETR.from_checkpoint(path)).__name__ == "RFDETRNano"


def test_full_mask_head_checkpoint_is_an_rfdetr_segmentation_model(stage1_run: Path) -> None:
    """MaskHead keeps rfdetr's ``segmentation_head.*`` names: the stage-2 state dict loads strictly into a detector
    built with rfdetr's segmentation head, and both give the same masks."""
    cfg = model_config_for("tiny", RESOLUTION, 3, ["circle", "square", "triangle"])
    detector = build_model(cfg)
    detector.load_state_dict(extract_state_dict(load_checkpoint_file(stage1_run / "checkpoint_best_total.pth")))
    torch.manual_seed(1)
    segmenter = Segmenter(detector, build_mask_head(MaskHeadConfig("full", cfg.hidden_dim, cfg.dec_layers))).eval()
    with torch.no_grad():
        for p in segmenter.mask_head.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial head
    upstream_like = build_model(cfg.replace(segmentation_head=True)).eval()
    upstream_like.load_state_dict(segmenter.checkpoint_state_dict(), strict=True)
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        ours, theirs = segmenter(x), upstream_like(x)
    torch.testing.assert_close(ours["pred_masks"], theirs["pred_masks"])
    torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"])


def test_class_count_mismatch_prints_the_shrink_command(four_images: Path, stage1_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    two = Path(shutil.copytree(four_images, tmp_path / "two"))
    for split in ("train", "valid"):
        path = two / split / ANNOTATION_FILE
        data = json.loads(path.read_text())
        data["categories"] = [c for c in data["categories"] if c["name"] != "square"]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 2]
        path.write_text(json.dumps(data))
    ckpt = stage1_run / "checkpoint_best_total.pth"
    assert run_stage2(two, tmp_path / "runs", "--checkpoint", str(ckpt), "--epochs", "1") == 2
    err = capsys.readouterr().err
    (command,) = [line.strip() for line in err.splitlines() if "shrink_head.py" in line]
    argv = shlex.split(command)[2:]
    assert shrink_head.main(shrink_head.get_args_parser().parse_args(argv)) == 0
    shrunk = argv[argv.index("--out_ckpt") + 1]
    assert run_stage2(two, tmp_path / "runs", "--checkpoint", shrunk, "--epochs", "1") == 0


def test_every_detector_key_must_load(stage1_run: Path, four_images: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    ckpt = load_checkpoint_file(stage1_run / "checkpoint_best_total.pth")
    del ckpt["model"]["transformer.decoder.layers.1.linear1.weight"], ckpt["model"]["bbox_embed.layers.0.bias"]
    broken = tmp_path / "broken.pth"
    save_checkpoint(ckpt, broken)
    assert run_stage2(four_images, tmp_path / "runs", "--checkpoint", str(broken), "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "transformer.decoder.layers.1.linear1.weight" in err and "bbox_embed.layers.0.bias" in err
    assert not (tmp_path / "runs").exists()


def _official(layout: str) -> dict:
    shared_path(OFFICIAL.relative_to(SHARED))
    ckpt = load_checkpoint_file(OFFICIAL)
    if layout == "training":  # rfdetr >= 1.7 (Lightning): dict args, model_config, a "model."-prefixed state_dict
        ckpt = {"model": ckpt["model"], "state_dict": {f"model.{k}": v for k, v in ckpt["model"].items()},
                "args": dict(vars(ckpt["args"])), "model_config": {"resolution": 384}, "model_name": "RFDETRNano"}
    return ckpt


def test_official_checkpoint_with_other_classes_is_refused(four_images: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """rfdetr's published layout (91 COCO logits) on a 3-class dataset: refused, with the reason and the fix."""
    _official("published")
    assert run_stage2(four_images, tmp_path / "runs", "--size", "nano", "--checkpoint", str(OFFICIAL)) == 2
    err = capsys.readouterr().err
    assert "the detector has 90 classes" in err
    assert "never trained on ['circle', 'square', 'triangle']" in err and "train_detector_stage1.py" in err


@pytest.mark.parametrize("layout", ["published", "training"])
def test_official_checkpoints_load_completely(layout: str, tmp_path: Path) -> None:
    """Cut to a COCO-named dataset's classes, both rfdetr layouts load every detector tensor into nano."""
    names = ["dog", "person"]
    shrunk, _ = shrink_checkpoint(_official(layout), [COCO_CLASSES.index(n) for n in names], names, spare_row=0)
    state, head = split_mask_head(extract_state_dict(shrunk))
    assert not head
    check_classes(OFFICIAL, shrunk, state, tmp_path, names)
    cfg = detector_config("nano", None, shrunk, names)
    assert cfg.resolution == 384 and cfg.num_classes == 2
    load_detector(build_model(cfg), state, OFFICIAL, "nano")
    with pytest.raises(ValueError, match=r"shrink_head\.py --in_ckpt .* --dataset"):
        check_classes(OFFICIAL, _official(layout), extract_state_dict(_official(layout)), tmp_path, names)


def test_feature_cache_runs_the_detector_once_per_image(four_images: Path, stage1_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    args = train_seg_stage2.get_args_parser().parse_args(
        [*FAST, "--dataset", str(four_images), "--output", str(tmp_path), "--stage1_run", str(stage1_run),
         "--epochs", "3", "--cache_features", str(tmp_path / "cache")])
    train_cfg, optim_cfg, loss_cfg = configs_from_args(args)
    setup = build_job(args, train_cfg, optim_cfg, loss_cfg, CPU)
    calls: list[int] = []
    detect = Segmenter.detect
    monkeypatch.setattr(Segmenter, "detect", lambda self, x: calls.append(len(x)) or detect(self, x))
    result = fit(setup.job, train_cfg, optim_cfg, CPU)
    assert len(setup.store) == 8  # 4 train + 4 valid images, each computed once
    assert sum(calls) == setup.store.misses and setup.store.misses <= 10  # + with-replacement duplicates
    epoch_calls = read_jsonl(result.run_dir / "log.jsonl")
    assert len(epoch_calls) == 3 and setup.store.hits > 2 * setup.store.misses
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["resolution"] == RESOLUTION
    # Cached training samples come from the store, images unread; the targets are the dataset's, bit for bit.
    image, target = setup.job.train_set[1]
    fresh_image, fresh = setup.job.train_set.dataset[1]
    assert image.shape == fresh_image.shape and not image.any()
    assert fresh.keys() <= target.keys() and target["cache_key"] == "train/1"
    for key, value in fresh.items():
        assert torch.equal(target[key], value), key


def test_feature_cache_needs_fixed_inputs(four_images: Path, stage1_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    argv = ["--stage1_run", str(stage1_run), "--cache_features", "--augment", "1"]
    assert run_stage2(four_images, tmp_path / "runs", *argv) == 2
    assert "--augment 0" in capsys.readouterr().err


def test_crowd_annotations_are_ignored() -> None:
    """A crowd annotation changes neither the matching nor the mask losses."""
    from rfdetr.train.config import SEGMENTATION_LOSS
    from rfdetr.train.stage2 import build_stage2_criterion

    criterion = build_stage2_criterion(SEGMENTATION_LOSS, num_layers=2)
    assert set(criterion.weight_dict) == {"loss_mask_ce", "loss_mask_dice", "loss_mask_ce_0", "loss_mask_dice_0"}
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 6:13, 6:13] = masks[1, 19:26, 19:26] = True
    crowd = {"labels": torch.tensor([0, 1]), "boxes": boxes, "iscrowd": torch.tensor([0, 1]), "masks": masks}
    plain = {k: v[:1] for k, v in crowd.items()}
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 5, 3), "pred_boxes": boxes[[1, 0, 1, 0, 1]][None],
               "pred_masks": torch.randn(1, 5, 8, 8)}
    losses = []
    for target in (crowd, plain):
        torch.manual_seed(1)  # the same random mask points for both
        losses.append(criterion(outputs, [target]))
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key], msg=key)


def test_mask_head_weights_start_the_head_from_another_run(overfit: tuple[Path, float], four_images: Path,
                                                            stage1_run: Path, tmp_path: Path) -> None:
    """``--mask_head_weights``: the head starts from another stage-2 checkpoint's head (the demo's pretrained head),
    the detector from ``--stage1_run``; files without a head are refused with the path and the fix."""
    run_dir, _ = overfit
    trained = run_dir / "checkpoint_best_total.pth"
    _, trained_head = split_mask_head(extract_state_dict(load_checkpoint_file(trained)))

    def job_for(weights: Path) -> Segmenter:
        args = train_seg_stage2.get_args_parser().parse_args(
            [*FAST, "--dataset", str(four_images), "--output", str(tmp_path / "out"), "--stage1_run", str(stage1_run),
             "--mask_head_weights", str(weights)])
        return build_job(args, *configs_from_args(args), CPU).job.model

    model = job_for(trained)
    for key, value in model.mask_head_state_dict().items():
        torch.testing.assert_close(value, trained_head[key], rtol=0, atol=0)  # copied, not recomputed
    detector = extract_state_dict(load_checkpoint_file(stage1_run / "checkpoint_best_total.pth"))
    for key, value in model.detector.state_dict().items():
        torch.testing.assert_close(value, detector[key], rtol=0, atol=0)
    with pytest.raises(Stage2Error, match="not a stage-2 checkpoint"):
        job_for(stage1_run / "checkpoint_best_total.pth")
    with pytest.raises(Stage2Error, match="no such file"):
        job_for(tmp_path / "missing.pth")


def test_dynamic_head_trains_from_the_cache_and_round_trips(four_images: Path, stage1_run: Path, tmp_path: Path
                                                            ) -> None:
    """``--mask_head dynamic`` with the feature cache: the head reads the real pixels (stored in the cache with the
    detector's outputs, so cached samples are not decoded again), learns the 4 images' masks, leaves the detector
    bit-identical, and its checkpoint loads back for prediction with the same masks."""
    argv = [*FAST, "--dataset", str(four_images), "--output", str(tmp_path / "runs"), "--stage1_run", str(stage1_run),
            "--epochs", "25", "--seg_lr", "2e-3", "--early_stopping", "0", "--mask_head", "dynamic",
            "--cache_features", "memory"]
    args = train_seg_stage2.get_args_parser().parse_args(argv)
    train_cfg, optim_cfg, loss_cfg = configs_from_args(args)
    setup = build_job(args, train_cfg, optim_cfg, loss_cfg, CPU)
    assert type(setup.job.model.mask_head).__name__ == "MaskHeadDynamic"
    result = fit(setup.job, train_cfg, optim_cfg, CPU)
    image, target = setup.job.train_set[1]  # cached by now: a placeholder, the pixels come from the store
    stored = setup.store.get(target["cache_key"])["pixels"]
    assert not image.any() and torch.equal(stored, setup.job.train_set.dataset[1][0].half())
    records = [r for r in read_jsonl(result.run_dir / "log.jsonl") if r["evaluated"]]
    assert max(r["val_segm_mAP50"] for r in records) >= 0.8, [round(r["val_segm_mAP50"], 3) for r in records]
    before = extract_state_dict(load_checkpoint_file(stage1_run / "checkpoint_best_total.pth"))
    after = load_checkpoint_file(result.run_dir / "checkpoint_best_total.pth")
    assert after["mask_head"]["kind"] == "dynamic"
    for key, tensor in before.items():
        assert torch.equal(after["model"][key], tensor), f"detector tensor {key} changed"
    model = RFDETRTiny(pretrain_weights=str(result.run_dir / "checkpoint_best_total.pth"), masks=True,
                       resolution=RESOLUTION)
    assert type(model.model.mask_head).__name__ == "MaskHeadDynamic"
    picture = np.asarray(CocoDetection(four_images, "valid").load_sample(0)[0].permute(1, 2, 0))
    first, second = model.predict(picture, threshold=0.3), model.predict(picture, threshold=0.3)
    assert len(first) and first.mask.shape[1:] == picture.shape[:2] and np.array_equal(first.mask, second.mask)
    setup.job.model.eval()
    segmenter = setup.job.model
    segmenter.load_checkpoint_state_dict(after["model"])
    pixels = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        torch.testing.assert_close(model.model(pixels)["pred_masks"], segmenter(pixels)["pred_masks"], rtol=0, atol=0)
