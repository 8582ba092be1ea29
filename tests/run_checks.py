"""Assertions shared by the training-script tests."""

from __future__ import annotations

from pathlib import Path

import torch

from rfdetr.checkpoint import load_checkpoint_file
from rfdetr.util.loggers import read_jsonl


def assert_resume_matches_straight_run(straight: Path, resumed: Path, unused: Path) -> None:
    """A run resumed after epoch 0 ends like the run that went straight through: same epoch, model and EMA weights
    (within 1e-6), same log apart from timings, and the resumed run wrote into its own folder (``unused`` is absent).

    Args: the run folders of the straight run and of the resumed (split) run; ``unused`` the resume's ``--output``.
    """
    a, b = load_checkpoint_file(straight / "checkpoint.pth"), load_checkpoint_file(resumed / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 1
    for key in ("model", "ema_model"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    drop = ("train_epoch_time",)
    log_a = [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(straight / "log.jsonl")]
    log_b = [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(resumed / "log.jsonl")]
    assert log_a == log_b
    assert not unused.exists()  # a resumed run writes into its own folder
