"""The training step: non-finite losses are skipped and counted, and DDP equals one process with the same batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rfdetr.config import TINY_CONFIG
from rfdetr.data.coco import CocoDetection, collate_fn
from rfdetr.data.transforms import eval_transforms
from rfdetr.models import build_model
from rfdetr.train.config import LossConfig
from rfdetr.train.engine import NonFiniteLossError, StepSettings, train_one_epoch
from rfdetr.train.stage1 import build_criterion_for, freeze_unused

CFG = TINY_CONFIG.replace(num_classes=3)
STEPS = 3


class ScriptedLoss(nn.Module):
    """A criterion whose loss is NaN at chosen calls (finite otherwise)."""

    def __init__(self, nan_at: set[int]) -> None:
        super().__init__()
        self.calls, self.nan_at = 0, nan_at

    def forward(self, outputs: dict, targets: list) -> dict[str, torch.Tensor]:
        loss = outputs["pred_logits"].float().mean()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        self.calls += 1
        return {"loss_ce": loss}

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return losses["loss_ce"]


def fake_loader(n: int) -> list:
    return [(torch.randn(1, 3, 64, 64), [{"labels": torch.zeros(0, dtype=torch.long)}]) for _ in range(n)]


def test_nonfinite_steps_are_skipped_and_counted() -> None:
    torch.manual_seed(0)
    model = build_model(CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats, step = train_one_epoch(model, ScriptedLoss({1, 3}), fake_loader(5), opt, None, torch.device("cpu"), 0,
                                  StepSettings(), progress=False)
    assert stats["skipped_steps"] == 2 and step == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_stops_after_five_nonfinite_steps_in_a_row() -> None:
    model = build_model(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError, match="5 optimizer steps in a row had a non-finite loss"):
        train_one_epoch(model, ScriptedLoss(set(range(100))), fake_loader(8), opt, None, torch.device("cpu"), 0,
                        StepSettings(), progress=False)


def _batches(root: str, indices: list[int]) -> list:
    data = CocoDetection(root, "train", transforms=eval_transforms(CFG.resolution))
    return [collate_fn([data[i] for i in indices[s::STEPS]]) for s in range(STEPS)]


def _train(root: str, indices: list[int]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(CFG)
    freeze_unused(model)
    criterion = build_criterion_for(CFG, LossConfig())
    # SGD: its update is linear in the gradient, so float noise stays float noise (Adam's first steps are
    # lr * sign(grad), which turns noise on near-zero gradients into full-size differences).
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    ddp = nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model
    train_one_epoch(ddp, criterion, _batches(root, indices), opt, None, torch.device("cpu"), 0,
                    StepSettings(clip_max_norm=0.1), progress=False)
    return model.state_dict()


def _ddp_worker(rank: int, init_file: str, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        # Global step s uses images {s, s+3, s+6, s+9}: rank 0 gets the first two, rank 1 the last two.
        mine = [i for i in range(4 * STEPS) if (i // STEPS) % 2 == rank]
        state = _train(root, mine)
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(synthetic_dir), str(out)), nprocs=2,
                       start_method="spawn")
    single = _train(str(synthetic_dir), list(range(4 * STEPS)))
    ddp = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    initial = build_model(CFG).state_dict()
    diffs = {n: (ddp[n] - t).abs().max().item() for n, t in single.items()}
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    assert worst[0][1] < 2e-5, worst
    assert sum(not torch.equal(t, initial[n]) for n, t in single.items()) > 0.5 * len(single)  # it trained
