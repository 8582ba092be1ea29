"""Stage 1 end to end on the tiny config: it learns, writes its run folder, resumes exactly, and feeds shrink_head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import shrink_head
import train_detector_stage1
from rfdetr.checkpoint import load_checkpoint_file
from rfdetr.config import TINY_CONFIG
from rfdetr.data.synthetic import ANNOTATION_FILE
from rfdetr.models import build_model
from rfdetr.util.loggers import read_jsonl
from tests.run_checks import assert_resume_matches_straight_run

# Fast, deterministic settings for CPU: no augmentation or multi-scale, no workers, small batches.
FAST = ["--size", "tiny", "--pretrained", "none", "--workers", "0", "--batch", "2", "--accum", "1",
        "--multi_scale", "0", "--augment", "0", "--seed", "3"]


def run_stage1(dataset: Path, output: Path, *extra: str) -> int:
    argv = [*FAST, "--dataset", str(dataset), "--output", str(output), *extra]
    return train_detector_stage1.main(train_detector_stage1.get_args_parser().parse_args(argv))



@pytest.fixture(scope="module")
def overfit_run(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert run_stage1(four_images, out, "--epochs", "45", "--lr", "1e-3", "--lr_encoder", "1e-3",
                      "--early_stopping", "0") == 0
    (run_dir,) = out.iterdir()
    return run_dir


def test_overfits_four_images(overfit_run: Path) -> None:
    records = read_jsonl(overfit_run / "log.jsonl")
    best50 = max(max(r["val_bbox_mAP50"], r["ema_val_bbox_mAP50"]) for r in records)
    assert best50 >= 0.9, [round(r["val_bbox_mAP50"], 3) for r in records]
    assert records[-1]["train_loss"] < records[0]["train_loss"] * 0.6


def test_run_folder_contents(overfit_run: Path) -> None:
    assert overfit_run.name == "detector_tiny_64_1"
    names = {p.name for p in overfit_run.iterdir()}
    assert {"config.json", "log.jsonl", "tb", "checkpoint.pth", "checkpoint_best_regular.pth",
            "checkpoint_best_total.pth", "results.json"} <= names
    assert list((overfit_run / "tb").glob("events.out.tfevents.*"))
    config = json.loads((overfit_run / "config.json").read_text())
    assert config["stage"] == "detector" and config["model"]["num_classes"] == 3
    total = sum(p.numel() for p in build_model(TINY_CONFIG.replace(num_classes=3)).parameters())
    assert config["parameters"]["trainable"] > 0 and sum(config["parameters"].values()) == total
    last = load_checkpoint_file(overfit_run / "checkpoint.pth")
    assert {"model", "args", "optimizer", "lr_scheduler", "ema_model", "epoch", "rng", "best"} <= set(last)
    assert last["epoch"] == 44 and last["class_names"] == ["circle", "square", "triangle"]
    assert last["category_ids"] == [1, 2, 3]  # the dataset's ids (Roboflow's placeholder 0 dropped), for predictions
    best = load_checkpoint_file(overfit_run / "checkpoint_best_total.pth")
    assert "optimizer" not in best and best["args"].num_classes == 3 and best["category_ids"] == [1, 2, 3]
    build_model(TINY_CONFIG.replace(num_classes=3)).load_state_dict(best["model"], strict=True)


def test_a_new_run_never_overwrites(four_images: Path, overfit_run: Path) -> None:
    assert run_stage1(four_images, overfit_run.parent, "--epochs", "1") == 0
    assert (overfit_run.parent / "detector_tiny_64_2" / "checkpoint.pth").is_file()
    assert (overfit_run / "checkpoint.pth").is_file()


def test_resume_equals_uninterrupted(synthetic_dir: Path, tmp_path: Path) -> None:
    # Augmentation and EMA on, so that the RNG and EMA state of the resume are exercised too.
    args = ["--augment", "1", "--lr", "5e-4"]
    assert run_stage1(synthetic_dir, tmp_path / "straight", "--epochs", "2", *args) == 0
    assert run_stage1(synthetic_dir, tmp_path / "split", "--epochs", "1", *args) == 0
    first = tmp_path / "split" / "detector_tiny_64_1"
    assert run_stage1(synthetic_dir, tmp_path / "unused", "--epochs", "2", "--resume", str(first / "checkpoint.pth"),
                      *args) == 0
    straight = tmp_path / "straight" / "detector_tiny_64_1"
    assert_resume_matches_straight_run(straight, first, tmp_path / "unused")


def test_stage1_checkpoint_through_shrink_head(overfit_run: Path, four_images: Path, tmp_path: Path) -> None:
    """Stage-1 checkpoint -> shrink_head.py --dataset (a 2-class dataset) -> loads with the new class count."""
    two = Path(shutil.copytree(four_images, tmp_path / "two"))
    for split in ("train", "valid"):
        path = two / split / ANNOTATION_FILE
        data = json.loads(path.read_text())
        data["categories"] = [c for c in data["categories"] if c["name"] != "square"]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 2]
        path.write_text(json.dumps(data))
    out = tmp_path / "checkpoint_2class.pth"
    argv = ["--in_ckpt", str(overfit_run / "checkpoint_best_total.pth"), "--out_ckpt", str(out), "--dataset", str(two)]
    assert shrink_head.main(shrink_head.get_args_parser().parse_args(argv)) == 0
    shrunk = load_checkpoint_file(out)
    assert shrunk["class_names"] == ["circle", "triangle"] and shrunk["args"].num_classes == 2
    assert shrunk["category_ids"] == [1, 3]  # the kept classes' ids in the dataset they were trained on
    build_model(TINY_CONFIG.replace(num_classes=2)).load_state_dict(shrunk["model"], strict=True)


def test_bad_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_stage1(tmp_path / "nothing", tmp_path / "runs", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "no train/_annotations.coco.json" in err and "validate_setup.py" in err
