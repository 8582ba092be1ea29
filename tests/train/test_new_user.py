"""What a new user tripped over in training (issue #23): an unreadable image, resume, disk use, progress and hints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import train_detector_stage1
from rfdetr.data.coco import CocoDetection

pytestmark = pytest.mark.usefixtures("one_thread")

# Fast, deterministic settings for CPU (as tests/train/test_stage1.py).
FAST = ["--size", "tiny", "--pretrained", "none", "--workers", "0", "--batch", "2", "--accum", "1",
        "--multi_scale", "0", "--augment", "0", "--seed", "3", "--tensorboard", "0"]


def run_stage1(dataset: Path, output: Path, *extra: str) -> int:
    argv = [*FAST, "--dataset", str(dataset), "--output", str(output), *extra]
    return train_detector_stage1.main(train_detector_stage1.get_args_parser().parse_args(argv))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken(four_images: Path, tmp_path: Path) -> Path:
    """The four-image set with train_0002.jpg cut in half (a truncated JPEG: its header still opens)."""
    root = Path(shutil.copytree(four_images, tmp_path / "ds"))
    truncate(root / "train" / "train_0002.jpg")
    return root


# ------------------------------------------------------------------------------------------ point 1: unreadable image


def test_truncated_image_stops_before_the_run_folder(broken: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A truncated image in the training set: one line naming the file and the fix, exit 2, no run folder (it died
    in a DataLoader worker mid-epoch with ~30 lines and left a half-made folder that pushed the next run to _2)."""
    out = tmp_path / "runs"
    assert run_stage1(broken, out, "--epochs", "1", "--workers", "1") == 2  # a worker process, as in the report
    assert not out.exists() or not any(out.iterdir())
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert len(err.splitlines()) == 1, err
    assert "train_0002.jpg" in err and "truncated" in err and "validate_setup.py" in err and "1 of" in err


def test_training_split_substitutes_an_image_broken_after_the_check(broken: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    train = CocoDetection(broken, "train", substitute_unreadable=True)
    index = [r.path.name for r in train.records].index("train_0002.jpg")
    image, target = train[index]
    assert int(target["image_id"]) == train.records[index + 1].image_id
    assert "train_0002.jpg" in caplog.text and "in its place" in caplog.text
    with pytest.raises(ValueError, match="train_0002.jpg"):
        CocoDetection(broken, "train")[index]  # evaluation splits keep every image: no substitute


# ------------------------------------------------------------------------------------------ point 2: resume


def test_resume_takes_the_run_settings_and_refuses_a_finished_run(four_images: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """``--resume runs/.../checkpoint.pth`` alone uses the run's config.json (it failed with 'dataset dataset: no
    train/_annotations.coco.json'); a finished run says so (it continued silently toward the default 100 epochs);
    a larger --epochs given explicitly trains it further, in the same folder, with the other recorded settings."""
    import json

    from rfdetr.util.loggers import read_jsonl

    assert run_stage1(four_images, tmp_path / "runs", "--epochs", "2", "--eval_interval", "2") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = str(run_dir / "checkpoint.pth")
    parser = train_detector_stage1.get_args_parser()
    capsys.readouterr()
    assert train_detector_stage1.main(parser.parse_args(["--resume", ckpt])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already finished (2 of 2 epochs)" in err and "--epochs" in err, err
    assert len(read_jsonl(run_dir / "log.jsonl")) == 2

    assert train_detector_stage1.main(parser.parse_args(["--resume", ckpt, "--epochs", "3"])) == 0
    assert [r["epoch"] for r in read_jsonl(run_dir / "log.jsonl")] == [0, 1, 2]
    resumed = json.loads((run_dir / "config_resume.json").read_text())["args"]
    assert resumed["dataset"] == str(four_images) and resumed["epochs"] == 3 and resumed["eval_interval"] == 2
    assert resumed["num_workers"] == 0 and resumed["batch_size"] == 2 and resumed["size"] == "tiny"
    assert [p.name for p in tmp_path.joinpath("runs").iterdir()] == [run_dir.name]  # no new folder


def test_resume_from_a_text_file_is_one_clear_line(four_images: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("runs/detector_nano_384_1\n")
    assert run_stage1(four_images, tmp_path / "runs", "--resume", str(text)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.txt is not a PyTorch checkpoint" in err, err
    assert "weights_only" not in err


# ------------------------------------------------------------------------------------------ point 7: progress, hints


def test_progress_shows_epoch_count_and_time_left_and_a_near_zero_run_says_why(
        four_images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each epoch's line shows 'epoch i/N' and the time left; a run that ends with AP near zero (2 epochs from random
    weights) says so in one line with the likely causes (it ended silently, and predict then found nothing)."""
    import logging

    with caplog.at_level(logging.INFO, logger="rfdetr.train.fit"):
        assert run_stage1(four_images, tmp_path / "runs", "--epochs", "2") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "rfdetr.train.fit"]
    assert any(ln.startswith("epoch 1/2:") and "left" in ln for ln in lines), lines
    assert any(ln.startswith("epoch 2/2:") for ln in lines), lines
    (hint,) = [ln for ln in lines if "near zero" in ln]
    assert "\n" not in hint and "no pretrained start" in hint and "too few epochs (2" in hint


def test_near_zero_hint_rule() -> None:
    from rfdetr.train.fit import NEAR_ZERO_AP, format_duration, near_zero_hint

    assert near_zero_hint(0.5, "bbox", {"args": {"pretrained": "none"}}, 50) is None
    assert near_zero_hint(-1.0, "bbox", {}, 3) is None  # never evaluated
    hint = near_zero_hint(NEAR_ZERO_AP / 2, "segm", {"stage": "seg_stage2", "args": {}}, 5)
    assert "segm AP50:95" in hint and "stage-1 detector" in hint and "no pretrained start" not in hint
    assert [format_duration(s) for s in (7.2, 95, 3725)] == ["7s", "1m35s", "1h02m"]


# ------------------------------------------------------------------------------------------ point 4: disk use


def distinct_bytes(folder: Path, pattern: str = "*.pth") -> int:
    """Bytes the folder's checkpoint files take, each stored file (inode) counted once, as ``du`` counts hard links
    (the run folder's pictures and tables are not checkpoints)."""
    seen: dict[tuple[int, int], int] = {}
    for path in folder.rglob(pattern):
        if path.is_file():
            stat = path.stat()
            seen[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(seen.values())


def test_best_checkpoints_are_stored_once(four_images: Path, tmp_path: Path) -> None:
    """checkpoint_best_total.pth is the best file under the name users and rfdetr load, not a second copy (a 2-epoch
    nano run stored two identical 120 MB files); it still loads as a complete model."""
    from rfdetr.checkpoint import load_checkpoint_file
    from rfdetr.config import TINY_CONFIG
    from rfdetr.models import build_model

    assert run_stage1(four_images, tmp_path / "runs", "--epochs", "2", "--run_test", "0") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    total = run_dir / "checkpoint_best_total.pth"
    sources = [run_dir / n for n in ("checkpoint_best_regular.pth", "checkpoint_best_ema.pth")]
    assert any(p.is_file() and p.samefile(total) for p in sources)
    sizes = {p.name: p.stat().st_size for p in run_dir.glob("*.pth")}
    assert distinct_bytes(run_dir) <= sum(sizes.values()) - sizes["checkpoint_best_total.pth"] + 100_000
    best = load_checkpoint_file(total)
    assert "optimizer" not in best
    build_model(TINY_CONFIG.replace(num_classes=3)).load_state_dict(best["model"], strict=True)


def test_shrink_head_writes_no_copy_when_nothing_changes(four_images: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    import shrink_head
    from rfdetr.checkpoint import make_checkpoint, save_checkpoint
    from rfdetr.config import TINY_CONFIG
    from rfdetr.models import build_model

    names = CocoDetection(four_images, "train").class_names
    cfg = TINY_CONFIG.replace(num_classes=len(names), class_names=tuple(names))
    source = save_checkpoint(make_checkpoint(build_model(cfg).state_dict(), cfg, names, stage="detector"),
                             tmp_path / "checkpoint_best_total.pth")
    out = tmp_path / "checkpoint_3class.pth"
    argv = ["--in_ckpt", str(source), "--out_ckpt", str(out), "--dataset", str(four_images)]
    assert shrink_head.main(shrink_head.get_args_parser().parse_args(argv)) == 0
    text = capsys.readouterr().out
    assert not out.exists() and "nothing to change" in text and "not written" in text and f"Use {source}" in text


def test_stage2_resume_state_is_small_and_checked_by_hash(four_images: Path, tiny_stage2_checkpoint: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A stage-2 checkpoint.pth keeps the mask head only and names its frozen detector's source (a 346 MB stage-2
    run stored the detector three times); resume loads the detector from there after checking its hash; the files
    users load (best / total) stay complete models for RFDETR, predict and export."""
    import torch

    import train_seg_stage2
    from rfdetr.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint
    from rfdetr.detr import RFDETR

    detector = Path(shutil.copy(tiny_stage2_checkpoint, tmp_path / "detector.pth"))
    flags = [*FAST, "--dataset", str(four_images), "--output", str(tmp_path / "runs"), "--run_test", "0"]
    del flags[flags.index("--pretrained"):flags.index("--pretrained") + 2]
    parser = train_seg_stage2.get_args_parser()
    assert train_seg_stage2.main(parser.parse_args([*flags, "--checkpoint", str(detector), "--epochs", "2",
                                                    "--eval_interval", "2"])) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    last, total = run_dir / "checkpoint.pth", run_dir / "checkpoint_best_total.pth"
    assert last.stat().st_size < total.stat().st_size / 10
    state = load_checkpoint_file(last)
    assert all(k.startswith("mask_head.") for k in state["model"]) and "optimizer" in state
    assert state["detector_source"]["path"] == str(detector.resolve()) and len(state["detector_source"]["sha256"]) == 64

    best = RFDETR.from_checkpoint(total, masks=True)  # what predict / export / evaluate load
    # checkpoint.pth loads too, as its recorded detector plus its head (here the last epoch is the best one)
    resumed = RFDETR.from_checkpoint(last, masks=True)
    assert all(torch.equal(a, b) for a, b in zip(best.model.state_dict().values(),
                                                  resumed.model.state_dict().values(), strict=True))

    capsys.readouterr()
    assert train_seg_stage2.main(parser.parse_args(["--resume", str(last), "--epochs", "3"])) == 0
    assert load_checkpoint_file(last)["epoch"] == 2

    ckpt = load_checkpoint_file(detector)  # the detector changes under the run: resume refuses, in one line
    key = next(k for k in ckpt["model"] if k.startswith("transformer."))
    ckpt["model"][key] = ckpt["model"][key] + 1.0
    save_checkpoint(ckpt, detector)
    capsys.readouterr()
    assert train_seg_stage2.main(parser.parse_args(["--resume", str(last), "--epochs", "4"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has changed since this run started" in err, err
    with pytest.raises(CheckpointError, match="has changed since that run: load .*checkpoint_best_total.pth"):
        RFDETR.from_checkpoint(last)
