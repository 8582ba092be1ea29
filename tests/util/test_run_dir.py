"""Run folders: numbering, no sharing under concurrent creation, config.json written first and atomically."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from rfdetr.train.config import TrainConfig
from rfdetr.util.run_dir import create_run_dir, to_jsonable, write_config


def test_numbering_starts_at_one_and_fills_the_first_gap(tmp_path: Path) -> None:
    root = tmp_path / "runs"  # created on demand
    assert create_run_dir(root, "detector_nano_384") == root / "detector_nano_384_1"
    assert create_run_dir(root, "detector_nano_384") == root / "detector_nano_384_2"
    assert create_run_dir(root, "segmentation_nano_384") == root / "segmentation_nano_384_1"
    (root / "detector_nano_384_1").rmdir()
    assert create_run_dir(root, "detector_nano_384") == root / "detector_nano_384_1"
    (root / "detector_nano_384_3").write_text("a file also takes the name")
    assert create_run_dir(root, "detector_nano_384") == root / "detector_nano_384_4"
    with pytest.raises(ValueError):
        create_run_dir(root, "a/b")


def test_concurrent_creation_never_shares_a_folder(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        dirs = list(pool.map(lambda _: create_run_dir(tmp_path, "run"), range(24)))
    assert len(set(dirs)) == 24
    assert sorted(int(d.name.rsplit("_", 1)[1]) for d in dirs) == list(range(1, 25))


def test_config_written_first_and_atomically(tmp_path: Path) -> None:
    run_dir = create_run_dir(tmp_path, "detector_nano_384")
    assert list(run_dir.iterdir()) == []
    config = {"train": TrainConfig(), "argv": ["train.py", "--epochs", "3"], "root": tmp_path,
              "scales": (224, 256), "lr": torch.tensor(1e-4), "nan": float("nan")}
    path = write_config(run_dir, config)
    assert [p.name for p in run_dir.iterdir()] == ["config.json"]  # nothing else, no temporary file left
    data = json.loads(path.read_text())
    assert data["train"]["ema_decay"] == 0.993 and data["train"]["resume"] is None
    assert data["scales"] == [224, 256] and data["root"] == str(tmp_path) and data["nan"] is None
    assert data["lr"] == pytest.approx(1e-4)
    write_config(run_dir, {"rewritten": True})  # replaced whole, never appended to
    assert json.loads(path.read_text()) == {"rewritten": True}


def test_to_jsonable() -> None:
    assert to_jsonable({"a": np.float32(0.5), "b": torch.arange(3), "c": {1: (np.int64(2),)}}) == {
        "a": 0.5, "b": [0, 1, 2], "c": {"1": [2]},
    }
    assert to_jsonable(torch.float16) == "torch.float16"
