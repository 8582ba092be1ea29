"""JSON-lines epoch log, TensorBoard events (scalars, per-group LRs, images with boxes) and W&B offline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rfdetr.util.loggers import LOG_FILE, WANDB_MISSING, JsonlLogger, RunLogger, read_jsonl


def test_jsonl_one_line_per_record(tmp_path: Path) -> None:
    log = JsonlLogger(tmp_path)  # a folder -> folder/log.jsonl
    log.log({"epoch": 0, "train_loss": torch.tensor(1.5), "test_coco_eval_bbox": [0.1, 0.2]})
    assert len((tmp_path / LOG_FILE).read_text().splitlines()) == 1  # on disk before the next epoch
    log.log({"epoch": 1, "train_loss": 1.25})
    assert read_jsonl(tmp_path / LOG_FILE) == [
        {"epoch": 0, "train_loss": 1.5, "test_coco_eval_bbox": [0.1, 0.2]},
        {"epoch": 1, "train_loss": 1.25},
    ]
    JsonlLogger(tmp_path / "other.jsonl", enabled=False).log({"epoch": 0})  # not rank 0: writes nothing
    assert not (tmp_path / "other.jsonl").exists()


def test_tensorboard_scalars_lrs_and_image(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.1, "name": "decoder"},
                                 {"params": [model.bias], "lr": 0.2}])
    with RunLogger(tmp_path, tensorboard=True) as logger:
        logger.scalars({"loss": torch.tensor(0.5), "AP50_95": 0.3, "missing": None}, step=1, prefix="val/")
        logger.scalars({"loss": 0.25}, step=2, prefix="val/")
        logger.learning_rates(optimizer, step=2)
        image = torch.rand(3, 32, 48)
        logger.image_with_boxes("val/predictions", image, torch.tensor([[2.0, 3.0, 20.0, 30.0]]), step=2,
                                labels=["strawberry"])
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"val/loss", "val/AP50_95", "lr/decoder", "lr/group1"} <= set(tags["scalars"])
    assert "val/missing" not in tags["scalars"]
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx([0.5, 0.25])
    assert acc.Scalars("lr/decoder")[0].value == pytest.approx(0.1)
    assert tags["images"] == ["val/predictions"]
    img = acc.Images("val/predictions")[0]
    assert (img.width, img.height, img.step) == (48, 32, 2)


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=True, wandb=True, enabled=False) as logger:
        logger.scalars({"loss": 1.0}, step=0)
    assert list(tmp_path.iterdir()) == []


def test_wandb_missing_gives_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError) as info:
        RunLogger(tmp_path, tensorboard=False, wandb=True)
    assert str(info.value) == WANDB_MISSING and "pip install wandb" in str(info.value)


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account or network: wandb reads the mode from the env
    monkeypatch.setenv("WANDB_SILENT", "true")
    with RunLogger(tmp_path, tensorboard=False, wandb=True, config={"lr": 1e-4}) as logger:
        logger.scalars({"loss": 1.0}, step=0, prefix="train/")
        logger.image_with_boxes("val/predictions", torch.rand(3, 16, 16), torch.tensor([[1.0, 1.0, 8.0, 8.0]]),
                                step=0)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))  # the offline run's data file, for a later `wandb sync`
