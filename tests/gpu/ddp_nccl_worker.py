"""Run by ``torchrun --nproc_per_node N`` from tests/gpu/test_cuda.py: NCCL collectives, DDP-wrapped AMP steps with
gradient accumulation, then the stage-1 script, on this process's GPU.

With one GPU (N = 1) the training scripts see a world of one and make no process group, so this worker joins the
NCCL group itself: the collectives and the DDP gradient reducer then run through NCCL even on a single GPU.

    torchrun --nproc_per_node 1 tests/gpu/ddp_nccl_worker.py DATASET OUTPUT
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def synthetic_batches(count: int, resolution: int, seed: int) -> list:
    """``count`` random batches of 2 images with 2 boxes each (CPU; the engine moves them)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        images = torch.randn(2, 3, resolution, resolution, generator=g)
        targets = []
        for _ in range(2):
            centres = torch.rand(2, 2, generator=g) * 0.5 + 0.25
            boxes = torch.cat([centres, torch.rand(2, 2, generator=g) * 0.3 + 0.1], 1)
            targets.append({"labels": torch.randint(0, 3, (2,), generator=g), "boxes": boxes})
        batches.append((images, targets))
    return batches


def main(dataset: str, output: str) -> int:
    import train_detector_stage1
    from rfdetr.config import TINY_CONFIG
    from rfdetr.models import build_model
    from rfdetr.train.config import LossConfig
    from rfdetr.train.engine import StepSettings, train_one_epoch
    from rfdetr.train.optim import autocast_dtype, build_grad_scaler
    from rfdetr.train.stage1 import build_criterion_for, freeze_unused

    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device)
    world = dist.get_world_size()
    probe = torch.ones(1, device=device)
    dist.all_reduce(probe)
    assert probe.item() == world, f"all_reduce gave {probe.item()}, expected {world}"

    cfg = TINY_CONFIG.replace(num_classes=3)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    freeze_unused(model)
    ddp = DistributedDataParallel(model, device_ids=[local_rank])
    criterion = build_criterion_for(cfg, LossConfig())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for dtype in ("bfloat16", "float16"):
        chosen = autocast_dtype(device, True, dtype)
        scaler = build_grad_scaler(device, chosen)
        settings = StepSettings(grad_accum_steps=2, clip_max_norm=0.1, autocast_dtype=chosen)
        stats, steps = train_one_epoch(ddp, criterion, synthetic_batches(4, cfg.resolution, dist.get_rank()),
                                       optimizer, None, device, 0, settings, scaler=scaler, progress=False)
        assert steps == 2 and math.isfinite(stats["loss"]), (dtype, stats)
        print(f"rank {dist.get_rank()}: DDP {dtype} 2 steps, loss {stats['loss']:.4f}", flush=True)

    argv = ["--size", "tiny", "--pretrained", "none", "--workers", "0", "--batch", "2", "--accum", "1",
            "--multi_scale", "0", "--augment", "0", "--tensorboard", "0", "--epochs", "1", "--dataset", dataset,
            "--output", output]
    # Inside the group joined above (with 2 GPUs the script trains DDP over it); the script leaves it at its end.
    rc = train_detector_stage1.main(train_detector_stage1.get_args_parser().parse_args(argv))
    if dist.is_initialized():
        dist.destroy_process_group()
    print(f"rank {local_rank}: stage-1 script exit {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1], sys.argv[2]))
